"""The method interface: what the generic pretraining loop and fine-tuning need to know.

A method is one file in ``bench/methods/`` registered with ``@register_method("name")``. It
declares its hyperparameters as a frozen dataclass ``Params`` (a ``--set name.field=value``
section) and, per preset, values for the pretraining loop (``preset_pretrain``).

* A :class:`PretrainingMethod` makes views from a batch, returns the loss of one step and
  hands back the backbone's weights in smp/torchvision ResNet key naming. The loop in
  ``bench.pretrain`` owns optimisation, schedules, checkpoints and logging.
* A :class:`BaselineMethod` needs no pretraining and says how the encoder starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.augment import ViewAugmentation, ViewRecipe
from bench.config import NoSettings, PretrainConfig
from bench.models import DeepLabHead, build_backbone
from bench.plugins import INSTALLED
from bench.registry import Registry


@dataclass(frozen=True)
class StepContext:
    """Where the loop is: the method may use it for schedules (e.g. EMA momentum)."""

    step: int  # global optimisation step, 0-based
    total_steps: int
    epoch: int

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


class Method:
    """Attributes shared by every registry entry."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoSettings
    pretrains: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    # preset name -> PretrainConfig values this method's paper uses (over the preset's own)
    preset_pretrain: ClassVar[dict[str, dict[str, Any]]] = {}
    # preset name -> values of this method's own Params
    preset_params: ClassVar[dict[str, dict[str, Any]]] = {}
    # values of its own Params that fit `bench check-method`'s tiny data (16 images, batch 4)
    check_settings: ClassVar[dict[str, Any]] = {}
    # The largest finetune.load mode (config.LOAD_MODES) this method's weights can serve:
    # "backbone" unless the method pretrains smp's ASPP/decoder too (decoder_state_dict).
    transfers: ClassVar[str] = "backbone"
    # Batch norm over the global batch when pretraining on several processes
    # (bench.distributed): True where the method's paper or release syncs BN across devices.
    sync_batchnorm: ClassVar[bool] = False

    @classmethod
    def head(cls, params: Any) -> DeepLabHead | None:
        """The DeepLabV3+ head whose ASPP/decoder this method pretrains (None: it pretrains
        a backbone only); fine-tuning that loads those parts must build the same head."""
        return None

    @classmethod
    def few_batches_settings(cls, batch_size: int) -> dict[str, Any]:
        """Values of its own Params that let it pretrain on only a few (at least three)
        batches of ``batch_size`` images, as ``check-method`` and ``bench perf`` do, where
        its defaults need more data (MoCo's queue). Empty: the defaults fit."""
        return {}

    @classmethod
    def check_data(cls, params: Any, config: PretrainConfig, train_size: int) -> None:
        """Refuse (:class:`bench.config.ConfigError`, with the numbers) settings that do not
        fit ``train_size`` pretraining images; checked before a sweep starts."""

    @classmethod
    def unavailable_reason(cls, params: Any, backbone: str) -> str | None:
        """Why this method cannot run on this machine (e.g. a missing weights file), or None.

        A sweep that names the method fails at once with this reason; the default sweep
        (all methods) leaves it out with a warning.
        """
        return None


class PretrainingMethod(Method, nn.Module):
    """A self-supervised method: subclasses build heads in ``__init__`` and define a step."""

    # Sub-modules (attribute paths, e.g. "key_backbone") that must get no gradient: momentum
    # (EMA) copies and target networks, which the method updates itself, outside the
    # optimiser (bench.methods.ema.frozen_copy). `bench check-method` checks that their
    # parameters have requires_grad=False and no gradient after a step, and that every other
    # parameter is trainable and gets one.
    frozen_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        params: Any,
        config: PretrainConfig,
        in_channels: int,
        band_mean: list[float],
        band_std: list[float],
        train_size: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.params = params
        self.config = config
        self.in_channels = in_channels
        self.train_size = train_size  # pretraining images, for settings sized from the data
        self.backbone = build_backbone(config.backbone, in_channels)
        self.register_buffer("band_mean", torch.tensor(band_mean).view(1, -1, 1, 1))
        self.register_buffer("band_std", torch.tensor(band_std).view(1, -1, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Per-band standardisation of [0, 1] images with the training set's statistics."""
        return (images - self.band_mean) / self.band_std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage features of normalised images."""
        return self.backbone(images)[-1].mean(dim=(2, 3))

    def health_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of a batch of [0, 1] images for the health pass's alignment
        (:mod:`bench.health`): methods with a view augmentation of their own return theirs;
        this default is two draws of SimCLR's augmentation (Chen et al. 2020, appendix A)
        with crops of 20-100% of the image (MoCo v2's scale, kept by the quick preset for
        small patches) at ``pretrain.view_size``."""
        augment = ViewAugmentation(ViewRecipe(size=self.config.view_size, crop_scale=(0.2, 1.0)))
        return augment(images), augment(images)

    def training_step(
        self, images: torch.Tensor, ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch of [0, 1] images ``[B, C, H, W]`` and scalars to log.

        On several processes ``images`` is this process's shard of the global batch; a loss
        over the global batch gathers embeddings with ``bench.distributed.gather_views``.
        Scalars must have the same keys on every process (they are averaged)."""
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Hook after each optimiser step (EMA updates, queues)."""

    def phase_epochs(self) -> tuple[int, ...]:
        """The run's phases, in epochs (summing to ``pretrain.epochs``): each phase runs the
        whole LR schedule over its own steps and starts with a fresh optimiser state, as
        separate runs that hand over their weights would. One phase by default."""
        return (self.config.epochs,)

    def resolved_settings(self) -> dict[str, Any]:
        """Settings this run derived from the data (e.g. MoCo's queue size), for its record."""
        return {}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights in smp/torchvision ResNet key naming, on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}

    def decoder_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Weights of smp's ``DeepLabV3PlusDecoder`` (keys ``aspp.*``, ``block1.*``, ...) for
        methods whose ``transfers`` goes beyond the backbone; None for the others."""
        return None


class BaselineMethod(Method):
    """A method without pretraining: it only says how the encoder starts."""

    pretrains: ClassVar[bool] = False

    @classmethod
    def initial_backbone(
        cls, params: Any, backbone: str, in_channels: int
    ) -> tuple[dict[str, torch.Tensor] | None, str]:
        """Weights for the encoder (None keeps smp's random initialisation) and a line that
        says where they came from, for the result record."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", plugins=INSTALLED, base=Method)
register_method = METHODS.register


def create_method(
    name: str,
    params: Any = None,
    config: PretrainConfig | None = None,
    in_channels: int = 3,
    band_mean: list[float] | None = None,
    band_std: list[float] | None = None,
    train_size: int | None = None,
) -> PretrainingMethod:
    """The registered pretraining method ``name``, ready to train (the ``timm.create_model``
    habit): unset arguments (None) take their defaults; band statistics default to 0 / 1
    (images used as they are); ``train_size``, the number of pretraining images, sizes
    settings that follow the data."""
    cls = METHODS.get(name)
    if not cls.pretrains:
        raise ValueError(f"{name} is a baseline: it has nothing to pretrain")
    return cls(
        cls.Params() if params is None else params,
        config or PretrainConfig(),
        in_channels,
        band_mean if band_mean is not None else [0.0] * in_channels,
        band_std if band_std is not None else [1.0] * in_channels,
        train_size,
    )
