"""GLCNet (Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic
Segmentation of HR Remote Sensing Images", IEEE TGRS 2022; release: G-RSIM, T-SS-GLCNet).

The whole DeepLabV3+ is pretrained -- smp's own model, built by the same function as the
fine-tuning model, so encoder, ASPP and decoder weights load strictly into it:

* Global style branch: the ASPP output ``F`` (smp's ``decoder.aspp``, 256 channels) of each
  view; style vector = per-channel mean and (unbiased, as ``torch.var``) variance over space,
  512-d; projector 512 -> 256 -> 64; contrast between the two views of each image.
* Local matching branch: the decoder output projected to 64 channels by a 1x1 convolution
  (the release's last decoder conv; smp's segmentation-head conv with 64 classes) and
  upsampled to the view size (smp's head: bilinear, ``align_corners=True``); per image up to
  4 non-overlapping regions of 48x48 px centred on pixels visible in both views
  (:mod:`bench.correspondence`); the mean of the map over each region; projector
  64 -> 64 -> 64; contrast over all regions of the batch (other regions of the same image
  are negatives). The mean over a region of the upsampled map is computed exactly by
  ``roi_align`` on the stride-4 map (the upsampling is bilinear, so the mean is a fixed
  weighting of stride-4 values), without building the full-resolution map.
* Loss ``lambda L_global + (1 - lambda) L_local`` with ``lambda = 0.5``, ``tau = 0.5``.

Views (release ``join_transform``): both views are random resized crops (scale 0.4-1, aspect
3/4-4/3) of the patch; the second adds a flip (h, v or both, p 0.6), 0-3 quarter turns
(p 0.8), HSV jitter (p 0.8), copying one random band to all bands (p 0.1) and Gaussian blur
(p 0.5). The release's additive HSV shifts (hue +-30 of OpenCV's 180, saturation +-5 and
value +-15 of 255) are approximated by kornia's ColorJitter (hue +-1/6 turn, saturation and
brightness factors 1 +- 5/255 and 1 +- 15/255). Each view goes through the network in its own
forward, so BN statistics are per view as in the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn
from torchvision.ops import roi_align

from bench import distributed
from bench.augment import blur_kernel_size, on_rgb
from bench.config import Settings, setting
from bench.correspondence import (
    ViewGeometry,
    make_view,
    matched_regions,
    sample_crop_boxes,
    sample_dihedral,
)
from bench.losses import nt_xent
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.models import DeepLabHead, build_segmentation_model, mlp_projector
from bench.precision import at_least_float32

OUTPUT_STRIDE = 16  # the paper's DeepLabV3+ (ResNet at output stride 16)


@dataclass(frozen=True)
class GLCNetParams(Settings):
    # lambda of lambda L_global + (1 - lambda) L_local (sec. III-D)
    global_weight: float = setting(0.5, ge=0, le=1)
    # tau of both contrastive losses (release: NTXentLoss(..., 0.5))
    temperature: float = setting(0.5, gt=0)
    # GLCNet's loss: -log(e^pos / sum_neg e^neg), as the paper writes it and the release
    # computes it (utils/contrast_loss.py:89-93, its negative mask 1 - I - partner from
    # _get_correlated_mask); true gives SimCLR's NT-Xent instead.
    positive_in_denominator: bool = False
    global_hidden_dim: int = setting(256, ge=1)  # style projector 512 -> 256 -> 64 (proj)
    global_dim: int = setting(64, ge=1)
    local_channels: int = setting(64, ge=1)  # decoder channels pooled over regions (conv41)
    local_hidden_dim: int = setting(64, ge=1)  # region projector 64 -> 64 -> 64 (proj1)
    local_dim: int = setting(64, ge=1)
    region_size: int = setting(48, ge=8)  # side of the matched regions in view pixels
    regions_per_image: int = setting(4, ge=1)  # release patch_num
    # random resized crop of both views
    crop_scale: tuple[float, float] = setting((0.4, 1.0), gt=0, le=1, ordered=True)
    crop_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), gt=0, ordered=True)
    flip_prob: float = setting(0.6, ge=0, le=1)  # release: one of [h, v, both, none, none]
    rot90_prob: float = setting(0.8, ge=0, le=1)
    jitter_prob: float = setting(0.8, ge=0, le=1)
    hue: float = setting(1 / 6, ge=0, le=0.5)  # +-30 OpenCV hue units of 180 = +-1/6 circle
    saturation: float = setting(5 / 255, ge=0)
    brightness: float = setting(15 / 255, ge=0)
    # release random_image_to_gray: one band copied to all
    band_copy_prob: float = setting(0.1, ge=0, le=1)
    blur_prob: float = setting(0.5, ge=0, le=1)
    # OpenCV's sigma for its 3-7 px kernels
    blur_sigma: tuple[float, float] = setting((0.8, 1.4), gt=0, ordered=True)
    # ASPP convolutions of the pretrained DeepLabV3+: ordinary 3x3 as released
    # (deeplab_utils/encoder.py _AsppConv); fine-tuning loads this ASPP, so its head must
    # match (finetune.aspp_separable).
    aspp_separable: bool = False


def style_vector(features: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and unbiased variance over space: ``[N, C, h, w]`` -> ``[N, 2C]``."""
    flat = at_least_float32(features).flatten(2)
    return torch.cat([flat.mean(dim=2), flat.var(dim=2)], dim=1)


