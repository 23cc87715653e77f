"""Configuration schema: frozen dataclasses, presets, ``--set key=value`` overrides, hashing.

Every setting lives in a frozen dataclass *section*: ``data``, ``pretrain``, ``finetune``, one
section per method (``simclr``, ...) and one per dataset (``synthetic``, ...). A preset fills
sections with values; the user's ``--set section.field=value`` overrides win. Each field is
declared with :func:`setting`: its default, its valid range (checked whenever a section is
made, so ``plan``, ``run``, ``submit`` and the Python API refuse the same values with the
same message) and whether it changes the result (``identity=False``: logging cadence,
worker counts; left out of the job's hash).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.errors import ConfigError
from bench.registry import Registry

# What fine-tuning loads from a pretraining run, each mode a superset of the one before:
# the encoder; plus smp's decoder.aspp; plus the rest of the decoder (never the class head).
LOAD_MODES = ("backbone", "backbone+aspp", "all")


class SettingError(ConfigError):
    """A setting outside its declared range: ``key`` (``section.field`` once the section is
    known) ``must ...``, and the value given."""

    def __init__(self, key: str, requirement: str, value: Any) -> None:
        super().__init__(f"{key} {requirement}, got {value!r}")
        self.key, self.requirement, self.value = key, requirement, value

    def in_section(self, section: str) -> SettingError:
        return SettingError(f"{section}.{self.key}", self.requirement, self.value)


# ----------------------------------------------------------------------------------------
# Valid ranges, declared next to each setting
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """The valid values of a number, or of every number of a tuple: ``ge``/``gt`` below,
    ``le``/``lt`` above; ``ordered``: a tuple's values must not decrease (min <= max)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    ordered: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, tuple):
            ordered = all(a <= b for a, b in itertools.pairwise(value))
            return all(map(self.holds, value)) and (ordered or not self.ordered)
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def requirement(self, name: str, is_tuple: bool) -> str:
        """``must satisfy 0 < alpha <= 1``, ``must be >= 1``, ``must satisfy 0 < low <= high
        <= 1``, ``must have each value >= 1`` ..."""
        low = f"{self.ge:g} <=" if self.ge is not None else None
        low = f"{self.gt:g} <" if self.gt is not None else low
        high = f"<= {self.le:g}" if self.le is not None else None
        high = f"< {self.lt:g}" if self.lt is not None else high
        if is_tuple and self.ordered:
            return "must satisfy " + " ".join(p for p in (low, "low <= high", high) if p)
        subject = "each value" if is_tuple else name
        if low and high:
            return f"must satisfy {low} {subject} {high}"
        one_sided = high or (f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}")
        return f"must have each value {one_sided}" if is_tuple else f"must be {one_sided}"


def setting(default: Any, *, identity: bool | str = True, **bounds: Any) -> Any:
    """A dataclass field with its valid range (``Bounds`` keywords) and whether it is part
    of the job id: True; False (an execution choice: logging cadence, workers); ``"if_set"``:
    only when set to something other than the default, so a setting added later leaves the
    ids of every job that does not use it unchanged."""
    metadata: dict[str, Any] = {} if identity is True else {"identity": identity}
    if bounds:
        metadata["bounds"] = Bounds(**bounds)
    return field(default=default, metadata=metadata)


@functools.cache
def _annotations(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any) -> None:
    """Raise :class:`SettingError` for the first field of ``obj`` outside its declared
    ``Bounds`` or not one of its ``Literal`` choices (None passes where it is allowed)."""
    hints = _annotations(type(obj))
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        if value is None:
            continue
        choices = _literal_choices(hints[spec.name])
        if choices and value not in choices:
            raise SettingError(spec.name, f"must be one of {', '.join(map(str, choices))}", value)
        bounds = spec.metadata.get("bounds")
        if bounds is not None and not bounds.holds(value):
            raise SettingError(
                spec.name, bounds.requirement(spec.name, isinstance(value, tuple)), value
            )


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return ()


