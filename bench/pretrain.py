"""The method-agnostic pretraining loop: optimiser, schedule, AMP, checkpoints, resume.

One readable loop (the DINO / nanoGPT habit): a precomputed per-step learning-rate schedule,
a guard that stops on a non-finite loss, the run's settings inside every checkpoint, one JSON
line of metrics per epoch in log.jsonl. A checkpoint is written atomically after every epoch;
a rerun of the same job resumes from it. Each epoch reseeds torch's generator from
(seed, epoch), so a resumed run computes the same weights as an uninterrupted one on CPU.

The same loop runs data-parallel (``bench.distributed``): each process trains on its
contiguous shard of every global batch, gradients are averaged after the backward pass,
the loss, the method's scalars and "a stop signal arrived" are averaged in one all-reduce
per step (so every process stops at the same step), and only rank 0 writes files.
"""

from __future__ import annotations

import io
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from bench import checkpoint, distributed
from bench.config import ConfigError, PretrainConfig
from bench.datasets import DATASETS
from bench.methods import METHODS, PretrainingMethod, StepContext
from bench.preemption import Preempted, StopSignals
from bench.store import (
    BACKBONE,
    CHECKPOINT,
    DECODER,
    append_log,
    atomic_write_bytes,
    now_iso,
    provenance,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of wasting the budget."""


# ----------------------------------------------------------------------------------------
# Devices and numerics
# ----------------------------------------------------------------------------------------
def resolve_device() -> torch.device:
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


# ----------------------------------------------------------------------------------------
# Optimiser and schedule
# ----------------------------------------------------------------------------------------
def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay (and, with LARS, no adaptation) on BN and bias parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    groups: list[dict[str, Any]], name: str, lr: float, momentum: float, lars_trust: float = 0.001
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        # timm's LARS adapts only groups with weight decay, like VISSL's LARC exclusions.
        return timm.optim.Lars(groups, lr=lr, momentum=momentum, trust_coeff=lars_trust)
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, adamw, sgd, lars")


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
        parameter_groups(model, cfg.weight_decay),
        cfg.optimizer,
        cfg.lr,
        cfg.momentum,
        cfg.lars_trust,
    )


def lr_schedule(cfg: PretrainConfig, total_steps: int, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rates of ``cfg.schedule``."""
    if cfg.schedule == "step":
        epochs = np.arange(total_steps) // steps_per_epoch
        return peak_lr(cfg) * cfg.step_gamma ** (epochs // cfg.step_epochs)
    return warmup_cosine_schedule(cfg, total_steps)


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


# ----------------------------------------------------------------------------------------
# The loop
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


def raise_preempted(stop: StopSignals, where: str) -> None:
    """Stop after checkpointing: every process raises, whichever received the signal."""
    name = stop.requested or "a stop signal to another process"
    raise Preempted(f"{name} received; checkpoint written {where}", stop.signum)


def build_method(job, in_channels: int, band_mean, band_std) -> PretrainingMethod:
    cls = METHODS.get(job.method)
    return cls(job.method_params, job.pretrain, in_channels, band_mean, band_std)


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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


def run_pretraining(job, run_dir: Path, data_root: Path | str | None = None) -> dict[str, Any]:
    """Pretrain ``job.method``; write checkpoint.pt each epoch, and at the end backbone.pt
    (plus decoder.pt for methods that pretrain smp's ASPP/decoder).

    Inside a process group (:mod:`bench.distributed`) every process trains on its shard of
    each global batch, gradients are averaged, and only rank 0 writes files."""
    cfg: PretrainConfig = job.pretrain
    place = distributed.topology()
    world, main = place.world_size, place.is_main
    device = place.device() if world > 1 else resolve_device()
    local_batch_size(cfg, world)
    dataset = DATASETS.get(job.dataset)(job.dataset_params, job.data, data_root)
    train = dataset.load_split("train")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"pretrain.batch_size={cfg.batch_size} exceeds the {len(train)} training patches"
        )
    total_steps = cfg.epochs * steps_per_epoch
    schedule = lr_schedule(cfg, total_steps, steps_per_epoch)

    torch.manual_seed(seed_for(job.seed, 0xB0))
    mean, std = dataset.band_stats()
    method = build_method(job, dataset.in_channels, mean, std).to(device)
    if world > 1:
        if type(method).sync_batchnorm:  # the paper's cross-device BN
            method = distributed.convert_batchnorm(method, device)
        distributed.broadcast_state(method)  # identical replicas, whatever the seeding did
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if cfg.compile:
        compile_networks(method)
    optimizer = optimizer_for(method, cfg)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    )

    checkpoint_path = run_dir / CHECKPOINT
    start_epoch, start_batch = 0, 0
    state = checkpoint.load(checkpoint_path, job.job_id)
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
        log.info(
            "%s: resumed from checkpoint at epoch %d/%d, batch %d/%d",
            job.job_id,
            start_epoch + 1,
            cfg.epochs,
            start_batch,
            steps_per_epoch,
        )

    def save_checkpoint(epoch: int, batch: int, totals: dict[str, Any]) -> None:
        """Everything needed to continue at ``batch`` of ``epoch`` exactly (rank 0 writes;
        every process's random state is kept, so a resume with as many processes is exact).
        """
        rng = checkpoint.rng_state()
        rng_ranks = distributed.gather_objects(rng) if world > 1 else None
        if not main:
            distributed.barrier()  # wait for rank 0's write
            return
        state = {
            "job_id": job.job_id,
            "epoch": epoch,
            "batch": batch,
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "totals": totals,
        }
        if rng_ranks is not None:
            state["rng_ranks"] = rng_ranks
        checkpoint.save(checkpoint_path, state)
        distributed.barrier()  # nobody stops (or is killed) before the checkpoint is written

    def restore_rng(epoch: int, batch: int) -> None:
        ranks = state.get("rng_ranks")
        if world == 1 and ranks is None:
            checkpoint.set_rng_state(state["rng"])
        elif ranks is not None and len(ranks) == world:
            checkpoint.set_rng_state(ranks[place.rank])
        else:  # written by another number of processes: same data, fresh view randomness
            log.warning(
                "%s: the checkpoint was written by %d process(es), this run has %d; the "
                "data order continues exactly, the augmentations are reseeded",
                job.job_id,
                len(ranks) if ranks else 1,
                world,
            )
            torch.manual_seed(seed_for(epoch_seed(job.seed, epoch, place.rank), batch))

    started = time.perf_counter()
    images_seen, loss_value = 0, math.nan
    with StopSignals() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            torch.manual_seed(epoch_seed(job.seed, epoch, place.rank))
            loader = shuffled_batches(
                train,
                cfg.batch_size,
                torch.Generator().manual_seed(seed_for(job.seed, epoch, 1)),
                pin_memory=device.type == "cuda",
                rank=place.rank,
                world_size=world,
            )
            epoch_start = time.perf_counter()
            skip = start_batch if epoch == start_epoch else 0
            # loss sum and method scalars of this epoch (carried over by a mid-epoch resume)
            totals = state["totals"] if skip else {"loss": 0.0, "sums": {}, "counts": {}}
            extra_means = {k: v / totals["counts"][k] for k, v in totals["sums"].items()}
            for batch_index, (images, _) in enumerate(loader):
                if batch_index < skip:
                    continue  # the same seeded order: these batches were trained on already
                if batch_index == skip and skip:
                    restore_rng(epoch, batch_index)
                step = epoch * steps_per_epoch + batch_index
                for group in optimizer.param_groups:
                    group["lr"] = float(schedule[step])
                images = images.to(device, non_blocking=True).float().div_(255.0)
                ctx = StepContext(step=step, total_steps=total_steps, epoch=epoch)
                with autocast_for(device, cfg.amp):
                    loss, extras = method.training_step(images, ctx)
                # one all-reduce: the loss and scalars over all processes, and whether any
                # process was told to stop (all must stop at the same step)
                names = sorted(extras)
                local = [float(loss.detach()), float(bool(stop.requested))]
                means = distributed.mean_over_processes(local + [extras[k] for k in names], device)
                loss_value, stopping = means[0], means[1] > 0
                extras = dict(zip(names, means[2:], strict=True))
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"non-finite loss {loss_value} at epoch {epoch} step {step}; "
                        f"lower pretrain.lr (now {schedule[step]:.3g}) or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(method.parameters())
                scaler.step(optimizer)
                scaler.update()
                method.after_optimizer_step(ctx)
                totals["loss"] += loss_value
                images_seen += images.shape[0] * world
                if extras and main:  # method-specific scalars: one JSON line per step
                    append_log(
                        run_dir,
                        {
                            "kind": "step",
                            "epoch": epoch + 1,
                            "step": step + 1,
                            "loss": loss_value,
                            **extras,
                        },
                    )
                if extras:  # and their epoch means
                    for key, value in extras.items():
                        totals["sums"][key] = totals["sums"].get(key, 0.0) + value
                        totals["counts"][key] = totals["counts"].get(key, 0) + 1
                    extra_means = {k: v / totals["counts"][k] for k, v in totals["sums"].items()}
                if main and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
                    rate = images_seen / max(time.perf_counter() - started, 1e-9)
                    extra = "".join(f" | {k} {v:.3g}" for k, v in extra_means.items())
                    log.info(
                        "  pretrain %s | epoch %d/%d step %d/%d | loss %.4f | lr %.3g | "
                        "%.1f img/s%s",
                        job.method,
                        epoch + 1,
                        cfg.epochs,
                        step + 1,
                        total_steps,
                        loss_value,
                        schedule[step],
                        rate,
                        extra,
                    )
                if stopping:
                    save_checkpoint(epoch, batch_index + 1, totals)
                    raise_preempted(stop, f"at epoch {epoch + 1}, step {step + 1}")
            stopping = distributed.mean_over_processes([float(bool(stop.requested))], device)
            stopping = stopping[0] > 0
            if main:
                append_log(
                    run_dir,
                    {
                        "kind": "epoch",
                        "epoch": epoch + 1,
                        "step": (epoch + 1) * steps_per_epoch,
                        "loss": totals["loss"] / steps_per_epoch,
                        "lr": float(schedule[(epoch + 1) * steps_per_epoch - 1]),
                        "epoch_seconds": time.perf_counter() - epoch_start,
                        **{f"mean_{k}": v for k, v in extra_means.items()},
                    },
                )
            if epoch + 1 < cfg.epochs or stopping:  # after the last epoch the weights follow
                save_checkpoint(epoch + 1, 0, {})
            if stopping:
                raise_preempted(stop, f"after epoch {epoch + 1}")

    train_seconds = time.perf_counter() - started
    if main:
        decoder = method.decoder_state_dict()
        if decoder is not None:  # before backbone.pt, whose presence marks the weights done
            save_weights(run_dir / DECODER, decoder)
        save_weights(run_dir / BACKBONE, method.backbone_state_dict())
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
        "steps": total_steps,
        "resumed_from_epoch": start_epoch,
        "resumed_from_batch": start_batch,
        "final_loss": loss_value,
        "transfers": type(method).transfers,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if images_seen else None,
        "device": str(device),
        "world_size": world,
        "lr_peak": peak_lr(cfg),
        "finished_at": now_iso(),
        **provenance(),
    }