def region_means(feature_map: torch.Tensor, boxes: torch.Tensor, view_size: int) -> torch.Tensor:
    """Mean over each box of ``feature_map`` upsampled to ``view_size`` bilinearly with
    ``align_corners=True`` (smp's segmentation head), computed on the small map.

    Output pixel ``i`` of that upsampling samples the map at ``i (h - 1) / (S - 1)``; an
    ``roi_align`` bin whose box is shifted by half a pixel samples exactly those points, one
    per region pixel (``sampling_ratio`` = region side), and averages them.
    ``boxes``: ``[K, 5]`` = (image, x0, y0, x1, y1), square, in view pixels.
    """
    if len(boxes) == 0:  # no region matched in this process's images
        return feature_map.new_zeros((0, feature_map.shape[1]), dtype=torch.float32)
    side = feature_map.shape[-1]
    scale = (side - 1) / (view_size - 1)
    widths = (boxes[:, 3] - boxes[:, 1]).round().long().unique()
    if len(widths) != 1:
        raise ValueError("region_means expects boxes of one size")
    feature_map = at_least_float32(feature_map)  # bf16 cannot hold the x.5 box edges
    shifted = boxes.to(feature_map.dtype).clone()
    shifted[:, 1:] -= 0.5
    pooled = roi_align(
        feature_map,
        shifted,
        output_size=1,
        spatial_scale=scale,
        sampling_ratio=int(widths[0]),
        aligned=False,
    )
    return pooled.flatten(1)


def random_band_copy(images: torch.Tensor, prob: float) -> torch.Tensor:
    """With probability ``prob`` per image, every band replaced by one random band."""
    batch, bands = images.shape[:2]
    chosen = torch.randint(bands, (batch,), device=images.device)
    applied = torch.rand(batch, device=images.device) < prob
    copied = images[torch.arange(batch, device=images.device), chosen][:, None].expand_as(images)
    return torch.where(applied[:, None, None, None], copied, images)