class Settings:
    """Base of every settings section (a frozen dataclass): its fields are checked against
    their declared ranges when it is made, whoever makes it (a preset, ``--set``, Python).
    Subclasses with checks across fields call ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        check_fields(self)

    def unused_fields(self) -> set[str]:
        """Fields that the section's other choices make irrelevant (e.g. LARS's trust with
        Adam), left out when settings are compared."""
        return set()


@dataclass(frozen=True)
class NoSettings(Settings):
    """The section of a method or dataset without settings of its own."""


# ----------------------------------------------------------------------------------------
# Sections shared by every method and dataset
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Settings):
    """What the harness reads from any dataset."""

    bands: Literal["rgb", "rgbir"] = "rgb"  # rgbir adds the near-infrared band (4 channels)


@dataclass(frozen=True)
class PretrainConfig(Settings):
    """The method-agnostic pretraining loop (optimiser, schedule, sizes)."""

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    epochs: int = setting(3, ge=1)
    batch_size: int = setting(64, ge=2)  # images per step, two views each: >= 2 for negatives
    view_size: int = setting(48, ge=8)  # side of the augmented views fed to the network
    optimizer: Literal["adam", "adamw", "sgd", "lars"] = "adam"
    lr: float = setting(1e-3, gt=0)  # peak learning rate at lr_base_batch images
    # How the peak LR follows the global batch (batch_size, over all processes): "linear"
    # lr * batch_size / lr_base_batch (Goyal et al. 2017; SimCLR, MoCo, BYOL and VISSL all
    # state their LR per 256 images), "sqrt" lr * sqrt(batch_size / lr_base_batch) (SimCLR
    # appendix B.1), "none" lr as given (the Adam recipes of GLCNet and the multitask method).
    lr_scaling: Literal["none", "linear", "sqrt"] = setting("none", identity="if_set")
    lr_base_batch: int = setting(256, ge=1, identity="if_set")
    weight_decay: float = setting(1e-6, ge=0)  # on weights; norm layers and biases below
    # weight decay on BN/norm parameters (VISSL regularize_bn; GLCNet's Adam over
    # model.parameters() decays them) and on the biases of other layers (VISSL
    # regularize_bias: True in FALSE's and GraSS's configs); by default neither (BYOL, LARS)
    decay_norm: bool = setting(False, identity="if_set")
    decay_bias: bool = setting(False, identity="if_set")
    momentum: float = setting(0.9, ge=0, lt=1)
    betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1, identity="if_set")  # Adam
    # warmup_cosine: linear warm-up then cosine per step (SimCLR); warmup_cosine_restart:
    # linear warm-up then VISSL's cosine_warm_restart (full wave, adaptive, restarting after
    # restart_interval of the rest; FALSE's and GraSS's configs); epoch_cosine: cosine per
    # epoch, torch's CosineAnnealingLR stepped after each epoch (GLCNet main_ss.py); step:
    # lr * gamma every step_epochs epochs (StepLR of the multitask method)
    schedule: Literal["warmup_cosine", "warmup_cosine_restart", "epoch_cosine", "step"] = (
        "warmup_cosine"
    )
    restart_interval: float = setting(0.334, gt=0, le=1, identity="if_set")
    step_epochs: int = setting(2, ge=1)
    step_gamma: float = setting(0.95, gt=0, le=1)
    # epochs before the step schedule starts counting: 1 is the multitask release, whose
    # StepLR.step(epoch=e) after epoch e sets the LR of epoch e + 1 to gamma^(e // step)
    step_delay_epochs: int = setting(0, ge=0, identity="if_set")
    warmup_fraction: float = setting(0.1, ge=0, lt=1)  # linear warm-up over this fraction
    warmup_start_factor: float = setting(0.125, ge=0, le=1)  # from lr * this (VISSL 0.6/4.8)
    final_lr_factor: float = setting(0.001, ge=0, le=1)  # cosine ends at lr * this (VISSL)
    lars_trust: float = setting(0.001, gt=0)  # LARC trust coefficient (VISSL SimCLR config)
    # which parameters LARS adapts: "decayed" (groups with weight decay: the LARS paper's
    # and timm's exclusion) or "all" (apex LARC around SGD, as VISSL runs it: every tensor)
    lars_adapt: Literal["decayed", "all"] = setting("decayed", identity="if_set")
    amp: bool = True  # bf16/fp16 autocast on CUDA; ignored on CPU
    # torch.compile the networks in place (same weights and state-dict keys); pays a compile
    # at the first steps, meant for long GPU runs. An execution choice, not part of the id.
    compile: bool = setting(False, identity=False)
    log_every: int = setting(10, ge=1, identity=False)  # steps between progress lines
    # Live curves (bench.tracking): TensorBoard event files in <run folder>/tb/ (on), a W&B
    # run (offline unless WANDB_MODE says otherwise) and an MLflow run (the results folder's
    # file store); logging choices, not part of the id
    tensorboard: bool = setting(True, identity=False)
    wandb: bool = setting(False, identity=False)
    mlflow: bool = setting(False, identity=False)
    # Data-parallel pretraining (bench.distributed): processes per node (one per GPU) and
    # nodes; None takes the cluster profile's pretrain_gpus / pretrain_nodes, else 1. The
    # global batch stays batch_size, split evenly over the processes, so these are execution
    # choices and not part of the id (the record keeps the world size).
    gpus: int | None = setting(None, ge=1, identity=False)
    nodes: int | None = setting(None, ge=1, identity=False)
    # The health pass at each epoch's end (bench.health): images of its fixed batch (0: no
    # pass); an epoch is collapsed when embedding_std x sqrt(d) < collapse_std (SimSiam's
    # std in units of 1/sqrt(d): ~1 for embeddings spread over the sphere, 0 for one point;
    # a randomly initialised ResNet-18 gives ~0.1 on the synthetic data, SimCLR ~0.6 after
    # an epoch, a loss without negatives < 0.02 within epochs: BENCHMARKS.md);
    # fail_fast_epochs = N stops a run collapsed N epochs in a row as failed (0: never).
    # Monitoring choices that leave a finished run's weights as they are: not in the id.
    health_images: int = setting(64, ge=0, identity=False)
    collapse_std: float = setting(0.05, gt=0, identity=False)
    fail_fast_epochs: int = setting(0, ge=0, identity=False)
    # A checkpoint at the end of each epoch that ends checkpoint_minutes or more after the
    # last one, and mid-epoch after the first step that ends that long after it (0: after
    # every epoch, none mid-epoch); always on a stop signal. By time by default, as in
    # fine-tuning: a checkpoint costs the same whatever the epoch's length (network, optimiser
    # and EMA copies: ~0.2-0.8 s for ResNet-18 here, more for ResNet-50 on a network file
    # system), and a GPU's epoch of a small dataset lasts seconds; a kill without a signal
    # loses at most 10 minutes
    checkpoint_minutes: float = setting(10.0, ge=0, identity=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.health_images == 1:
            raise ValueError("health_images=1 leaves no pair to compare; use 0 (no pass) or >= 2")
        if self.fail_fast_epochs and not self.health_images:
            raise ValueError(
                f"fail_fast_epochs={self.fail_fast_epochs} needs the health pass; set "
                "health_images >= 2 or fail_fast_epochs=0"
            )

    def unused_fields(self) -> set[str]:
        unused = set()
        if not self.health_images:
            unused |= {"collapse_std", "fail_fast_epochs"}
        if self.optimizer != "lars":
            unused |= {"lars_trust", "lars_adapt"}
        if self.optimizer not in ("sgd", "lars"):
            unused.add("momentum")
        if self.optimizer not in ("adam", "adamw"):
            unused.add("betas")
        if self.weight_decay == 0:
            unused |= {"decay_norm", "decay_bias"}
        if self.schedule != "step":
            unused |= {"step_epochs", "step_gamma", "step_delay_epochs"}
        if self.schedule not in ("warmup_cosine", "warmup_cosine_restart"):
            unused |= {"warmup_fraction", "warmup_start_factor"}
        if self.schedule == "step":
            unused.add("final_lr_factor")
        if self.schedule != "warmup_cosine_restart":
            unused.add("restart_interval")
        if self.lr_scaling == "none":
            unused.add("lr_base_batch")
        return unused


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """Downstream protocol: smp DeepLabV3+ (or a linear probe) trained on the labelled subset.

    ``protocol`` names a complete set of these values (``bench.protocols``: ``harness``,
    ``glcnet``, ``false``, ``linear``); a preset or ``--set`` may override single fields on
    top, and the record and the table caption name every field that differs from the
    protocol."""

    protocol: str = "harness"  # a name of bench.protocols.PROTOCOLS
    # backbone: the encoder is not trained and its BN layers stay in eval mode
    # (MMSegmentation's frozen_stages + norm_eval, FALSE's protocol)
    freeze: Literal["none", "backbone"] = "none"
    steps: int = setting(100, ge=1)  # optimisation steps, unless epochs is set
    # epochs over the labelled patches: epochs x floor(labelled / batch_size) steps, each
    # epoch a fresh permutation without its last incomplete batch (GLCNet's DataLoader,
    # drop_last=True); fewer labelled patches than a batch: one batch per epoch
    epochs: int | None = setting(None, ge=1)
    batch_size: int = setting(8, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = setting(1e-3, gt=0)
    betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)  # Adam/AdamW
    weight_decay: float = setting(1e-5, ge=0)
    # false: no weight decay on BN and bias parameters; true: on every parameter (GLCNet's
    # torch.optim.Adam(model.parameters(), weight_decay=...), MMSegmentation's SGD)
    decay_norm_and_bias: bool = False
    momentum: float = setting(0.9, ge=0, lt=1)
    # poly: (lr - min_lr) (1 - t)^poly_power + min_lr (MMSegmentation); epoch_decay:
    # lr x lr_decay per epoch (GLCNet's lr_decay)
    schedule: Literal["poly", "cosine", "constant", "epoch_decay"] = "poly"
    poly_power: float = setting(0.9, gt=0)
    min_lr: float = setting(0.0, ge=0)
    lr_decay: float = setting(0.98, gt=0, le=1)
    # what is trained on the encoder: DeepLabV3+ (the head below), or a per-pixel linear
    # classifier on its features (bench.models.LinearHead: the stages of linear_features,
    # "multiscale" = strides 4-32 concatenated, "last" = stride 32; the linear protocol)
    decoder: Literal["deeplabv3plus", "linear"] = setting("deeplabv3plus", identity="if_set")
    linear_features: Literal["last", "multiscale"] = setting("multiscale", identity="if_set")
    # the DeepLabV3+ head (bench.models.DeepLabHead): rates 6/12/18 at stride 16, 12/24/36
    # at stride 8; ordinary or depthwise-separable ASPP convolutions; ASPP/decoder width
    output_stride: Literal[8, 16] = 16
    aspp_separable: bool = False
    decoder_channels: int = setting(256, ge=8)
    # Pretrained parts loaded into DeepLabV3+ (LOAD_MODES); GLCNet's protocol loads backbone
    # and ASPP with a fresh decoder. Methods that pretrain only a backbone load only that.
    load: Literal["backbone", "backbone+aspp", "all"] = "backbone+aspp"
    # which training patches get labels: a seeded random draw of all of them, or drawn from
    # every training tile in proportion (bench.datasets.subsets)
    labels: Literal["random", "stratified"] = "random"
    # patches: score the prepared test patches; tiles: score whole test tiles by sliding
    # windows of eval_window px every eval_stride px, overlapping logits averaged
    evaluation: Literal["patches", "tiles"] = "patches"
    eval_window: int = setting(256, ge=8)
    eval_stride: int = setting(128, ge=1)
    amp: bool = True
    eval_batch_size: int = setting(64, ge=1, identity=False)
    compile: bool = setting(False, identity=False)  # as pretrain.compile
    log_every: int = setting(25, ge=1, identity=False)
    tensorboard: bool = setting(True, identity=False)  # as pretrain.tensorboard
    wandb: bool = setting(False, identity=False)
    mlflow: bool = setting(False, identity=False)
    # a checkpoint every checkpoint_every steps (0: not by steps) and after the first step
    # that ends checkpoint_minutes after the last one (0: not by time); always on a stop
    # signal. By time by default: a checkpoint costs the same whatever the step time (~1 s
    # for ResNet-18 with Adam's state on CPU here; BENCHMARKS.md), so counted in steps it is
    # 5% of a CPU run and more of a GPU's; every 10 minutes it is < 0.2%, and a kill
    # without a signal loses at most 10 minutes
    checkpoint_every: int = setting(0, ge=0, identity=False)
    checkpoint_minutes: float = setting(10.0, ge=0, identity=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_stride > self.eval_window:
            raise ValueError(
                f"eval_stride={self.eval_stride} is larger than eval_window="
                f"{self.eval_window}: the windows would leave pixels unscored"
            )
        if self.freeze == "backbone" and self.load == "all":
            raise ValueError(
                "freeze=backbone trains a fresh decoder on a fixed backbone; load=all would "
                "load a pretrained decoder too: use load=backbone or load=backbone+aspp"
            )
        if self.decoder == "linear" and self.load != "backbone":
            raise ValueError(
                f"decoder=linear has no ASPP or decoder to load (load={self.load}): use "
                "load=backbone"
            )

    def unused_fields(self) -> set[str]:
        if self.decoder == "linear":
            return {"output_stride", "aspp_separable", "decoder_channels"}
        return {"linear_features"}

    @property
    def head(self):
        """The head trained on the encoder (:mod:`bench.models`)."""
        from bench.models import DeepLabHead, LinearHead

        if self.decoder == "linear":
            return LinearHead(self.linear_features)
        return DeepLabHead(self.output_stride, self.aspp_separable, self.decoder_channels)


# ----------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """Named values for sections; a method may add its own per-preset values on top."""

    name: str
    description: str
    caption: str  # printed under tables made from this preset
    values: dict[str, dict[str, Any]]
    seeds: tuple[int, ...] = (0,)


PRESETS: Registry[Preset] = Registry.of(
    "preset",
    (
        Preset(
            name="quick",
            description="CPU smoke test: ResNet-18, 64 px synthetic patches, minutes in all",
            caption=(
                "quick preset: a smoke test of the pipeline (tiny budgets); "
                "differences between methods are within seed noise and rank nothing"
            ),
            values={},
        ),
        Preset(
            name="cpu",
            description="CPU study: ~10 min pretraining per method, 600 fine-tuning steps, 2 seeds",
            caption=("cpu preset: small CPU budgets; expect small, noisy gaps between methods"),
            values={
                "pretrain": {"epochs": 40, "fail_fast_epochs": 3},
                "finetune": {"steps": 600, "batch_size": 16},
                "synthetic": {"n_train": 2048, "n_test": 512},
            },
            seeds=(0, 1),
        ),
        Preset(
            name="paper",
            description=(
                "each method as its authors' release ran it: ResNet-50, 256 px patches, the "
                "released optimiser, schedule, head and views (GPU; docs/FIDELITY.md)"
            ),
            caption=(
                "paper preset: each method as released (its own recipe, docs/FIDELITY.md); "
                "recipes differ between methods"
            ),
            values={
                # VISSL SimCLR recipe of FALSE and GraSS (configs/config/pretrain/FALSE/
                # false_1gpu_resnet.yaml and GraSS/grass_1gpu_resnet_b256.yaml); SimCLR is
                # their baseline; the other methods give their own recipes in full.
                "pretrain": {
                    "backbone": "resnet50",
                    "epochs": 200,  # OPTIMIZER.num_epochs
                    "batch_size": 256,  # BATCHSIZE_PER_REPLICA, one GPU
                    "view_size": 224,  # RandomResizedCrop size
                    "optimizer": "lars",  # sgd with use_larc, clip False
                    "lars_adapt": "all",  # LARC adapts every parameter
                    "lars_trust": 0.001,
                    "lr": 4.8,  # auto_lr_scaling auto_scale: false, so 4.8 at any batch
                    "lr_scaling": "none",
                    "weight_decay": 1e-6,
                    "decay_norm": False,  # regularize_bn: False
                    "decay_bias": True,  # regularize_bias: True
                    "momentum": 0.9,
                    "schedule": "warmup_cosine_restart",  # linear 0.6 -> 4.8, then restarts
                    "warmup_fraction": 0.1,  # lengths [0.1, 0.9]
                    "warmup_start_factor": 0.125,  # 0.6 / 4.8
                    "final_lr_factor": 0.001,  # 0.0048 / 4.8
                    "restart_interval": 0.334,
                    "amp": False,  # AMP_PARAMS USE_AMP: False
                },
                # GLCNet's downstream protocol as released (bench.protocols): FALSE and
                # GraSS fine-tuned with MMSegmentation code that is not released, GLCNet's
                # is; --set finetune.protocol=false gives FALSE's.
                "finetune": {"protocol": "glcnet"},
                "synthetic": {"patch_size": 256, "n_train": 13824, "n_test": 2048},
            },
            seeds=(0, 1, 2),
        ),
        Preset(
            name="common",
            description=(
                "one shared recipe for every method: ResNet-50, 200 epochs, batch 256, 224 "
                "px views, Adam with warm-up and cosine, shared views (GPU)"
            ),
            caption=(
                "common preset: every method under one shared recipe (backbone, epochs, "
                "batch, optimiser, schedule, views where the method allows): the method is "
                "the only difference"
            ),
            values={
                # Adam for all: the one family every method here trains with at a single LR
                # (GLCNet's and the multitask method's own; SimCLR-family methods train
                # stably with it at this batch). Fine-tuning: GLCNet's full protocol.
                "pretrain": {
                    "backbone": "resnet50",
                    "epochs": 200,
                    "batch_size": 256,
                    "view_size": 224,
                    "optimizer": "adam",
                    "lr": 1e-3,
                    "lr_scaling": "none",
                    "weight_decay": 1e-6,
                    "schedule": "warmup_cosine",
                    "warmup_fraction": 0.05,  # 10 of 200 epochs
                    "warmup_start_factor": 0.0,
                    "final_lr_factor": 0.001,
                    "fail_fast_epochs": 5,  # of 200: a collapsed run stops within 3%
                },
                "finetune": {"protocol": "glcnet"},
                "synthetic": {"patch_size": 256, "n_train": 13824, "n_test": 2048},
            },
            seeds=(0, 1, 2),
        ),
    ),
)

# The preset each of these is compared with by `bench plan` (what differs, per method).
COMPARED_PRESETS = {"paper": "common", "common": "paper"}


def shown(value: Any) -> str:
    """A setting's value as the CLI and captions write it: ``0.001``, ``0.9,0.99``."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(shown, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_unique(kind: str, values) -> None:
    """Refuse a list that names something twice (``seed 0 is given twice``)."""
    seen = set()
    for value in values:
        if value in seen:
            shown = f"{value:g}" if isinstance(value, float) else value
            raise ConfigError(f"{kind} {shown} is given twice; give each {kind} once")
        seen.add(value)


