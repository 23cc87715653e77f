"""The method-agnostic pretraining loop: what is specific to pretraining on top of
:mod:`bench.engine` (which owns the step, AMP, checkpoints, resume and the stop signals).

Each epoch draws the training images in a seeded order and reseeds torch's generator from
(seed, epoch), so a resumed run computes the same weights as an uninterrupted one on CPU; a
checkpoint is written when ``pretrain.checkpoint_minutes`` have passed since the last one (at
an epoch's end, or mid-epoch when an epoch is longer) and when a stop signal arrives; one JSON
line of metrics per epoch goes to log.jsonl, plus one per step for methods that report their
own scalars (FALSE's selected pairs, GraSS's crop area, ...).

The same loop runs data-parallel (``bench.distributed``): each process trains on its
contiguous shard of every global batch, the engine averages gradients and the step's numbers
over the processes, and only rank 0 writes files.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from bench import distributed
from bench.collapse import CollapseError, collapsed, fail_fast_reason
from bench.config import ConfigError, PretrainConfig
from bench.datasets import create_dataset
from bench.engine import (
    NonFiniteLossError,
    StepOutcome,
    Trainer,
    build_optimizer,
    parameter_groups,
    place_on,
    resolve_device,
    seed_for,
)
from bench.health import HealthBatch, health_pass
from bench.methods import PretrainingMethod, StepContext, create_method
from bench.preemption import StopSignals
from bench.store import (
    BACKBONE,
    CHECKPOINT,
    DECODER,
    append_log,
    atomic_write_bytes,
    now_iso,
    provenance,
)
from bench.tracking import open_tracker

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Optimiser and schedule
# ----------------------------------------------------------------------------------------
def peak_lr(cfg: PretrainConfig) -> float:
    """``cfg.lr`` scaled to the global batch by ``cfg.lr_scaling`` (the LR of the papers'
    "lr x batch / 256" rules)."""
    ratio = cfg.batch_size / cfg.lr_base_batch
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    return cfg.lr


def optimizer_for(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimiser over ``model``'s parameters (its LR is set per step from the
    schedule)."""
    return build_optimizer(
        parameter_groups(model, cfg.weight_decay, cfg.decay_norm, cfg.decay_bias),
        cfg.optimizer,
        cfg.lr,
        cfg.momentum,
        cfg.lars_trust,
        betas=cfg.betas,
        lars_adapt=cfg.lars_adapt,
    )


