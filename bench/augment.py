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
        r = recipe
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