def get_preset(name: str) -> Preset:
    """The preset ``name`` (UnknownNameError listing the valid ones)."""
    return PRESETS.get(name)


# ----------------------------------------------------------------------------------------
# Building sections from layered values
# ----------------------------------------------------------------------------------------
def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``["pretrain.lr=0.1", ...]`` -> ``{"pretrain": {"lr": "0.1"}}`` (values still text)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(
                f"bad --set {item!r}: expected section.field=value, e.g. pretrain.lr=0.1"
            )
        out.setdefault(section, {})[name] = value.strip()
    return out


def build_section(cls: type, section: str, *layers: dict[str, Any] | None) -> Any:
    """Instantiate ``cls`` from defaults overlaid by ``layers`` (later wins).

    String values (from the command line) are parsed to the field's type; unknown fields
    fail listing the valid ones; every failure is a :class:`ConfigError` naming the key.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in names:
                raise ConfigError(
                    f"unknown setting {section}.{key}; valid keys for {section}: "
                    + ", ".join(f"{section}.{n}" for n in names)
                )
            kwargs[key] = parse_value(value, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except SettingError as error:
        raise error.in_section(section) from None
    except (TypeError, ValueError) as error:  # a check across fields in __post_init__
        raise ConfigError(f"{section}: {error}") from None


def parse_value(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (text from the CLI, or a Python value from a preset) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation}")
    if origin is Literal:
        for choice in args:
            try:
                if parse_value(value, type(choice), key) == choice:
                    return choice
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(parse_value(v, a, key) for v, a in zip(items, args, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is float and not math.isfinite(converted):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return converted
    raise ConfigError(f"{key}: unsupported setting type {annotation}")  # pragma: no cover


# ----------------------------------------------------------------------------------------
# Identity
# ----------------------------------------------------------------------------------------
def identity_dict(obj: Any) -> Any:
    """The fields of ``obj`` that change the result, as plain JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: identity_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if _in_identity(f, getattr(obj, f.name))
        }
    if isinstance(obj, (tuple, list)):
        return [identity_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): identity_dict(v) for k, v in obj.items()}
    return obj


def _in_identity(spec: dataclasses.Field, value: Any) -> bool:
    rule = spec.metadata.get("identity", True)
    if rule == "if_set":
        return value != spec.default
    return bool(rule)


def full_dict(obj: Any) -> Any:
    """Every field of ``obj`` as plain JSON-able values (for spec.json)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: full_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [full_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): full_dict(v) for k, v in obj.items()}
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(identity_dict(obj), sort_keys=True, separators=(",", ":"))


def stable_hash(obj: Any, length: int = 10) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]
