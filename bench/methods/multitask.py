"""Multitask self-supervision (Li, Chen and Shi, "Semantic Segmentation of Remote Sensing
Images With Self-Supervised Multitask Representation Learning", IEEE JSTARS 2021; release
flyakon/SSLRemoteSensing).

One shared backbone sees three inputs (a "triplet Siamese" network; there is no triplet
loss): an inpainting input, the original image and a transformed image. As released
(``datasets/datasets/representation/vr_dataset_inpainting_agr.py``):

* The original: the patch (a random ``view_size`` crop of it when smaller), randomly
  flipped horizontally and vertically (p 0.5 each) and turned by 0-4 quarter turns
  (``input_flips``; the config's ``pre_transforms_cfg``).
* Inpainting: one square block of side ``floor(r min(H, W))``, ``r ~ U(0.2, 1/3)``, at a
  position that never touches the right or bottom edge (``np.random.randint``'s exclusive
  bound), is replaced by a colour-jittered (brightness 0.3, contrast and saturation
  0.5-1.5, hue 0.3) copy of itself, flipped vertically or horizontally (1/4 each) or
  turned by 1-3 quarter turns (1/2) (``inpainting_transforms.py``). The release jitters the
  block as an image of its own; here the jitter's factors act on the block's pixels within
  the whole image, so only its contrast differs (it blends with the image's mean grey, not
  the block's). A decoder reconstructs the original: the release's (``decoder="release"``:
  five stages of bilinear x2 upsampling, conv3x3-BN-ReLU and the *sum* with the encoder's
  feature of that stride, widths of those features then 32, a conv3x3 to the bands;
  ``models/representation/vr_nets_inpainting_agr_examplar.py`` ``forward_inpainting``) or
  smp's U-Net decoder (``"unet"``). Loss: L1 weighted by ``|target - input|``, normalised by
  the weights' sum, on [0, 1] images (the release's ``ToTensor`` scale) although the
  network sees band-standardised ones.
* AGR, augmentation recognition: which of 6 transforms (h-flip, v-flip, rot 0/90/180/270)
  turned the original into the transformed image, which then also goes through a random
  crop (0.7-0.95, resized back), colour jitter and grayscale (p 0.5) in a random order
  (``shortcuts``; ``agr_transforms.py``). Head as released (``agr_head="release"``): the
  two feature *maps* concatenated, two conv3x3-BN-ReLU blocks, global pooling,
  FC(C, 2C)-ReLU-Dropout-FC(2C, 6); or pooled features through an MLP (``"pooled"``).
* Exemplar: GAP -> FC(C, 1024) -> Sigmoid -> FC(1024, 512) on original and transformed
  image; NT-Xent with tau = 1 over the batch. The release's ``ExamplarLoss`` zeroes the
  similarity of each embedding with itself and keeps it in the softmax, so ``e^0`` adds to
  every denominator (``exemplar_self_term``; ``losses/examplar_loss.py``).

Total ``20 L_inp + 1 L_AGR + 1 L_ex``. The release runs the backbone once per input (three
BN batches, ``bn_batches="per_input"``); ``"joint"`` runs the three inputs as one batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from bench import distributed
from bench.augment import crop_and_resize, on_rgb
from bench.config import Settings, setting
from bench.losses import masked_contrastive_loss, nt_xent_masks
from bench.losses.ntxent import cosine_logits
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.models import BACKBONE_WIDTH
from bench.precision import at_least_float32

# AGR classes: index -> (flip, quarter turns); flips are their own inverse.
TRANSFORMS = (("h", 0), ("v", 0), (None, 0), (None, 1), (None, 2), (None, 3))


def apply_transform(image: torch.Tensor, label: int) -> torch.Tensor:
    """Transform ``label`` of :data:`TRANSFORMS` on a ``[..., H, W]`` tensor."""
    flip, turns = TRANSFORMS[label]
    if flip == "h":
        return image.flip(-1)
    if flip == "v":
        return image.flip(-2)
    return torch.rot90(image, turns, dims=(-2, -1))


def undo_transform(image: torch.Tensor, label: int) -> torch.Tensor:
    flip, turns = TRANSFORMS[label]
    if flip is not None:
        return apply_transform(image, label)
    return torch.rot90(image, -turns, dims=(-2, -1))


def weighted_l1(prediction: torch.Tensor, target: torch.Tensor, corrupted: torch.Tensor):
    """``sum(w |prediction - target|) / sum(w)`` with ``w = |target - corrupted|``, both sums
    over the global batch: on several processes this process's share of the numerator over
    the global ``sum(w)``, times the number of processes, so that the mean over processes
    (and of their gradients) is the global loss."""
    weight = (target - corrupted).abs()
    numerator = (weight * (prediction - target).abs()).sum()
    denominator = weight.sum().detach()
    if distributed.active():
        denominator = distributed.all_reduce_sum(denominator) / distributed.topology().world_size
    return numerator / denominator.clamp(min=1e-8)


def exemplar_loss(z: torch.Tensor, temperature: float, self_term: bool) -> torch.Tensor:
    """NT-Xent over ``z`` = [originals; transformed]; with ``self_term`` each anchor's own
    similarity is set to 0 and kept in its denominator, as the release's ``ExamplarLoss``
    does (``S * mask`` then ``LogSoftmax``)."""
    logits = cosine_logits(z, temperature)
    pos, neg = nt_xent_masks(z.shape[0], z.device)
    if self_term:
        logits = logits * (1 - torch.eye(len(z), device=z.device, dtype=logits.dtype))
        neg = neg + torch.eye(len(z), device=z.device)
    return masked_contrastive_loss(logits, pos, neg)


@dataclass(frozen=True)
class MultitaskParams(Settings):
    # loss weights 20 / 1 / 1 (Li et al. 2021, sec. III-D; release config factors)
    inpainting_weight: float = setting(20.0, ge=0)
    agr_weight: float = setting(1.0, ge=0)
    exemplar_weight: float = setting(1.0, ge=0)
    # block side floor(r * min(H, W)), r ~ U(low, high) (min/max_cover_ratio)
    block_ratio: tuple[float, float] = setting((0.2, 1 / 3), gt=0, le=1, ordered=True)
    exemplar_temperature: float = setting(1.0, gt=0)  # tau of the exemplar NT-Xent (III-C)
    exemplar_hidden_dim: int = setting(1024, ge=1)
    exemplar_dim: int = setting(512, ge=1)
    exemplar_self_term: bool = True  # e^0 of the zeroed self-similarity in the denominator
    decoder: Literal["release", "unet"] = "release"
    decoder_channels: tuple[int, int, int, int, int] = setting((256, 128, 64, 32, 16), ge=1)
    release_last_channels: int = setting(32, ge=1)  # the release decoder's last width
    agr_head: Literal["release", "pooled"] = "release"
    input_flips: bool = True  # the original's random flips and quarter turns
    shortcuts: bool = True  # crop, jitter, grayscale of the transformed image
    shortcut_crop: tuple[float, float] = setting((0.7, 0.95), gt=0, le=1, ordered=True)
    shortcut_grayscale_prob: float = setting(0.5, ge=0, le=1)
    bn_batches: Literal["per_input", "joint"] = "per_input"


def release_jitter() -> K.ColorJitter:
    """The release's ColorJitter(brightness=0.3, contrast=(0.5, 1.5), saturation=(0.5, 1.5),
    hue=(-0.3, 0.3)), applied to every image."""
    return K.ColorJitter(0.3, (0.5, 1.5), (0.5, 1.5), 0.3, p=1.0)


class ReleaseInpaintingDecoder(nn.Module):
    """The release's decoder: from the last feature, five stages of bilinear upsampling
    (align_corners=True) to the next skip's size, conv3x3-BN-ReLU, plus that skip (the
    encoder's features of strides 16, 8, 4, 2; none at stride 1), then conv3x3 to the bands.
    ``x2`` upsampling in the release; here to the skip's size, the same for inputs whose side
    is a multiple of 32."""

    def __init__(self, encoder_channels: tuple[int, ...], last: int, out_channels: int) -> None:
        super().__init__()
        widths = [*encoder_channels[-2:0:-1], last]  # strides 16, 8, 4, 2, then 1
        inputs = [encoder_channels[-1], *widths[:-1]]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
            for i, o in zip(inputs, widths, strict=True)
        )
        self.prediction = nn.Conv2d(last, out_channels, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, skips = features[-1], [*features[-2:0:-1], None]
        sizes = [f.shape[-2:] for f in features[-2:0:-1]] + [features[0].shape[-2:]]
        for stage, skip, size in zip(self.stages, skips, sizes, strict=True):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=True))
            if skip is not None:
                x = x + skip
        return self.prediction(x)


def release_agr_head(width: int, classes: int) -> nn.Sequential:
    """conv3x3(2C, C)-BN-ReLU, conv3x3(C, C)-BN-ReLU, GAP, FC(C, 2C)-ReLU-Dropout-FC(2C, 6)
    on the concatenated feature maps (``build_agr_arch``)."""
    return nn.Sequential(
        nn.Conv2d(2 * width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 2 * width),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(2 * width, classes),
    )


@register_method("multitask")
class Multitask(PretrainingMethod):
    """Inpainting + augmentation recognition + exemplar on one shared backbone."""

    Params = MultitaskParams
    summary = "multitask: inpainting + augmentation recognition + exemplar (Li et al. 2021)"
    # quick (a smoke test) keeps the light heads of before: a narrow U-Net decoder, pooled
    # AGR features and one BN batch (the release's decoder widths and conv AGR head cost
    # ~45% more per step at these sizes); every other preset builds the release's
    preset_params = {
        "quick": {
            "decoder": "unet",
            "decoder_channels": (64, 32, 16, 16, 8),
            "agr_head": "pooled",
            "bn_batches": "joint",
        }
    }
    # The release (configs/vr_resnet50_inapinting_agr_examplar_cfg.py): Adam 5e-4 over all
    # parameters (no weight decay), StepLR(2, 0.95) stepped with the epoch index after each
    # epoch (one epoch late: step_delay_epochs 1), batch 4, 13 epochs, 256 px inputs.
    preset_pretrain = {
        "quick": {"lr": 5e-4, "schedule": "step", "weight_decay": 0.0},
        "cpu": {"lr": 5e-4, "schedule": "step", "weight_decay": 0.0},
        "paper": {
            "optimizer": "adam",
            "lr": 5e-4,
            "lr_scaling": "none",  # a fixed Adam LR in the release
            "schedule": "step",
            "step_epochs": 2,
            "step_gamma": 0.95,
            "step_delay_epochs": 1,
            "weight_decay": 0.0,
            "batch_size": 4,
            "epochs": 13,
            "view_size": 256,
        },
    }

    def __init__(self, params: MultitaskParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        width = BACKBONE_WIDTH[self.config.backbone]
        channels = self.backbone.out_channels
        if params.decoder == "release":
            self.decoder = ReleaseInpaintingDecoder(
                channels, params.release_last_channels, self.in_channels
            )
        else:
            unet = UnetDecoder(channels, params.decoder_channels, n_blocks=5)
            head = nn.Conv2d(params.decoder_channels[-1], self.in_channels, 3, padding=1)
            self.decoder = UnetReconstruction(unet, head)
        if params.agr_head == "release":
            self.agr_head = release_agr_head(width, len(TRANSFORMS))
        else:
            self.agr_head = nn.Sequential(
                nn.Linear(2 * width, 512), nn.ReLU(inplace=True), nn.Linear(512, len(TRANSFORMS))
            )
        self.exemplar_head = nn.Sequential(
            nn.Linear(width, params.exemplar_hidden_dim),
            nn.Sigmoid(),
            nn.Linear(params.exemplar_hidden_dim, params.exemplar_dim),
        )
        self.block_jitter = release_jitter()  # the pasted block's
        self.shortcut_jitter = release_jitter()
        self.shortcut_gray = K.RandomGrayscale(p=params.shortcut_grayscale_prob)

    # -- inputs --------------------------------------------------------------------------
    def random_crops(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.view_size
        height, width = images.shape[-2:]
        if size > min(height, width):
            raise ValueError(f"pretrain.view_size={size} exceeds the {height}x{width} patches")
        top = torch.randint(0, height - size + 1, (len(images),)).tolist()
        left = torch.randint(0, width - size + 1, (len(images),)).tolist()
        return torch.stack(
            [
                img[:, t : t + size, s : s + size]
                for img, t, s in zip(images, top, left, strict=True)
            ]
        )

    @torch.no_grad()
    def original_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Random crops, then (``input_flips``) the release's pre-transforms: h-flip and
        v-flip with p 0.5 each, then ``randint(0, 4)`` quarter turns (0 and 4 the same)."""
        crops = self.random_crops(images)
        if not self.params.input_flips:
            return crops
        batch = len(crops)
        hflip = torch.rand(batch, device=crops.device) < 0.5
        crops = torch.where(hflip[:, None, None, None], crops.flip(-1), crops)
        vflip = torch.rand(batch, device=crops.device) < 0.5
        crops = torch.where(vflip[:, None, None, None], crops.flip(-2), crops)
        turns = torch.randint(0, 5, (batch,), device=crops.device) % 4
        out = crops.clone()
        for k in range(1, 4):
            chosen = turns == k
            if chosen.any():
                out[chosen] = torch.rot90(crops[chosen], k, dims=(-2, -1))
        return out

    @torch.no_grad()
    def inpainting_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images with one block replaced by a colour-jittered, flipped or turned copy of
        itself (jitter drawn per image, on the RGB bands), and the block masks."""
        batch, _, height, width = images.shape
        low, high = self.params.block_ratio
        jittered = on_rgb(self.block_jitter, images).clamp(0.0, 1.0)
        corrupted = images.clone()
        masks = torch.zeros(batch, 1, height, width, device=images.device)
        for i in range(batch):  # blocks differ in size: a short loop of slicing
            ratio = float(torch.empty(()).uniform_(low, high))
            side = max(1, min(int(height * ratio), int(width * ratio)))
            top = int(torch.randint(0, max(1, height - side), ()))
            left = int(torch.randint(0, max(1, width - side), ()))
            rows, cols = slice(top, top + side), slice(left, left + side)
            corrupted[i, :, rows, cols] = release_block_transform(jittered[i, :, rows, cols])
            masks[i, :, rows, cols] = 1.0
        return corrupted, masks

    @torch.no_grad()
    def transformed_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image under a random one of the 6 AGR transforms, and its label."""
        labels = torch.randint(len(TRANSFORMS), (len(images),), device=images.device)
        out = torch.empty_like(images)
        for label in range(len(TRANSFORMS)):
            chosen = labels == label
            if chosen.any():
                out[chosen] = apply_transform(images[chosen], label)
        return out, labels

    @torch.no_grad()
    def shortcut_transforms(self, images: torch.Tensor) -> torch.Tensor:
        """The release's ``shortcut_cfg`` in ``RandomOrder`` per image: a random crop of
        0.7-0.95 of each side (resized back at once, where the release resizes at the end),
        colour jitter, grayscale with p 0.5."""
        if not self.params.shortcuts:
            return images
        orders = list(itertools.permutations(("crop", "jitter", "gray")))
        chosen = torch.randint(len(orders), (len(images),), device=images.device)
        out = images.clone()
        for index, order in enumerate(orders):
            selected = chosen == index
            if selected.any():
                x = images[selected]
                for name in order:
                    x = self.shortcut(name, x)
                out[selected] = x
        return out.clamp_(0.0, 1.0)

    def shortcut(self, name: str, images: torch.Tensor) -> torch.Tensor:
        if name == "jitter":
            return on_rgb(self.shortcut_jitter, images).clamp(0.0, 1.0)
        if name == "gray":
            return on_rgb(self.shortcut_gray, images)
        batch, _, height, width = images.shape
        low, high = self.params.shortcut_crop
        ratio = torch.empty(batch).uniform_(low, high)
        sides = torch.stack([(height * ratio).long(), (width * ratio).long()], dim=1).clamp(min=1)
        top = (torch.rand(batch) * (height - sides[:, 0] + 1)).long()
        left = (torch.rand(batch) * (width - sides[:, 1] + 1)).long()
        boxes = torch.stack([left, top, left + sides[:, 1], top + sides[:, 0]], dim=1)
        return crop_and_resize(images, boxes.to(images.device).float())

    # -- step ------------------------------------------------------------------------------
    def backbone_features(self, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """The backbone's features of each input: one BN batch per input, or one for all."""
        if self.params.bn_batches == "per_input":
            return [self.backbone(self.normalize(x)) for x in inputs]
        chunks = [f.chunk(len(inputs)) for f in self.backbone(self.normalize(torch.cat(inputs)))]
        return [[chunk[i] for chunk in chunks] for i in range(len(inputs))]

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        p: MultitaskParams = self.params
        original = self.original_inputs(images)
        corrupted, _ = self.inpainting_inputs(original)
        transformed, labels = self.transformed_inputs(original)
        transformed = self.shortcut_transforms(transformed)
        inpaint, orig, trans = self.backbone_features([corrupted, original, transformed])
        reconstruction = self.decoder(inpaint)
        loss_inp = weighted_l1(*map(at_least_float32, (reconstruction, original, corrupted)))
        loss_agr = F.cross_entropy(self.agr_logits(orig[-1], trans[-1]), labels)
        pooled = torch.cat([orig[-1].mean(dim=(2, 3)), trans[-1].mean(dim=(2, 3))])
        z = distributed.gather_views(self.exemplar_head(pooled))  # global batch
        loss_ex = exemplar_loss(z, p.exemplar_temperature, p.exemplar_self_term)
        loss = (
            p.inpainting_weight * loss_inp + p.agr_weight * loss_agr + p.exemplar_weight * loss_ex
        )
        return loss, {
            "inpainting": float(loss_inp.detach()),
            "agr": float(loss_agr.detach()),
            "exemplar": float(loss_ex.detach()),
        }

    def agr_logits(self, original: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
        if self.params.agr_head == "release":
            return self.agr_head(torch.cat([original, transformed], dim=1))
        pooled = torch.cat([original.mean(dim=(2, 3)), transformed.mean(dim=(2, 3))], dim=1)
        return self.agr_head(pooled)


class UnetReconstruction(nn.Module):
    """smp's U-Net decoder and a conv3x3 to the bands."""

    def __init__(self, unet: UnetDecoder, head: nn.Conv2d) -> None:
        super().__init__()
        self.unet, self.head = unet, head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.unet(features))


def release_block_transform(block: torch.Tensor) -> torch.Tensor:
    """``random_block`` of the release: flip rows (1/4), flip columns (1/4), or 1-3 quarter
    turns (1/2), on a square ``[C, s, s]`` block."""
    choice = int(torch.randint(4, ()))
    if choice == 0:
        return block.flip(-2)
    if choice == 1:
        return block.flip(-1)
    return torch.rot90(block, int(torch.randint(1, 4, ())), dims=(-2, -1))
