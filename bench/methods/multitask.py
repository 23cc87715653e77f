"""Multitask self-supervision (Li, Chen and Shi, "Semantic Segmentation of Remote Sensing
Images With Self-Supervised Multitask Representation Learning", IEEE JSTARS 2021).

One shared backbone sees three inputs (a "triplet Siamese" network; there is no triplet
loss): an inpainting input, the original image and a geometrically transformed image.

* Inpainting: one square block of side ``r min(H, W)``, ``r ~ U(0.2, 1/3)``, is replaced by
  a colour-jittered, flipped/rotated copy of itself; a 5-stage upsampling decoder with skip
  connections (smp's U-Net decoder) reconstructs the original. Loss: L1 weighted by
  ``|target - input|`` (zero outside the block), normalised by the weights' sum.
* AGR, augmentation recognition: which of 6 transforms (h-flip, v-flip, rot 0/90/180/270)
  turned the original into the transformed image, from their concatenated pooled features;
  cross-entropy.
* Exemplar: GAP -> FC(C, 1024) -> Sigmoid -> FC(1024, 512) on original and transformed
  image; NT-Xent with tau = 1 over the batch.

Total ``20 L_inp + 1 L_AGR + 1 L_ex``. The three inputs go through the backbone as one
batch (one BN batch), which computes the same functions as three passes of a shared network
up to BN statistics. Inputs are random crops of ``view_size`` from each patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from bench import distributed
from bench.augment import on_rgb
from bench.config import Settings, setting
from bench.losses import nt_xent
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.models import BACKBONE_WIDTH
from bench.precision import at_least_float32

# AGR classes: index -> (flip, quarter turns); flips are their own inverse.
TRANSFORMS = (("h", 0), ("v", 0), (None, 0), (None, 1), (None, 2), (None, 3))
TRANSFORM_NAMES = ("hflip", "vflip", "rot0", "rot90", "rot180", "rot270")


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


@dataclass(frozen=True)
class MultitaskParams(Settings):
    # loss weights 20 / 1 / 1 (Li et al. 2021, sec. III-D)
    inpainting_weight: float = setting(20.0, ge=0)
    agr_weight: float = setting(1.0, ge=0)
    exemplar_weight: float = setting(1.0, ge=0)
    # block side r * min(H, W), r ~ U(low, high)
    block_ratio: tuple[float, float] = setting((0.2, 1 / 3), gt=0, le=1, ordered=True)
    exemplar_temperature: float = setting(1.0, gt=0)  # tau of the exemplar NT-Xent (III-C)
    exemplar_hidden_dim: int = setting(1024, ge=1)
    exemplar_dim: int = setting(512, ge=1)
    decoder_channels: tuple[int, int, int, int, int] = setting((256, 128, 64, 32, 16), ge=1)


@register_method("multitask")
class Multitask(PretrainingMethod):
    """Inpainting + augmentation recognition + exemplar on one shared backbone."""

    Params = MultitaskParams
    summary = "multitask: inpainting + augmentation recognition + exemplar (Li et al. 2021)"
    preset_params = {"quick": {"decoder_channels": (64, 32, 16, 16, 8)}}
    # Adam 5e-4, StepLR every 2 epochs with gamma 0.95, 256 px inputs (Li et al. 2021).
    preset_pretrain = {
        "quick": {"lr": 5e-4, "schedule": "step", "weight_decay": 0.0},
        "cpu": {"lr": 5e-4, "schedule": "step", "weight_decay": 0.0},
        "paper": {
            "optimizer": "adam",
            "lr": 5e-4,
            "lr_scaling": "none",  # a fixed Adam LR in the paper
            "schedule": "step",
            "step_epochs": 2,
            "step_gamma": 0.95,
            "weight_decay": 0.0,
            "view_size": 256,
        },
    }

    def __init__(self, params: MultitaskParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        width = BACKBONE_WIDTH[self.config.backbone]
        self.decoder = UnetDecoder(self.backbone.out_channels, params.decoder_channels, n_blocks=5)
        self.reconstruction = nn.Conv2d(params.decoder_channels[-1], self.in_channels, 3, padding=1)
        self.agr_head = nn.Sequential(
            nn.Linear(2 * width, 512), nn.ReLU(inplace=True), nn.Linear(512, len(TRANSFORMS))
        )
        self.exemplar_head = nn.Sequential(
            nn.Linear(width, params.exemplar_hidden_dim),
            nn.Sigmoid(),
            nn.Linear(params.exemplar_hidden_dim, params.exemplar_dim),
        )
        self.block_jitter = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)  # the pasted block's

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
    def inpainting_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images with one block replaced by a colour-jittered, flipped/rotated copy of itself
        (jitter drawn per image, on the RGB bands), and the block masks ``[B, 1, H, W]``."""
        batch, _, height, width = images.shape
        low, high = self.params.block_ratio
        jittered = on_rgb(self.block_jitter, images).clamp(0.0, 1.0)
        corrupted = images.clone()
        masks = torch.zeros(batch, 1, height, width, device=images.device)
        for i in range(batch):  # blocks differ in size: a short loop of slicing
            side = max(1, round(float(torch.empty(()).uniform_(low, high)) * min(height, width)))
            top = int(torch.randint(0, height - side + 1, ()))
            left = int(torch.randint(0, width - side + 1, ()))
            rows, cols = slice(top, top + side), slice(left, left + side)
            block = torch.rot90(jittered[i, :, rows, cols], int(torch.randint(4, ())), (-2, -1))
            corrupted[i, :, rows, cols] = block.flip(-1) if bool(torch.randint(2, ())) else block
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

    # -- step ------------------------------------------------------------------------------
    def training_step(self, images: torch.Tensor, ctx: StepContext):
        p: MultitaskParams = self.params
        original = self.random_crops(images)
        corrupted, _ = self.inpainting_inputs(original)
        transformed, labels = self.transformed_inputs(original)
        batch = len(original)
        inputs = self.normalize(torch.cat([corrupted, original, transformed]))
        features = self.backbone(inputs)
        pooled = features[-1].mean(dim=(2, 3))
        f_orig, f_trans = pooled[batch : 2 * batch], pooled[2 * batch :]

        reconstruction = self.reconstruction(self.decoder([f[:batch] for f in features]))
        target, corrupted_n = inputs[batch : 2 * batch], inputs[:batch]
        loss_inp = weighted_l1(*map(at_least_float32, (reconstruction, target, corrupted_n)))
        loss_agr = F.cross_entropy(self.agr_head(torch.cat([f_orig, f_trans], dim=1)), labels)
        z = self.exemplar_head(torch.cat([f_orig, f_trans]))
        loss_ex = nt_xent(distributed.gather_views(z), p.exemplar_temperature)  # global batch
        loss = (
            p.inpainting_weight * loss_inp + p.agr_weight * loss_agr + p.exemplar_weight * loss_ex
        )
        return loss, {
            "inpainting": float(loss_inp.detach()),
            "agr": float(loss_agr.detach()),
            "exemplar": float(loss_ex.detach()),
        }