def lr_schedule(cfg: PretrainConfig, total_steps: int, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rates of ``cfg.schedule`` over ``total_steps``."""
    epochs = np.arange(total_steps) // steps_per_epoch
    if cfg.schedule == "step":
        counted = np.maximum(epochs - cfg.step_delay_epochs, 0)
        return peak_lr(cfg) * cfg.step_gamma ** (counted // cfg.step_epochs)
    if cfg.schedule == "epoch_cosine":
        return epoch_cosine_schedule(cfg, epochs, max(1, total_steps // steps_per_epoch))
    if cfg.schedule == "warmup_cosine_restart":
        return warmup_cosine_restart_schedule(cfg, total_steps)
    return warmup_cosine_schedule(cfg, total_steps)


def phase_schedule(cfg: PretrainConfig, phases: tuple[int, ...], steps_per_epoch: int):
    """The schedule of a run made of ``phases`` (epochs each): every phase runs the whole
    schedule over its own steps, as separate runs would (GraSS's ID warm-up, then its GS
    training, :meth:`bench.methods.PretrainingMethod.phase_epochs`)."""
    return np.concatenate(
        [lr_schedule(cfg, epochs * steps_per_epoch, steps_per_epoch) for epochs in phases]
    )


def phase_starts(phases: tuple[int, ...]) -> list[int]:
    """The first epoch of each phase."""
    return [sum(phases[:i]) for i in range(len(phases))]


def warmup_cosine_schedule(cfg: PretrainConfig, total_steps: int) -> np.ndarray:
    """Per-step LR: linear warm-up from ``lr * warmup_start_factor`` to ``lr`` over the first
    ``warmup_fraction`` of steps, then cosine to ``lr * final_lr_factor`` (VISSL SimCLR);
    ``lr`` is :func:`peak_lr`."""
    warmup = int(round(cfg.warmup_fraction * total_steps))
    peak = peak_lr(cfg)
    start, final = peak * cfg.warmup_start_factor, peak * cfg.final_lr_factor
    ramp = np.linspace(start, peak, warmup, endpoint=False) if warmup else np.empty(0)
    rest = total_steps - warmup
    t = np.arange(rest) / max(1, rest - 1)
    cosine = final + 0.5 * (peak - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([ramp, cosine])


def epoch_cosine_schedule(cfg: PretrainConfig, epochs: np.ndarray, total_epochs: int):
    """``final + (peak - final) (1 + cos(pi e / E)) / 2`` in epoch ``e`` of ``E``, constant
    within an epoch: torch's ``CosineAnnealingLR(T_max=E, eta_min=final)`` stepped after
    every epoch (GLCNet, T-SS-GLCNet/main_ss.py:212 and 225)."""
    peak = peak_lr(cfg)
    final = peak * cfg.final_lr_factor
    return final + 0.5 * (peak - final) * (1 + np.cos(np.pi * epochs / total_epochs))


# VISSL's composite scheduler moves to its next part when ``where + 1e-6`` passes a part's end
# (classy_vision/optim/param_scheduler/composite_scheduler.py, ``__call__``).
_WHERE_EPSILON = 1e-6


def warmup_cosine_restart_schedule(cfg: PretrainConfig, total_steps: int) -> np.ndarray:
    """FALSE's and GraSS's released LR (configs/config/pretrain/FALSE/false_1gpu_resnet.yaml
    lines 86-105): VISSL's composite of a linear warm-up from ``lr * warmup_start_factor`` to
    ``lr`` over ``warmup_fraction`` of training and ``cosine_warm_restart`` (wave ``full``,
    ``is_adaptive``) from ``lr`` to ``lr * final_lr_factor`` over the rest, each on its own
    rescaled time, evaluated at ``where = step / total_steps`` before every step."""
    peak = peak_lr(cfg)
    start, final = peak * cfg.warmup_start_factor, peak * cfg.final_lr_factor
    where = np.arange(total_steps) / total_steps
    warm = cfg.warmup_fraction
    in_warmup = where + _WHERE_EPSILON <= warm
    lrs = np.empty(total_steps)
    lrs[in_warmup] = start + (peak - start) * where[in_warmup] / max(warm, 1e-12)
    rest = (where[~in_warmup] - warm) / (1 - warm)
    lrs[~in_warmup] = cosine_warm_restart(rest, peak, final, cfg.restart_interval)
    return lrs


def cosine_warm_restart(where: np.ndarray, start: float, end: float, interval: float):
    """VISSL's ``cosine_warm_restart`` with ``wave_type: full`` and ``is_adaptive: True``
    (vissl/optimizers/param_scheduler/cosine_warm_restart_scheduler.py, lines 88-126 and
    157-170): restarts at 0 and every ``2 * interval`` after ``interval``; the maximum of the
    wave from restart ``r`` is ``end + (start - end) (1 + cos(pi (interval + r))) / 2``, and
    the value is ``end + (max - end) (1 + cos(pi where / interval)) / 2``. So the first wave
    peaks below ``start`` (3.6 for 4.8 at interval 0.334), falls to ``end`` at ``interval``,
    climbs back to its second maximum at ``2 * interval`` and falls again."""
    restarts = np.concatenate([[0.0], np.arange(interval, 1.0, 2 * interval)])
    maxima = end + 0.5 * (start - end) * (1 + np.cos(np.pi * (interval + restarts)))
    index = np.maximum(np.searchsorted(restarts, where, side="right") - 1, 0)
    return end + 0.5 * (maxima[index] - end) * (1 + np.cos(np.pi * where / interval))


# ----------------------------------------------------------------------------------------
# Data, seeds, weights
# ----------------------------------------------------------------------------------------
def compile_networks(module: torch.nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` every child network of ``module`` in place (``nn.Module.compile``):
    the same parameters, buffers and state-dict keys, so checkpoints, EMA updates and the
    saved backbone are unaffected; only the forward passes run compiled."""
    for child in module.children():
        if any(True for _ in child.parameters()):
            child.compile(backend=backend)


def shuffled_batches(
    patches,
    batch_size: int,
    generator: torch.Generator,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Shuffled full batches, read with one indexed access per batch (a memory-mapped
    prepared dataset reads a batch ~12x faster than item by item, see
    benchmarks/loader_throughput.py). The order is exactly that of
    ``DataLoader(patches, batch_size, shuffle=True, drop_last=True, generator=generator)``;
    with ``world_size`` processes each reads its own contiguous shard of every such global
    batch (:class:`bench.distributed.ShardedBatches`)."""
    batches = BatchSampler(RandomSampler(patches, generator=generator), batch_size, True)
    if world_size > 1:
        batches = distributed.ShardedBatches(batches, rank, world_size)
    return DataLoader(
        patches, sampler=batches, batch_size=None, generator=generator, pin_memory=pin_memory
    )


def epoch_batches(train, cfg: PretrainConfig, seed: int, epoch: int, device, place):
    """This process's batches of ``epoch`` (the seeded global order of every world size),
    after reseeding torch's generator for the epoch's augmentations."""
    torch.manual_seed(epoch_seed(seed, epoch, place.rank))
    return shuffled_batches(
        train,
        cfg.batch_size,
        torch.Generator().manual_seed(seed_for(seed, epoch, 1)),
        pin_memory=device.type == "cuda",
        rank=place.rank,
        world_size=place.world_size,
    )


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch's seed for an epoch's augmentations: a single process's for rank 0, a
    different stream for each other process (its images get their own random views)."""
    return seed_for(seed, epoch) if rank == 0 else seed_for(seed, epoch, 0xD15, rank)


def local_batch_size(cfg: PretrainConfig, world_size: int) -> int:
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"pretrain.batch_size={cfg.batch_size} (the global batch) does not split evenly "
            f"over {world_size} processes (pretrain.gpus x pretrain.nodes)"
        )
    return cfg.batch_size // world_size


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------
# Setting up
# ----------------------------------------------------------------------------------------
def pretraining_model(
    job, dataset, device: torch.device, world: int, train_size: int
) -> PretrainingMethod:
    """``job``'s method, seeded from the job's seed, on ``device``; on several processes
    with the paper's cross-device BN where the method asks for it, and rank 0's weights."""
    torch.manual_seed(seed_for(job.seed, 0xB0))
    mean, std = dataset.band_stats()
    method = create_method(
        job.method, job.method_params, job.pretrain, dataset.in_channels, mean, std, train_size
    ).to(device)
    if world > 1:
        if type(method).sync_batchnorm:
            method = distributed.convert_batchnorm(method, device)
        distributed.broadcast_state(method)  # identical replicas, whatever the seeding did
    method = place_on(method, device)
    if job.pretrain.compile:
        compile_networks(method)
    return method


def pretraining_trainer(
    job, method, device, schedule, run_dir: Path | None, stop: StopSignals | None = None
) -> Trainer:
    """The engine's trainer of ``method`` (its optimiser, ``schedule``, checkpoint in
    ``run_dir``); ``stop``: what stops it (by default SIGTERM/SIGUSR2)."""
    return Trainer(
        job_id=job.job_id,
        model=method,
        optimizer=optimizer_for(method, job.pretrain),
        schedule=schedule,
        device=device,
        amp=job.pretrain.amp,
        checkpoint_path=run_dir / CHECKPOINT if run_dir is not None else None,
        what="pretraining",
        stop=stop or StopSignals(),
        checkpoint_seconds=60 * job.pretrain.checkpoint_minutes,
    )


def method_step(trainer: Trainer, method, images: torch.Tensor, ctx: StepContext) -> StepOutcome:
    """One pretraining step on a batch of uint8 ``images``: as [0, 1] floats on the
    trainer's device, the method's loss through the engine's step, then the method's own
    update (EMA, queues)."""
    images = images.to(trainer.device, non_blocking=True).float().div_(255.0)
    outcome = trainer.step(ctx.step, lambda: method.training_step(images, ctx))
    method.after_optimizer_step(ctx)
    return outcome


# ----------------------------------------------------------------------------------------
# What an epoch counts and logs
# ----------------------------------------------------------------------------------------
@dataclass
class EpochTotals:
    """The loss sum and the method's scalars of the epoch so far (kept in checkpoints, so
    a mid-epoch resume logs the same epoch means)."""

    loss: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: StepOutcome) -> None:
        self.loss += outcome.loss
        for key, value in outcome.extras.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "sums": dict(self.sums), "counts": dict(self.counts)}


