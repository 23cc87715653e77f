"""MoCo v2 (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive Learning",
arXiv:2003.04297).

A query encoder (backbone + MLP projector) is trained; the key encoder is its momentum (EMA)
copy and gets no gradient. Negatives come from a queue of the last K keys, enqueued after
every step. Loss: cross-entropy over ``[q.k+, q.queue] / tau`` with the positive at index 0.
On several processes (``bench.distributed``) each process's queries are normalised by its
own BN batch, as in the MoCo release (no SyncBN), and keys use *shuffle BN* (He et al.
2020, sec. 3.3): the key views of the global batch are gathered, permuted (the same seeded
permutation on every process), each process encodes one shard, and the keys are gathered and
put back in image order, so a query and its key never share BN statistics. Every process
enqueues the keys of the whole global batch, so the queue stays identical everywhere. A
single process has one BN batch for queries and one for keys and needs no shuffle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench import distributed
from bench.augment import ViewAugmentation, ViewRecipe
from bench.config import ConfigError, Settings, setting
from bench.methods.base import PretrainingMethod, StepContext, register_method
from bench.methods.ema import ema_update, frozen_copy
from bench.models import BACKBONE_WIDTH, mlp_projector
from bench.precision import at_least_float32


@dataclass(frozen=True)
class MoCoParams(Settings):
    temperature: float = setting(0.2, gt=0)  # MoCo v2 (Chen et al. 2020, sec. 3); G-RSIM 0.07
    momentum: float = setting(0.999, ge=0, lt=1)  # key-encoder EMA m (He et al. 2020, 3.2)
    # K negatives; None = sized from the pretraining images (moco_queue_size): He et al.
    # 2020 use 65,536 of ImageNet's 1.28 M images, G-RSIM 2,048 of Potsdam's 13,824
    queue_size: int | None = setting(None, ge=1)
    # MLP head w -> w -> 128 (MoCo v2); 0 = backbone width w
    projector_hidden_dim: int = setting(0, ge=0)
    projector_dim: int = setting(128, ge=1)
    # MoCo v2 augmentation: crop 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2,
    # blur p 0.5, h-flip.
    crop_scale: tuple[float, float] = setting((0.2, 1.0), gt=0, le=1, ordered=True)
    jitter: tuple[float, float, float, float] = setting(
        (0.4, 0.4, 0.4, 0.1), ge=0, le=1, identity="if_set"
    )
    jitter_prob: float = setting(0.8, ge=0, le=1)
    grayscale_prob: float = setting(0.2, ge=0, le=1)
    blur_prob: float = setting(0.5, ge=0, le=1)


@register_method("moco")
class MoCo(PretrainingMethod):
    """Query/key encoders with a queue of negatives (MoCo v2)."""

    Params = MoCoParams
    summary = "MoCo v2: momentum key encoder and a queue of negatives (He/Chen et al. 2020)"
    # the momentum key encoder, updated by EMA only (He et al. 2020, sec. 3.2: "only the
    # parameters of the query encoder are updated by back-propagation")
    frozen_modules = ("key_backbone", "key_projector")
    # MoCo v2 as released (facebookresearch/moco main_moco.py): SGD(model.parameters(), LR
    # 0.03 x batch/256, momentum 0.9, weight decay 1e-4 on every parameter), cosine per
    # epoch to 0 (adjust_learning_rate with --cos), 200 epochs, float32.
    preset_pretrain = {
        "paper": {
            "optimizer": "sgd",
            "lr": 0.03,
            "lr_scaling": "linear",
            "weight_decay": 1e-4,
            "decay_norm": True,
            "decay_bias": True,
            "momentum": 0.9,
            "schedule": "epoch_cosine",
            "final_lr_factor": 0.0,
        }
    }
    # common: the shared views (SimCLR's crop and jitter)
    preset_params = {"common": {"crop_scale": (0.08, 1.0), "jitter": (0.8, 0.8, 0.8, 0.2)}}

    @classmethod
    def few_batches_settings(cls, batch_size: int) -> dict[str, int]:
        """A queue of two batches: longer than a batch, shorter than three batches' images
        (the data-sized rule would refuse so few)."""
        return {"queue_size": 2 * batch_size}

    @classmethod
    def check_data(cls, params: MoCoParams, config, train_size: int) -> None:
        moco_queue_size(params.queue_size, config.batch_size, train_size)

    def __init__(self, params: MoCoParams, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self.queue_size = moco_queue_size(
            params.queue_size, self.config.batch_size, self.train_size
        )
        width = BACKBONE_WIDTH[self.config.backbone]
        self.projector = mlp_projector(
            width, params.projector_hidden_dim or width, params.projector_dim
        )
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        queue = F.normalize(torch.randn(self.queue_size, params.projector_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None
        self.views = ViewAugmentation(
            ViewRecipe(
                size=self.config.view_size,
                crop_scale=params.crop_scale,
                jitter=params.jitter,
                jitter_prob=params.jitter_prob,
                grayscale_prob=params.grayscale_prob,
                blur_prob=params.blur_prob,
            )
        )

    def resolved_settings(self) -> dict:
        return {"queue_size": self.queue_size}

    def health_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views(images), self.views(images)

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        query_views = self.normalize(self.views(images))
        key_views = self.normalize(self.views(images))
        q = F.normalize(at_least_float32(self.projector(self.embed(query_views))), dim=1)
        with torch.no_grad():
            if distributed.active():
                k, all_keys = self.shuffled_keys(key_views, ctx.step)
            else:
                k = all_keys = self.keys(key_views)
        loss = moco_loss(q, k, self.queue, self.params.temperature)
        self._pending_keys = all_keys
        return loss, {}

    @torch.no_grad()
    def keys(self, key_views: torch.Tensor) -> torch.Tensor:
        """L2-normalised key-encoder projections (no gradient)."""
        k = self.key_projector(self.key_backbone(key_views)[-1].mean(dim=(2, 3)))
        return F.normalize(at_least_float32(k), dim=1)

    @torch.no_grad()
    def shuffled_keys(self, key_views: torch.Tensor, step: int):
        """Shuffle BN: this process's keys and the keys of the global batch (image order),
        each computed in a BN batch of randomly chosen images of the global batch."""
        place = distributed.topology()
        everything = distributed.gather(key_views)
        order = shuffle_order(len(everything), step, key_views.device)
        n = len(key_views)
        mine = order[place.rank * n : (place.rank + 1) * n]
        shuffled = distributed.gather(self.keys(everything[mine]))  # keys of everything[order]
        all_keys = torch.empty_like(shuffled)
        all_keys[order] = shuffled
        return all_keys[place.rank * n : (place.rank + 1) * n], all_keys

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update(self.key_backbone, self.backbone, self.params.momentum)
        ema_update(self.key_projector, self.projector, self.params.momentum)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries by ``keys`` (a ring buffer of the last K keys)."""
        size = self.queue.shape[0]
        positions = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[positions] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)


