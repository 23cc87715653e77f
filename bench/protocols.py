"""Downstream protocols: named, complete sets of fine-tuning settings, as the papers ran them.

A protocol is a description, not code: the values of :class:`bench.config.FinetuneConfig`
it fixes. The fine-tuning loop reads only the resulting settings. Settings are resolved as

    FinetuneConfig defaults  <  the protocol's values  <  the preset's other finetune values
    (only when the protocol is the preset's own)  <  the user's ``--set finetune.*``

so ``--set finetune.protocol=false`` gives FALSE's protocol exactly, whatever the preset,
and any field can still be overridden. :func:`protocol_overrides` names the fields that
differ from the protocol; records and table captions show them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bench.config import ConfigError, FinetuneConfig, build_section, identity_dict, shown
from bench.registry import Registry


@dataclass(frozen=True)
class Protocol:
    name: str
    source: str  # the paper and release it comes from
    summary: str
    values: dict[str, Any]  # FinetuneConfig fields; the others keep their defaults


PROTOCOLS: Registry[Protocol] = Registry.of(
    "protocol",
    (
        Protocol(
            name="harness",
            source="this harness (no paper): a short schedule for CPU studies",
            summary="full fine-tuning, Adam 1e-3, poly 0.9, 100 steps of 8 patches",
            values={},  # FinetuneConfig's defaults
        ),
        Protocol(
            name="glcnet",
            source=(
                "GLCNet (Li et al., IEEE TGRS 2022), release G-RSIM/T-SS-GLCNet: main_ss.py "
                "train_seg1 and val, config/opt_road.py"
            ),
            summary=(
                "full fine-tuning from backbone + ASPP, Adam 1e-4 betas (0.9, 0.99), weight "
                "decay 1e-5 on every parameter, LR x 0.98 per epoch, 150 epochs of 16 "
                "patches, scored on the 256 px test patches"
            ),
            values={
                "freeze": "none",
                "epochs": 150,  # main_ss.py --ft_max_epoch default
                "batch_size": 16,  # opt_road.py batch_size (ft_batch_size)
                "optimizer": "adam",
                "lr": 1e-4,  # main_ss.py --lr_ft
                "betas": (0.9, 0.99),  # main_ss.py train_seg1: torch.optim.Adam(...)
                "weight_decay": 1e-5,  # opt_road.py weight_decay
                "decay_norm_and_bias": True,  # Adam(model.parameters(), ...)
                "schedule": "epoch_decay",
                "lr_decay": 0.98,  # opt_road.py lr_decay, applied after each epoch
                "output_stride": 16,  # deeplab_utils/encoder.py, GLCNet.py DeepLab(16)
                "aspp_separable": False,  # encoder.py _AsppConv: nn.Conv2d
                "decoder_channels": 256,
                "load": "backbone+aspp",
                "labels": "random",  # data_example/Potsdam/trainR1_*.txt: 1 to 13 per tile
                # val(): the test images are the 256 px patches of the test tiles
                # (data_example/Potsdam/val_RGBIR/*__26.tif is 256 x 256); slide_crop
                # (crop_params [256, 256, 128]) only runs on inputs larger than 256 px
                # (utils/data_for_seg.py need_crop), so patches are scored one by one.
                "evaluation": "patches",
                "eval_window": 256,  # opt_road.py crop_params, for evaluation=tiles
                "eval_stride": 128,
            },
        ),
        Protocol(
            name="false",
            source=(
                "FALSE (Zhang et al., IEEE GRSL 2022), fine-tuned with MMSegmentation "
                "(its fine-tuning code is not released; MMSegmentation's deeplabv3plus_r50-d8 "
                "model and schedule defaults)"
            ),
            summary=(
                "frozen backbone (BN in eval), fresh DeepLabV3+ at output stride 8 (separable "
                "ASPP 12/24/36, 512 channels), SGD 0.01 momentum 0.9 weight decay 5e-4, "
                "poly 0.9 to 1e-4, 1,300 iterations of 16 patches, scored on the test patches"
            ),
            values={
                "freeze": "backbone",
                "steps": 1300,
                "batch_size": 16,
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 5e-4,  # MMSegmentation schedule: SGD weight_decay=0.0005
                "decay_norm_and_bias": True,  # no paramwise_cfg in the default schedule
                "schedule": "poly",
                "poly_power": 0.9,
                "min_lr": 1e-4,  # MMSegmentation's poly lr_config min_lr
                "output_stride": 8,  # deeplabv3plus_r50-d8: dilations (1, 1, 2, 4)
                "aspp_separable": True,  # DepthwiseSeparableASPPHead
                "decoder_channels": 512,  # decode_head channels=512
                "load": "backbone",
                "labels": "random",
                "evaluation": "patches",  # test_cfg mode='whole' on the prepared patches
            },
        ),
        Protocol(
            name="linear",
            source=(
                "this harness: the frozen-encoder probe with which geospatial benchmark "
                "suites (PANGAEA, torchgeo-bench) score encoders, isolating the "
                "representation from the fine-tuning recipe; multi-scale features as DINOv2's "
                "+ms linear segmentation probe (Oquab et al. 2023), BN without affine and no "
                "weight decay as MAE's linear probe (He et al. 2022, appendix A.2)"
            ),
            summary=(
                "frozen backbone (BN in eval), one 1x1 convolution on its BN-normalised "
                "stride 4-32 features upsampled to the input (the only trained layer), Adam "
                "1e-3 without weight decay, poly 0.9, 100 steps of 8 patches (the harness "
                "protocol's length); on CPU 5.6x cheaper per step and 7.9x per job than "
                "harness (BENCHMARKS.md)"
            ),
            values={
                "decoder": "linear",
                "linear_features": "multiscale",
                "freeze": "backbone",
                "load": "backbone",
                "weight_decay": 0.0,  # MAE's linear probe (He et al. 2022, appendix A.2)
            },
        ),
    ),
)


def get_protocol(name: str) -> Protocol:
    """The protocol ``name`` (UnknownNameError listing the valid ones)."""
    return PROTOCOLS.get(name, where="for finetune.protocol")


def finetune_settings(
    preset_values: dict[str, Any] | None, user: dict[str, Any] | None
) -> FinetuneConfig:
    """The ``finetune`` section of a sweep: the protocol the user or the preset names, the
    preset's other values when the protocol is the preset's own, then the user's values."""
    preset_values, user = dict(preset_values or {}), dict(user or {})
    preset_protocol = preset_values.pop("protocol", "harness")
    name = str(user.pop("protocol", preset_protocol)).strip()
    protocol = get_protocol(name)
    from_preset = preset_values if name == preset_protocol else {}
    if (
        "steps" in user
        and "epochs" not in user
        and ({**protocol.values, **from_preset}.get("epochs") is not None)
    ):
        raise ConfigError(
            f"finetune.steps has no effect: protocol {name} counts epochs; set "
            "finetune.epochs=N instead, or finetune.epochs=none together with finetune.steps"
        )
    return build_section(
        FinetuneConfig, "finetune", protocol.values, {"protocol": name}, from_preset, user
    )


def protocol_overrides(cfg: FinetuneConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that change results and differ from its protocol's values."""
    reference = FinetuneConfig(protocol=cfg.protocol, **PROTOCOLS.get(cfg.protocol).values)
    mine, theirs = identity_dict(cfg), identity_dict(reference)
    return {
        f.name: mine[f.name]
        for f in dataclasses.fields(cfg)
        if f.name in mine and mine[f.name] != theirs.get(f.name)
    }


def describe_overrides(overrides: dict[str, Any]) -> str:
    """``steps=600, batch_size=16`` (or an empty string), in the order of the settings
    (a record read back from JSON may hold them in another order)."""
    order = [f.name for f in dataclasses.fields(FinetuneConfig)]
    keys = sorted(overrides, key=lambda k: order.index(k) if k in order else len(order))
    return ", ".join(f"{key}={shown(overrides[key])}" for key in keys)