class PretrainLog:
    """Progress lines every ``log_every`` steps, log.jsonl, and the live curves of
    :mod:`bench.tracking` (rank 0 only); ``first_step`` is the first step this process logs
    (1-based: after a resume, the step after the checkpoint). Close it at the end."""

    def __init__(
        self, job, run_dir: Path, total_steps: int, steps_per_epoch: int, first_step: int = 1
    ) -> None:
        self.job, self.run_dir = job, run_dir
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.main = distributed.topology().is_main
        self.started = time.perf_counter()
        self.images_seen = 0
        self.last_loss = math.nan
        self.last_health: dict[str, Any] | None = None
        self.tracker = open_tracker(run_dir, job, job.pretrain, first_step)

    def close(self) -> None:
        self.tracker.close()

    def step(self, epoch: int, step: int, outcome: StepOutcome, totals: EpochTotals) -> None:
        self.last_loss = outcome.loss
        if not self.main:
            return
        scalars = {"loss": outcome.loss, "lr": outcome.lr, **outcome.extras}
        self.tracker.scalars({f"train/{k}": v for k, v in scalars.items()}, step + 1)
        if outcome.extras:  # method-specific scalars: one JSON line per step
            entry = {"kind": "step", "epoch": epoch + 1, "step": step + 1, "loss": outcome.loss}
            append_log(self.run_dir, {**entry, **outcome.extras})
        cfg = self.job.pretrain
        if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
            rate = self.images_seen / max(time.perf_counter() - self.started, 1e-9)
            extra = "".join(f" | {k} {v:.3g}" for k, v in totals.means().items())
            log.info(
                "  pretrain %s | epoch %d/%d step %d/%d | loss %.4f | lr %.3g | %.1f img/s%s",
                self.job.method,
                epoch + 1,
                cfg.epochs,
                step + 1,
                self.total_steps,
                outcome.loss,
                outcome.lr,
                rate,
                extra,
            )

    def epoch(self, epoch: int, totals: EpochTotals, lr: float, seconds: float) -> None:
        if not self.main:
            return
        step, loss = (epoch + 1) * self.steps_per_epoch, totals.loss / self.steps_per_epoch
        means = totals.means()
        append_log(
            self.run_dir,
            {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": step,
                "loss": loss,
                "lr": lr,
                "epoch_seconds": seconds,
                **{f"mean_{k}": v for k, v in means.items()},
            },
        )
        scalars = {"loss": loss, "lr": lr, "seconds": seconds, **means}
        self.tracker.scalars({f"epoch/{k}": v for k, v in scalars.items()}, step)
        self.tracker.flush()

    def health(self, epoch: int, health: dict[str, Any]) -> None:
        """The epoch's health pass (:mod:`bench.health`): a log.jsonl line and ``health/*``
        curves at the epoch's last step."""
        self.last_health = health
        if not self.main:
            return
        step = (epoch + 1) * self.steps_per_epoch
        append_log(self.run_dir, {"kind": "health", "epoch": epoch + 1, "step": step, **health})
        numbers = {k: float(v) for k, v in health.items() if isinstance(v, (int, float))}
        self.tracker.scalars({f"health/{k}": v for k, v in numbers.items()}, step)
        self.tracker.flush()


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
@dataclass
class PretrainSetup:
    """Everything a pretraining needs, built from its job by :func:`prepare_pretraining`:
    the job itself, ``bench perf``'s bare loop and ``check-method`` all start from it, so
    they run the same computation."""

    dataset: Any
    train: Any  # the training split's patches
    steps_per_epoch: int
    method: PretrainingMethod
    trainer: Trainer


def prepare_pretraining(
    job,
    data_root: Path | str | None,
    device: torch.device,
    world_size: int = 1,
    run_dir: Path | None = None,
    stop: StopSignals | None = None,
) -> PretrainSetup:
    """``job``'s data, seeded model on ``device`` (for ``world_size`` processes), schedule
    (every phase of the method) and trainer (checkpointing into ``run_dir`` when given)."""
    cfg: PretrainConfig = job.pretrain
    local_batch_size(cfg, world_size)
    dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
    train = dataset.load_split("train")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"pretrain.batch_size={cfg.batch_size} exceeds the {len(train)} training patches"
        )
    method = pretraining_model(job, dataset, device, world_size, len(train))
    schedule = phase_schedule(cfg, method.phase_epochs(), steps_per_epoch)
    trainer = pretraining_trainer(job, method, device, schedule, run_dir, stop)
    return PretrainSetup(dataset, train, steps_per_epoch, method, trainer)


def run_pretraining(
    job,
    run_dir: Path,
    data_root: Path | str | None = None,
    stop: StopSignals | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Pretrain ``job.method`` on ``device`` (default: this process's GPU, else the CPU);
    write checkpoint.pt as ``pretrain.checkpoint_minutes`` says, and at the end backbone.pt
    (plus decoder.pt for methods that pretrain smp's ASPP/decoder). ``stop`` is what makes
    it checkpoint and stop
    (:class:`Preempted`) mid-run, by default SIGTERM/SIGUSR2.

    Inside a process group (:mod:`bench.distributed`) every process trains on its shard of
    each global batch, gradients are averaged, and only rank 0 writes files."""
    cfg: PretrainConfig = job.pretrain
    place = distributed.topology()
    if device is None:
        device = place.device() if place.world_size > 1 else resolve_device()
    setup = prepare_pretraining(job, data_root, device, place.world_size, run_dir, stop)
    train, method, trainer = setup.train, setup.method, setup.trainer
    steps_per_epoch = setup.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    resumed = trainer.load() or {"epoch": 0, "batch": 0}
    start = (int(resumed["epoch"]), int(resumed.get("batch", 0)))
    if start != (0, 0):
        log.info(
            "%s: resumed from checkpoint at epoch %d/%d, batch %d/%d",
            job.job_id,
            start[0] + 1,
            cfg.epochs,
            start[1],
            steps_per_epoch,
        )
    first_step = start[0] * steps_per_epoch + start[1] + 1
    progress = PretrainLog(job, run_dir, total_steps, steps_per_epoch, first_step)
    watch = HealthWatch.of(job, setup, resumed.get("collapsed_epochs", []))
    try:
        with trainer.stop:
            for epoch in range(start[0], cfg.epochs):
                resume = resumed if epoch == start[0] and start[1] else None
                train_epoch(job, trainer, train, epoch, progress, resume, watch)
    finally:
        progress.close()
    train_seconds = time.perf_counter() - progress.started
    if place.is_main:
        decoder = method.decoder_state_dict()
        if decoder is not None:  # before backbone.pt, whose presence marks the weights done
            save_weights(run_dir / DECODER, decoder)
        save_weights(run_dir / BACKBONE, method.backbone_state_dict())
    record = pretrain_record(job, progress, start, method, train_seconds, device)
    return {**record, "health": progress.last_health, "collapsed_epochs": watch.collapsed_epochs}


@dataclass
class HealthWatch:
    """A run's health pass (:mod:`bench.health`): its fixed batch (None: no pass) and the
    epochs (1-based) found collapsed so far, kept in checkpoints so a resumed run counts
    on."""

    batch: HealthBatch | None
    collapsed_epochs: list[int]

    @classmethod
    def of(cls, job, setup: PretrainSetup, collapsed_epochs) -> HealthWatch:
        count = job.pretrain.health_images
        dataset = setup.dataset
        batch = None
        if count:
            batch = HealthBatch.draw(
                setup.train, count, job.seed, dataset.num_classes, dataset.ignore_index
            )
        return cls(batch, list(collapsed_epochs))

    def after_epoch(self, job, method, device, epoch: int, progress: PretrainLog) -> str | None:
        """The pass at the end of ``epoch`` (0-based), logged; why the run must stop under
        ``pretrain.fail_fast_epochs``, or None."""
        if self.batch is None:
            return None
        health = health_pass(method, self.batch, device)
        health["collapsed"] = collapsed(health, job.pretrain.collapse_std)
        if health["collapsed"]:
            self.collapsed_epochs.append(epoch + 1)
        progress.health(epoch, health)
        return fail_fast_reason(health, self.collapsed_epochs, epoch + 1, job.pretrain)


def train_epoch(job, trainer: Trainer, train, epoch: int, progress, resume, watch) -> None:
    """One epoch (from ``resume``'s batch, with its random state and totals, after a
    mid-epoch stop), then its log line, health pass (:class:`HealthWatch`, which may stop a
    collapsed run) and checkpoint; a stop signal ends it early."""
    cfg, method, place = job.pretrain, trainer.model, trainer.place
    steps_per_epoch, total_steps = progress.steps_per_epoch, progress.total_steps
    method.train()
    loader = epoch_batches(train, cfg, job.seed, epoch, trainer.device, place)
    skip = resume["batch"] if resume else 0
    totals = EpochTotals(**resume["totals"]) if resume else EpochTotals()
    if skip == 0 and epoch in phase_starts(method.phase_epochs())[1:]:
        trainer.optimizer.state.clear()  # a new phase starts like a new run's optimiser
    if resume:
        reseed = seed_for(epoch_seed(job.seed, epoch, place.rank), skip)
        trainer.restore_rng(resume, reseed)
    epoch_start = time.perf_counter()

    def train_step(images: torch.Tensor, step: int) -> StepOutcome:
        ctx = StepContext(step=step, total_steps=total_steps, epoch=epoch)
        try:
            outcome = method_step(trainer, method, images, ctx)
        except NonFiniteLossError as error:  # the engine's guard; say the epoch too
            raise NonFiniteLossError(f"{error} (epoch {epoch + 1} of {cfg.epochs})") from None
        totals.add(outcome)
        progress.images_seen += images.shape[0] * place.world_size
        progress.step(epoch, step, outcome, totals)
        return outcome

    def position(step: int) -> tuple[dict[str, Any], str]:
        batch = step - epoch * steps_per_epoch + 1
        fields = {"epoch": epoch, "batch": batch, "totals": totals.as_dict()}
        fields["collapsed_epochs"] = list(watch.collapsed_epochs)
        return fields, f"at epoch {epoch + 1}, step {step + 1}"

    batches = (
        (epoch * steps_per_epoch + index, images)
        for index, (images, _) in enumerate(loader)
        if index >= skip  # the same seeded order: these batches were trained on already
    )
    trainer.run(batches, train_step, position, last_checkpoint=total_steps - 1)
    stopping, due = trainer.pending_everywhere()
    lr = float(trainer.schedule[(epoch + 1) * steps_per_epoch - 1])
    progress.epoch(epoch, totals, lr, time.perf_counter() - epoch_start)
    reason = watch.after_epoch(job, method, trainer.device, epoch, progress)
    if reason is not None:
        raise CollapseError(reason)
    every_epoch = not cfg.checkpoint_minutes
    if (epoch + 1 < cfg.epochs and (due or every_epoch)) or stopping:  # after the last
        done = {"epoch": epoch + 1, "batch": 0, "totals": {}}  # epoch the weights follow
        trainer.save({**done, "collapsed_epochs": list(watch.collapsed_epochs)})
    if stopping:
        trainer.preempted(f"after epoch {epoch + 1}")


def pretrain_record(job, progress: PretrainLog, start, method, seconds, device) -> dict:
    transfers, resolved = type(method).transfers, method.resolved_settings()
    cfg = job.pretrain
    return {
        "status": "ok",
        "kind": "pretrain",
        "job_id": job.job_id,
        "method": job.method,
        "dataset": job.dataset,
        "seed": job.seed,
        "preset": job.preset,
        "backbone": cfg.backbone,
        "epochs": cfg.epochs,
        "steps": progress.total_steps,
        "resumed_from_epoch": start[0],
        "resumed_from_batch": start[1],
        "final_loss": progress.last_loss,
        "transfers": transfers,
        "resolved_settings": resolved,
        "train_seconds": seconds,
        "images_per_second": progress.images_seen / seconds if progress.images_seen else None,
        "device": str(device),
        "world_size": distributed.topology().world_size,
        "lr_peak": peak_lr(cfg),
        "finished_at": now_iso(),
        **provenance(),
    }