# The rule for the queue: the largest power of two within this share of the pretraining images
# (G-RSIM: 2,048 for Potsdam's 13,824, T-SS-GLCNet/models/__init__.py:53), at most MoCo's
# 65,536 (He et al. 2020, for ImageNet's 1.28 M).
QUEUE_SHARE = 0.15
QUEUE_CAP = 65536


def moco_queue_size(given: int | None, batch_size: int, train_size: int | None) -> int:
    """The queue size ``given``, or the rule's for ``train_size`` images; a queue not smaller
    than the pretraining set (each query would meet its own image's earlier keys among its
    negatives) or not larger than the batch is refused with the numbers."""
    if given is None:
        if train_size is None:
            raise ValueError("moco.queue_size=None sizes the queue from the pretraining images")
        rule = min(QUEUE_CAP, 2 ** int(math.floor(math.log2(max(QUEUE_SHARE * train_size, 1)))))
        if rule <= batch_size:
            raise ConfigError(
                f"moco: the queue sized from the {train_size} pretraining images ({rule}, the "
                f"largest power of two within {QUEUE_SHARE:.0%}) is not larger than "
                f"pretrain.batch_size={batch_size}; set moco.queue_size between "
                f"{batch_size + 1} and {train_size - 1}, or a smaller batch"
            )
        return rule
    if given <= batch_size:
        raise ConfigError(f"moco.queue_size={given} must exceed pretrain.batch_size={batch_size}")
    if train_size is not None and given >= train_size:
        raise ConfigError(
            f"moco.queue_size={given} is not smaller than the {train_size} pretraining images: "
            f"each query would meet its own image's earlier keys among its negatives; use "
            f"moco.queue_size=none (the rule: about {QUEUE_SHARE:.0%} of them) or fewer"
        )
    return given


def shuffle_order(size: int, step: int, device: torch.device) -> torch.Tensor:
    """Shuffle BN's permutation of the global batch at ``step``: seeded by the step, so every
    process draws the same one without a broadcast (and a resumed run draws it again)."""
    generator = torch.Generator().manual_seed(0x5EED_0000 + step)
    return torch.randperm(size, generator=generator).to(device)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float):
    """Cross-entropy over ``[q.k+, q.queue] / tau``, the positive at index 0 (InfoNCE)."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.detach().to(q.dtype).T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
