"""Batched view augmentations on tensors (kornia), for any number of bands.

Geometric operations (crop, flip) act on all bands; colour operations (jitter, grayscale,
solarize) on the first three (RGB) only, so a near-infrared band is never colour-jittered.
Inputs and outputs are float images in [0, 1], shape ``[B, C, H, W]``, on any device; the
random parameters are drawn per sample from torch's global generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation probabilities and strengths."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness .. hue
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the view side (SimCLR appendix A), at least 3."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


class ViewAugmentation(nn.Module):
    """Applies a :class:`ViewRecipe` to a batch; colour only on the RGB bands."""

    def __init__(self, recipe: ViewRecipe) -> None:
        super().__init__()
        self.recipe = r = recipe
        self.geometric = K.AugmentationSequential(
            K.RandomResizedCrop((r.size, r.size), scale=r.crop_scale),
            K.RandomHorizontalFlip(p=r.hflip_prob),
        )
        colour = []
        if r.jitter_prob > 0:
            colour.append(K.ColorJitter(*r.jitter, p=r.jitter_prob))
        if r.grayscale_prob > 0:
            colour.append(K.RandomGrayscale(p=r.grayscale_prob))
        if r.solarize_prob > 0:
            colour.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=r.solarize_prob))
        self.colour = K.AugmentationSequential(*colour) if colour else None
        k = blur_kernel_size(r.size)
        self.blur = (
            K.RandomGaussianBlur((k, k), r.blur_sigma, p=r.blur_prob) if r.blur_prob > 0 else None
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.geometric(images)
        if self.colour is not None:
            x = on_rgb(self.colour, x)
        if self.blur is not None:
            x = self.blur(x)
        return x.clamp_(0.0, 1.0)


def on_rgb(colour: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Apply a colour augmentation to the first three bands; other bands pass unchanged."""
    rgb = colour(images[:, :3].contiguous())
    return torch.cat([rgb, images[:, 3:]], dim=1) if images.shape[1] > 3 else rgb


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, mode: str = "bilinear"):
    """Each image cropped to its box and resized back to its own size: ``mode="bilinear"``
    as ``F.interpolate(crop, mode="bilinear", align_corners=False)``, ``"nearest"`` as
    ``F.interpolate(crop, mode="nearest")`` (the release), on each crop, in one batched op."""
    if mode == "nearest":
        return nearest_crops(images, boxes)
    batch, _, height, width = images.shape

    def source(start: torch.Tensor, stop: torch.Tensor, full: int) -> torch.Tensor:
        steps = torch.arange(full, device=images.device, dtype=torch.float32) + 0.5
        extent = (stop - start)[:, None]
        inside = (steps[None, :] * extent / full - 0.5).clamp(min=0.0)
        inside = torch.minimum(inside, extent - 1)
        return (start[:, None] + inside) / (full - 1) * 2 - 1  # align_corners=True coordinates

    boxes = boxes.float()
    xs = source(boxes[:, 0], boxes[:, 2], width)  # [B, W]
    ys = source(boxes[:, 1], boxes[:, 3], height)  # [B, H]
    grid = torch.stack(
        [xs[:, None, :].expand(batch, height, width), ys[:, :, None].expand(batch, height, width)],
        dim=-1,
    )
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", align_corners=True)


def nearest_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """torch's ``nearest`` rule on each crop: output pixel ``i`` of ``S`` reads crop pixel
    ``min(floor(i * (extent / S)), extent - 1)``, the scale in float32 as torch computes it."""
    batch, _, height, width = images.shape
    boxes = boxes.round().long()

    def source(start: torch.Tensor, stop: torch.Tensor, full: int) -> torch.Tensor:
        extent = (stop - start)[:, None]
        scale = extent.float() / full
        steps = torch.arange(full, device=images.device, dtype=torch.float32)[None, :]
        inside = torch.minimum(torch.floor(steps * scale).long(), extent - 1)
        return start[:, None] + inside

    rows = source(boxes[:, 1], boxes[:, 3], height)  # [B, H]
    cols = source(boxes[:, 0], boxes[:, 2], width)  # [B, W]
    image = torch.arange(batch, device=images.device)[:, None, None]
    picked = images[image, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return picked.permute(0, 3, 1, 2).contiguous()