@register_method("glcnet")
class GLCNet(PretrainingMethod):
    """Global style + local matching contrast on a whole DeepLabV3+ (backbone, ASPP, decoder)."""

    Params = GLCNetParams
    summary = "GLCNet: global style and local region matching on DeepLabV3+ (Li et al. 2022)"
    transfers = "all"
    # quick/cpu views are 48 px: 12 px regions, about the paper's region/view ratio (48/224).
    preset_params = {"quick": {"region_size": 12}, "cpu": {"region_size": 12}}
    # The release (T-SS-GLCNet/main_ss.py): Adam(model.parameters(), lr 1e-3, weight_decay
    # 1e-5, betas (0.9, 0.99)) (lines 191-192, weight decay on every parameter), torch's
    # CosineAnnealingLR(T_max=400, eta_min=4e-8) stepped after each epoch (212, 225), batch
    # 256 (69), 400 epochs (71), 224 px crops, float32 (amp_opt_level O0, 87).
    preset_pretrain = {
        "paper": {
            "optimizer": "adam",
            "lr": 1e-3,
            "lr_scaling": "none",  # a fixed Adam LR in the release
            "betas": (0.9, 0.99),
            "weight_decay": 1e-5,
            "decay_norm": True,
            "decay_bias": True,
            "schedule": "epoch_cosine",
            "epochs": 400,
            "batch_size": 256,
            "view_size": 224,
            "final_lr_factor": 4e-8 / 1e-3,
        }
    }

    @classmethod
    def head(cls, params: GLCNetParams) -> DeepLabHead:
        return DeepLabHead(OUTPUT_STRIDE, params.aspp_separable)

    def __init__(self, params: GLCNetParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        size = self.config.view_size
        if size % OUTPUT_STRIDE or size < 2 * OUTPUT_STRIDE:
            raise ValueError(
                f"glcnet needs pretrain.view_size to be a multiple of {OUTPUT_STRIDE} and at "
                f"least {2 * OUTPUT_STRIDE} (ASPP map of 2x2 or more), got {size}"
            )
        if params.region_size > size // 2:
            raise ValueError(
                f"glcnet.region_size={params.region_size} is more than half the "
                f"{size} px views; lower it (e.g. --set glcnet.region_size={size // 4})"
            )
        network = build_segmentation_model(
            self.config.backbone, self.in_channels, params.local_channels, self.head(params)
        )
        self.backbone = network.encoder
        self.decoder = network.decoder
        self.local_conv = network.segmentation_head[0]  # 1x1 conv to local_channels
        aspp_channels = [m for m in self.decoder.aspp.modules() if isinstance(m, nn.BatchNorm2d)][
            -1
        ].num_features  # width of decoder.aspp's output (256 in smp)
        self.global_projector = mlp_projector(
            2 * aspp_channels, params.global_hidden_dim, params.global_dim
        )
        self.local_projector = mlp_projector(
            params.local_channels, params.local_hidden_dim, params.local_dim
        )
        k = blur_kernel_size(size)
        self.jitter = K.ColorJitter(
            params.brightness, 0.0, params.saturation, params.hue, p=params.jitter_prob
        )
        self.blur = K.RandomGaussianBlur((k, k), params.blur_sigma, p=params.blur_prob)

    # -- views -----------------------------------------------------------------------------
    @torch.no_grad()
    def views(self, images: torch.Tensor):
        """Two views, their source-index maps, and the matched regions of each view."""
        p: GLCNetParams = self.params
        batch, _, height, width = images.shape
        size = self.config.view_size
        first = ViewGeometry(
            sample_crop_boxes(batch, height, width, p.crop_scale, p.crop_ratio),
            torch.zeros(batch, dtype=torch.long),
            torch.zeros(batch, dtype=torch.long),
        )
        second = ViewGeometry(
            sample_crop_boxes(batch, height, width, p.crop_scale, p.crop_ratio),
            *sample_dihedral(batch, p.flip_prob, p.rot90_prob),
        )
        view1, index1 = make_view(images, first, size)
        view2, index2 = make_view(images, second, size)
        view2 = on_rgb(self.jitter, view2).clamp(0.0, 1.0)
        view2 = self.blur(random_band_copy(view2, p.band_copy_prob)).clamp(0.0, 1.0)
        boxes1, boxes2 = matched_regions(
            index1, index2, p.region_size, p.regions_per_image, height * width
        )
        return view1, view2, boxes1, boxes2

    # -- network ---------------------------------------------------------------------------
    def forward_view(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ASPP output ``[N, 256, S/16, S/16]`` and decoder output ``[N, 256, S/4, S/4]`` of
        normalised images, from smp's own decoder forward."""
        captured: list[torch.Tensor] = []
        hook = self.decoder.aspp.register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            decoded = self.decoder(self.backbone(images))
        finally:
            hook.remove()
        return captured[0], decoded

    def contrast(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """NT-Xent between ``first[i]`` and ``second[i]`` over the rows of every process
        (gathered with gradients; row counts may differ between processes)."""
        first, second = distributed.gather_uneven(first), distributed.gather_uneven(second)
        z = torch.cat([first, second])
        return nt_xent(z, self.params.temperature, self.params.positive_in_denominator)

    def health_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view1, view2, _, _ = self.views(images)
        return view1, view2

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        p: GLCNetParams = self.params
        view1, view2, boxes1, boxes2 = self.views(images)
        aspp1, decoded1 = self.forward_view(self.normalize(view1))
        aspp2, decoded2 = self.forward_view(self.normalize(view2))
        loss_global = self.contrast(
            self.global_projector(style_vector(aspp1)), self.global_projector(style_vector(aspp2))
        )
        regions = len(boxes1)
        if distributed.active():  # the same decision on every process
            regions = int(distributed.all_reduce_sum(torch.tensor(regions, device=images.device)))
        if regions >= 2:  # a contrast needs a negative
            size = self.config.view_size
            local1 = region_means(self.local_conv(decoded1), boxes1, size)
            local2 = region_means(self.local_conv(decoded2), boxes2, size)
            loss_local = self.contrast(self.local_projector(local1), self.local_projector(local2))
        else:
            loss_local = torch.zeros((), device=images.device)
        loss = p.global_weight * loss_global + (1 - p.global_weight) * loss_local
        return loss, {
            "global": float(loss_global.detach()),
            "local": float(loss_local.detach()),
            "regions_per_image": len(boxes1) / len(images),
        }

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """smp ``DeepLabV3PlusDecoder`` weights (``aspp.*``, ``block1.*``, ``block2.*``)."""
        return {k: v.detach().cpu().clone() for k, v in self.decoder.state_dict().items()}
