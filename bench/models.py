"""Backbones and heads shared by the methods.

Backbones are smp's own ResNet encoders (a torchvision ResNet without ``fc``), so the
weights a method hands back load strictly into ``smp.DeepLabV3Plus(...).encoder``.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

BACKBONE_WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """smp's ResNet encoder, randomly initialised; ``forward`` returns the 6 feature maps."""
    if name not in BACKBONE_WIDTH:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONE_WIDTH)}")
    return smp.encoders.get_encoder(name, in_channels=in_channels, depth=5, weights=None)


def build_segmentation_model(
    backbone: str, in_channels: int, num_classes: int, output_stride: int = 16
) -> smp.DeepLabV3Plus:
    """smp DeepLabV3+ with a randomly initialised encoder (weights are loaded separately)."""
    return smp.DeepLabV3Plus(
        encoder_name=backbone,
        encoder_weights=None,
        encoder_output_stride=output_stride,
        in_channels=in_channels,
        classes=num_classes,
    )


def load_backbone_strict(encoder: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into an smp encoder, failing on any missing or unexpected key.

    smp's ResNet encoder ``load_state_dict`` drops ``fc.*`` and returns None, so the key sets
    are compared here first (DATASETS.md calibration notes).
    """
    load_strict(encoder, state_dict, "backbone")


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` (any part of DeepLabV3+), failing with a message
    that names ``what`` on a missing or unexpected key or a shape mismatch."""
    own = module.state_dict()
    expected, given = set(own), set(state_dict)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what} weights do not match the model: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, value in state_dict.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{what} weight {key}: shape {tuple(value.shape)} != {tuple(own[key].shape)}"
            )
    nn.Module.load_state_dict(module, dict(state_dict), strict=True)


def mlp_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear, no BN: the VISSL SimCLR head used by FALSE and GraSS."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )
