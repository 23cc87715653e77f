"""The training engine of pretraining, fine-tuning and ``bench perf``'s bare loops.

DINO's ``train_one_epoch`` and torchgeo's trainers keep the pieces of a training loop apart;
so does this module, and the two loops (``bench.pretrain``, ``bench.finetune``) only say what
is specific to them (their batches, their loss, what they log):

* devices and numerics: :func:`resolve_device`, :func:`autocast_for` (bf16 on CUDA), seeds;
* optimisers: :func:`parameter_groups` (weight decay on weights; on norm layers and biases
  as the recipe says), :func:`build_optimizer`;
* one schedule mechanism: a precomputed learning rate per step (the DINO / nanoGPT habit),
  an array every loop hands to the :class:`Trainer`;
* :meth:`Trainer.step`, one optimisation step: the step's LR, the forward pass under
  autocast, one all-reduce of the loss, the method's scalars and "a stop signal arrived"
  (the identity in one process), a guard that stops on a non-finite loss, the scaled backward
  pass, gradient averaging over processes, optional clipping, the optimiser and scaler step;
* the train state that saves and loads itself (:meth:`Trainer.save`, :meth:`Trainer.load`):
  networks, optimiser, scaler, the loop's position and counters, and every process's random
  state, so a resumed run computes the same weights as an uninterrupted one on CPU;
* :meth:`Trainer.run`, the loop over one epoch's batches with the preemption check: a stop
  signal (SIGTERM/SIGUSR2) makes every process finish its step, checkpoint and stop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch

from bench import checkpoint, distributed
from bench.preemption import Preempted, StopSignals

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of wasting the budget."""


# ----------------------------------------------------------------------------------------
# Devices and numerics
# ----------------------------------------------------------------------------------------
def resolve_device() -> torch.device:
    """The device a job runs on when none is given: CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked (fp16 if bf16 is unsupported); nothing on CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, epoch, ...)."""
    return int(np.random.default_rng(list(parts)).integers(2**63 - 1))


def place_on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, channels-last on CUDA (NHWC convolutions are faster on
    tensor cores)."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------------------
# Optimisers
# ----------------------------------------------------------------------------------------
NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


def parameter_groups(
    model: torch.nn.Module,
    weight_decay: float,
    decay_norm: bool = False,
    decay_bias: bool | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters in two groups, with and without weight decay: weights always
    decay; normalisation layers' weights and biases only with ``decay_norm``; the biases of
    other layers only with ``decay_bias`` (default: as ``decay_norm``); an empty group is
    left out. VISSL's SimCLR recipe
    (FALSE, GraSS) is ``regularize_bn: False, regularize_bias: True``: decay on linear
    biases, none on BN (vissl/optimizers/optimizer_helper.py ``_get_bn_optimizer_params``);
    GLCNet's ``Adam(model.parameters(), weight_decay=...)`` decays everything."""
    decay_bias = decay_norm if decay_bias is None else decay_bias
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            decays = decay_norm if is_norm else (decay_bias if name == "bias" else True)
            (decay if decays else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    groups: list[dict[str, Any]],
    name: str,
    lr: float,
    momentum: float,
    lars_trust: float = 0.001,
    betas: tuple[float, float] = (0.9, 0.999),
    lars_adapt: str = "decayed",
) -> torch.optim.Optimizer:
    """torch's optimiser ``name`` over ``groups``; Adam's weight decay is the L2 term added
    to the gradient (``torch.optim.Adam(weight_decay=...)``, as the releases use it).

    LARS is timm's: ``lars_adapt="decayed"`` adapts only groups with weight decay (the
    exclusion of BN and bias of the LARS paper and of timm); ``"all"`` adapts every
    parameter, as apex's ``LARC`` (clip=False) that VISSL wraps around SGD does: the trust
    ratio ``trust * |w| / (|g| + wd |w| + eps)`` for every tensor whose weight and gradient
    norms are both non-zero (apex/parallel/LARC.py ``step``; vissl/optimizers/larc_fsdp.py
    ``LARC_FSDP.step``, its copy). timm's ``always_adapt=True`` is that computation."""
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return timm.optim.Lars(
            groups,
            lr=lr,
            momentum=momentum,
            trust_coeff=lars_trust,
            always_adapt=lars_adapt == "all",
        )
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, adamw, sgd, lars")


# ----------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepOutcome:
    """What one optimisation step reports: means over processes."""

    loss: float
    extras: dict[str, float]
    lr: float
    stop: bool  # a stop signal reached some process: every process stops after this step
    # some process's checkpoint interval (Trainer.checkpoint_seconds) has passed: every
    # process writes the checkpoint after this step
    checkpoint_due: bool = False


@dataclass
class Trainer:
    """One model's training: its optimiser, schedule and checkpoint, the step and the loop.

    ``schedule[step]`` is the learning rate of each step; ``what`` names the training in
    messages ("pretraining", "fine-tuning"); ``clip_norm`` clips the global gradient norm
    (None: no clipping, as in every recipe so far); ``checkpoint_seconds`` > 0 makes
    :meth:`run` write a checkpoint after the first step that ends that long after the last
    checkpoint (or the start), on every process at the same step."""

    job_id: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: np.ndarray
    device: torch.device
    amp: bool
    checkpoint_path: Path | None = None
    what: str = "training"
    clip_norm: float | None = None
    stop: StopSignals = field(default_factory=StopSignals)
    checkpoint_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.last_checkpoint_time = time.monotonic()
        fp16 = self.device.type == "cuda" and self.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.place = distributed.topology()

    # ------------------------------------------------------------------ one step
    def step(
        self, step: int, forward: Callable[[], tuple[torch.Tensor, dict[str, float]]]
    ) -> StepOutcome:
        """One optimisation step at ``step`` (0-based, over the whole run) of the loss that
        ``forward`` returns with its scalars."""
        lr = float(self.schedule[step])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast_for(self.device, self.amp):
            loss, extras = forward()
        # one all-reduce: the loss and scalars over all processes, and whether any process
        # was told to stop or is due a checkpoint (all must act at the same step)
        names = sorted(extras)
        local = [float(loss.detach()), float(bool(self.stop.poll())), float(self._due())]
        means = distributed.mean_over_processes(local + [extras[k] for k in names], self.device)
        if not math.isfinite(means[0]):
            raise NonFiniteLossError(
                f"non-finite {self.what} loss {means[0]} at step {step}; lower the learning "
                f"rate (now {lr:.3g}) or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.model.parameters())
        if self.clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        extras = dict(zip(names, means[3:], strict=True))
        return StepOutcome(means[0], extras, lr, means[1] > 0, means[2] > 0)

    def _due(self) -> bool:
        """Whether ``checkpoint_seconds`` have passed since the last checkpoint (or start)."""
        elapsed = time.monotonic() - self.last_checkpoint_time
        return self.checkpoint_seconds > 0 and elapsed >= self.checkpoint_seconds

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        batches: Iterable[tuple[int, Any]],
        train_step: Callable[[Any, int], StepOutcome],
        position: Callable[[int], tuple[dict[str, Any], str]],
        checkpoint_every: int = 0,
        last_checkpoint: int | None = None,
    ) -> None:
        """Train on ``(step, batch)`` pairs (``step`` 0-based over the whole run) with
        ``train_step(batch, step)``, which goes through :meth:`step`. ``position(step)`` says
        where the loop stands after ``step``: the checkpoint's fields (position, counters)
        and where that is, in words.

        A checkpoint is written every ``checkpoint_every`` steps (0: never), when
        ``checkpoint_seconds`` have passed since the last one, and when a stop signal
        arrived, after which every process raises :class:`Preempted`; not after
        ``last_checkpoint`` (the run is about to finish and write its result anyway)."""
        for step, batch in batches:
            outcome = train_step(batch, step)
            periodic = checkpoint_every and (step + 1) % checkpoint_every == 0
            periodic = periodic or outcome.checkpoint_due
            due = last_checkpoint is None or step < last_checkpoint
            if (outcome.stop or periodic) and due:
                fields, where = position(step)
                self.save(fields)
                if outcome.stop:
                    self.preempted(where)

    def pending_everywhere(self) -> tuple[bool, bool]:
        """Whether a stop signal reached any process, and whether any process is due a
        checkpoint (``checkpoint_seconds`` passed): one all-reduce, so every process acts
        alike."""
        local = [float(bool(self.stop.requested)), float(self._due())]
        stop, due = distributed.mean_over_processes(local, self.device)
        return stop > 0, due > 0

    def preempted(self, where: str) -> None:
        """Stop after checkpointing: every process raises, whichever received the signal."""
        name = self.stop.requested or "a stop signal to another process"
        raise Preempted(f"{name} received; checkpoint written {where}", self.stop.signum)

    # ------------------------------------------------------------------ the train state
    def save(self, fields: dict[str, Any]) -> None:
        """Write the checkpoint: ``fields`` (position, counters), the networks, optimiser,
        scaler, and every process's random state (rank 0 writes; the others wait)."""
        rng = checkpoint.rng_state()
        world = self.place.world_size
        rng_ranks = distributed.gather_objects(rng) if world > 1 else None
        if self.place.is_main:
            state = {
                "job_id": self.job_id,
                **fields,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
            }
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            if rng_ranks is not None:
                state["rng_ranks"] = rng_ranks
            checkpoint.save(self.checkpoint_path, state)
        distributed.barrier()  # nobody stops (or is killed) before the checkpoint is written
        self.last_checkpoint_time = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """Load the newest usable checkpoint of this job into the networks, optimiser and
        scaler; return it (position, counters, random states), or None to start fresh."""
        state = checkpoint.load(self.checkpoint_path, self.job_id)
        if state is None:
            return None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state

    def restore_rng(self, state: dict[str, Any], reseed: int) -> None:
        """This process's random state from ``state``; when the checkpoint was written by
        another number of processes, the same data order goes on with fresh augmentations
        from ``reseed`` (and a warning)."""
        world, ranks = self.place.world_size, state.get("rng_ranks")
        if world == 1 and ranks is None:
            checkpoint.set_rng_state(state["rng"])
        elif ranks is not None and len(ranks) == world:
            checkpoint.set_rng_state(ranks[self.place.rank])
        else:
            log.warning(
                "%s: the checkpoint was written by %d process(es), this run has %d; the data "
                "order continues exactly, the augmentations are reseeded",
                self.job_id,
                len(ranks) if ranks else 1,
                world,
            )
            torch.manual_seed(reseed)
