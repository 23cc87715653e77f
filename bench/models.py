"""Backbones and heads shared by the methods.

Backbones are smp's own ResNet encoders (a torchvision ResNet without ``fc``), so the
weights a method hands back load strictly into ``smp.DeepLabV3Plus(...).encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """smp's ResNet encoder, randomly initialised; ``forward`` returns the 6 feature maps."""
    if name not in BACKBONE_WIDTH:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONE_WIDTH)}")
    return smp.encoders.get_encoder(name, in_channels=in_channels, depth=5, weights=None)


# ASPP atrous rates as published: (6, 12, 18) at output stride 16, doubled at output stride 8
# (DeepLabV3, Chen et al. 2017, sec. 3.3; DeepLabV3+, Chen et al. 2018, sec. 4.1). smp's
# default (12, 24, 36) at stride 16 leaves the 24 and 36 branches of a 256 px input's 16 x 16
# map seeing only padding (1 x 1 convolutions in effect). GLCNet's release uses (6, 12, 18)
# at stride 16 (T-SS-GLCNet/models/deeplab_utils/encoder.py:45-46); MMSegmentation's
# DeepLabV3+ (FALSE's protocol) uses (12, 24, 36) at stride 8 (configs/_base_/models/
# deeplabv3plus_r50-d8.py).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@dataclass(frozen=True)
class DeepLabHead:
    """The DeepLabV3+ head around the encoder: output stride, ordinary (False: GLCNet's
    release, ``encoder.py`` ``_AsppConv``) or depthwise-separable (True: smp's default,
    MMSegmentation's ``DepthwiseSeparableASPPHead``) ASPP convolutions, and the ASPP/decoder
    width (256: GLCNet, smp; 512: MMSegmentation). The rates follow the output stride
    (:data:`ASPP_RATES`). smp's convolution after the ASPP projection and its decoder's
    fusion convolution are always separable (smp 0.6 offers no switch for them)."""

    output_stride: int = 16
    separable: bool = False
    channels: int = 256

    @property
    def atrous_rates(self) -> tuple[int, int, int]:
        return ASPP_RATES[self.output_stride]

    def __str__(self) -> str:
        kind = "separable" if self.separable else "ordinary"
        rates = "/".join(map(str, self.atrous_rates))
        return f"stride {self.output_stride}, ASPP {rates} {kind}, {self.channels} channels"

    def describe(self) -> dict:
        """What a record says about the head."""
        return {
            "output_stride": self.output_stride,
            "aspp_rates": list(self.atrous_rates),
            "aspp_convolutions": "separable" if self.separable else "ordinary",
            "channels": self.channels,
        }


# The encoder stages a linear probe reads, as indices of smp's ResNet feature maps (0 is the
# input; 1-5 are strides 2, 4, 8, 16, 32): "last", the last stage (DINOv2's "linear"
# segmentation probe, Oquab et al. 2023, semantic segmentation: the last layer, upsampled);
# "multiscale", the four residual stages (conv2_x-conv5_x), concatenated as DINOv2's "+ms"
# probe concatenates its last four layers, since a CNN's stride-32 map alone (2 x 2 on a
# 64 px patch) cannot place a boundary.
LINEAR_STAGES = {"last": (5,), "multiscale": (2, 3, 4, 5)}


@dataclass(frozen=True)
class LinearHead:
    """A per-pixel linear classifier on the frozen encoder's features (``finetune.decoder=
    linear``): the stages of ``features`` (:data:`LINEAR_STAGES`), each normalised by a
    BatchNorm without affine parameters (MAE's linear probe, He et al., CVPR 2022,
    appendix A.2: it puts features of different scales on one footing and is still linear
    at evaluation), bilinearly upsampled to the input and concatenated, then one 1x1
    convolution to the classes."""

    features: str = "multiscale"

    @property
    def stages(self) -> tuple[int, ...]:
        return LINEAR_STAGES[self.features]

    def __str__(self) -> str:
        strides = "/".join(str(2**s) for s in self.stages)
        return f"linear probe (1x1 conv) on encoder stages at stride {strides}"

    def describe(self) -> dict:
        """What a record says about the head."""
        return {
            "kind": "linear",
            "features": self.features,
            "stages": list(self.stages),
            "strides": [2**s for s in self.stages],
        }


class LinearProbe(nn.Module):
    """``encoder`` (smp's ResNet, its keys unchanged) with a :class:`LinearHead`.

    The 1x1 convolution over the concatenated upsampled features is computed as one 1x1
    convolution per stage at the stage's own resolution, upsampled and summed: bilinear
    upsampling is linear with weights summing to 1, so this is the same function (one bias,
    on the first stage's part) at a fraction of the memory and time."""

    def __init__(self, encoder: nn.Module, head: LinearHead, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.stages = encoder, head.stages
        widths = [encoder.out_channels[s] for s in self.stages]
        self.norms = nn.ModuleList(nn.BatchNorm2d(w, affine=False) for w in widths)
        self.classifiers = nn.ModuleList(
            nn.Conv2d(w, num_classes, 1, bias=i == 0) for i, w in enumerate(widths)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        logits = None
        for stage, norm, classify in zip(self.stages, self.norms, self.classifiers, strict=True):
            part = F.interpolate(
                classify(norm(features[stage])), images.shape[-2:], mode="bilinear"
            )
            logits = part if logits is None else logits + part
        return logits


def build_segmentation_model(
    backbone: str,
    in_channels: int,
    num_classes: int,
    head: DeepLabHead | LinearHead | None = None,
) -> nn.Module:
    """smp DeepLabV3+ with a randomly initialised encoder (weights are loaded separately)
    and the ``head`` asked for (by default: stride 16, rates 6/12/18, ordinary convolutions),
    or a :class:`LinearProbe` for a :class:`LinearHead`; either has the encoder as
    ``.encoder``."""
    if isinstance(head, LinearHead):
        return LinearProbe(build_backbone(backbone, in_channels), head, num_classes)
    head = head or DeepLabHead()
    return smp.DeepLabV3Plus(
        encoder_name=backbone,
        encoder_weights=None,
        encoder_output_stride=head.output_stride,
        decoder_channels=head.channels,
        decoder_atrous_rates=head.atrous_rates,
        decoder_aspp_separable=head.separable,
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


def mlp_projector(in_dim: int, hidden_dim: int, out_dim: int, relu: bool = True) -> nn.Sequential:
    """Linear -> ReLU -> Linear, no BN (SimCLR's head, Chen et al. 2020, sec. 2.1); without
    ``relu``, Linear -> Linear: the head FALSE's and GraSS's VISSL configs build, whose
    ``["mlp", {"dims": [2048, 2048], "use_relu": True}]`` has one layer, and VISSL's MLP skips
    the ReLU after a module's last layer (vissl/models/heads/mlp.py:64-67)."""
    middle = [nn.ReLU(inplace=True)] if relu else []
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), *middle, nn.Linear(hidden_dim, out_dim))
