"""Fine-tuning of smp DeepLabV3+ on a labelled fraction, and evaluation on the test split.

The encoder starts from the method's backbone (loaded strictly) or, for baselines, from what
the baseline says. ``finetune.load`` says how much more of a pretrained DeepLabV3+ to start
from, for methods that pretrain it (GLCNet): ``backbone``, ``backbone+aspp`` (GLCNet's
protocol, the default) or ``all`` (the whole decoder); a method that pretrains only a backbone
loads only that, and the record says what was loaded. The class head always starts fresh.

Protocols: ``full`` fine-tunes everything (GLCNet's protocol); ``frozen`` keeps the encoder
fixed with BN in eval mode (FALSE's MMSegmentation protocol). The model is trained for a fixed
number of steps on batches drawn from seeded permutations of the labelled patches, with
random flips and 90-degree rotations.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import checkpoint
from bench.config import LOAD_MODES, FinetuneConfig
from bench.datasets import DATASETS, PatchSet
from bench.datasets.base import check_fraction_usable
from bench.datasets.subsets import labelled_indices, write_subset
from bench.methods import METHODS
from bench.metrics import METRIC_NOTE, ConfusionMatrix
from bench.models import build_segmentation_model, load_backbone_strict, load_strict
from bench.preemption import StopSignals
from bench.pretrain import (
    NonFiniteLossError,
    autocast_for,
    build_optimizer,
    parameter_groups,
    resolve_device,
    seed_for,
)
from bench.store import (
    BACKBONE,
    CHECKPOINT,
    DECODER,
    RunStore,
    append_log,
    now_iso,
    provenance,
)

log = logging.getLogger(__name__)


def lr_at(cfg: FinetuneConfig, step: int) -> float:
    """Learning rate of ``step`` (0-based) under the configured schedule."""
    t = step / cfg.steps
    if cfg.schedule == "poly":
        return cfg.lr * (1 - t) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``[steps, batch_size]`` indices from consecutive seeded permutations of ``range(n)``."""
    rng = np.random.default_rng([seed, 0xF1])
    needed = steps * batch_size
    stream = np.concatenate([rng.permutation(n) for _ in range(-(-needed // n))])
    return stream[:needed].reshape(steps, batch_size)


def random_dihedral(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip and 90-degree rotation for each image and its mask."""
    out_images, out_masks = [], []
    for image, mask in zip(images, masks, strict=True):
        k = int(torch.randint(4, ()))
        flip = bool(torch.randint(2, ()))
        image, mask = torch.rot90(image, k, (1, 2)), torch.rot90(mask, k, (0, 1))
        if flip:
            image, mask = image.flip(2), mask.flip(1)
        out_images.append(image)
        out_masks.append(mask)
    return torch.stack(out_images), torch.stack(out_masks)


def initial_backbone(
    job, store: RunStore, in_channels: int
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The encoder weights the fine-tuning starts from (None: random) and their source."""
    if job.pretrain_job is not None:
        path = store.run_dir(job.pretrain_job.job_id) / BACKBONE
        weights = read_weights(
            path,
            f"pretrained backbone {path} is missing: pretraining job "
            f"{job.pretrain_job.job_id} has not finished",
        )
        return weights, f"pretrained backbone of {job.pretrain_job.job_id}"
    method = METHODS.get(job.method)
    return method.initial_backbone(job.method_params, job.backbone, in_channels)


def read_weights(path, missing: str) -> dict[str, torch.Tensor]:
    """A state dict saved by pretraining, read safely; ``missing`` says what to do if the
    file is not there."""
    if not path.exists():
        raise FileNotFoundError(missing)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_mode_for(job) -> str:
    """``finetune.load`` limited to what the job's method pretrains (its ``transfers``)."""
    provided = METHODS.get(job.method).transfers if job.pretrain_job is not None else "backbone"
    return LOAD_MODES[min(LOAD_MODES.index(job.finetune.load), LOAD_MODES.index(provided))]


def load_pretrained_decoder(model, job, store: RunStore, mode: str) -> None:
    """Load the pretraining run's ASPP (``backbone+aspp``) or whole decoder (``all``) into
    ``model.decoder``, strictly; nothing for ``backbone``."""
    if mode == "backbone":
        return
    path = store.run_dir(job.pretrain_job.job_id) / DECODER
    weights = read_weights(
        path,
        f"finetune.load={mode} needs the pretrained decoder {path}, which is missing: "
        f"rerun pretraining job {job.pretrain_job.job_id} or use finetune.load=backbone",
    )
    if mode == "all":
        load_strict(model.decoder, weights, "decoder")
        return
    aspp = {k.removeprefix("aspp."): v for k, v in weights.items() if k.startswith("aspp.")}
    load_strict(model.decoder.aspp, aspp, "ASPP")


def load_initial_weights(model, job, store: RunStore, in_channels: int) -> tuple[str, str]:
    """Load the start of fine-tuning into ``model``; return where the encoder came from and
    which parts were loaded (a ``LOAD_MODES`` entry, or ``none`` for a random encoder)."""
    weights, init_source = initial_backbone(job, store, in_channels)
    if weights is None:
        return init_source, "none"
    load_backbone_strict(model.encoder, weights)
    mode = load_mode_for(job)
    load_pretrained_decoder(model, job, store, mode)
    return init_source, mode


class Normalizer:
    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return (images_uint8.float() / 255.0 - self.mean) / self.std


@torch.no_grad()
def evaluate(
    model, patches: PatchSet, normalize, num_classes, ignore_index, batch_size, device, amp: bool
) -> dict[str, Any]:
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index, device=device)
    for start in range(0, len(patches), batch_size):
        images, masks = patches[start : start + batch_size]
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = model(normalize(images))
        confusion.update(logits.argmax(dim=1), masks)
    return confusion.compute()


def run_finetuning(job, run_dir: Path, store: RunStore, data_root=None) -> dict[str, Any]:
    cfg: FinetuneConfig = job.finetune
    device = resolve_device()
    dataset = DATASETS.get(job.dataset)(job.dataset_params, job.data, data_root)
    train, test = dataset.load_split("train"), dataset.load_split("test")
    check_fraction_usable(job.dataset, job.fraction, len(train))
    chosen = labelled_indices(len(train), job.fraction, job.seed)
    labelled = train.subset(chosen)
    subset_path = write_subset(dataset.prepared_dir, labelled.ids, job.fraction, job.seed)
    normalize = Normalizer(*dataset.band_stats(), device)

    torch.manual_seed(seed_for(job.seed, 0xF7))
    model = build_segmentation_model(
        job.backbone, dataset.in_channels, dataset.num_classes, cfg.output_stride
    )
    init_source, loaded = load_initial_weights(model, job, store, dataset.in_channels)
    if cfg.protocol == "frozen":
        model.encoder.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":  # NHWC convolutions are faster on tensor cores
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()  # in place: state-dict keys unchanged
    optimizer = build_optimizer(
        parameter_groups(model, cfg.weight_decay), cfg.optimizer, cfg.lr, cfg.momentum
    )
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    )

    log.info(
        "  finetune %s | %d labelled of %d training patches (%s)",
        job.method,
        len(labelled),
        len(train),
        subset_path,
    )
    checkpoint_path = run_dir / CHECKPOINT
    start_step, running = 0, 0.0
    state = checkpoint.load(checkpoint_path, job.job_id)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, running = int(state["step"]), float(state["running"])
        checkpoint.set_rng_state(state["rng"])
        log.info("%s: resumed from checkpoint at step %d/%d", job.job_id, start_step, cfg.steps)

    started = time.perf_counter()
    order = batch_indices(len(labelled), cfg.batch_size, cfg.steps, job.seed)
    with StopSignals() as stop:
        for step in range(start_step, cfg.steps):
            model.train()
            if cfg.protocol == "frozen":
                model.encoder.eval()  # BN statistics stay those of the pretrained backbone
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            images, masks = labelled[order[step]]
            images, masks = random_dihedral(images, masks)
            if device.type == "cuda":  # page-locked, so the copies below overlap compute
                images, masks = images.pin_memory(), masks.pin_memory()
            images = normalize(images.to(device, non_blocking=True))
            masks = masks.to(device, non_blocking=True).long()
            with autocast_for(device, cfg.amp):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), masks, ignore_index=dataset.ignore_index)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite fine-tuning loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += float(loss.detach())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                count = (step % cfg.log_every) + 1
                log.info(
                    "  finetune %s f=%g | step %d/%d | loss %.4f | %.2f s/step",
                    job.method,
                    job.fraction,
                    step + 1,
                    cfg.steps,
                    running / count,
                    (time.perf_counter() - started) / (step + 1 - start_step),
                )
                append_log(
                    run_dir, {"step": step + 1, "loss": running / count, "lr": lr_at(cfg, step)}
                )
                running = 0.0
            periodic = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            if (stop.requested or periodic) and step + 1 < cfg.steps:
                checkpoint.save(
                    checkpoint_path,
                    {
                        "job_id": job.job_id,
                        "step": step + 1,
                        "running": running,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": checkpoint.rng_state(),
                    },
                )
                stop.check(f"at fine-tuning step {step + 1}")
    train_seconds = time.perf_counter() - started

    eval_start = time.perf_counter()
    scores = evaluate(
        model,
        test,
        normalize,
        dataset.num_classes,
        dataset.ignore_index,
        cfg.eval_batch_size,
        device,
        cfg.amp,
    )
    eval_seconds = time.perf_counter() - eval_start
    log.info(
        "  finetune %s f=%g | test mIoU %.2f Kappa %.2f OA %.2f",
        job.method,
        job.fraction,
        100 * scores["miou"],
        100 * scores["kappa"],
        100 * scores["oa"],
    )
    return {
        "status": "ok",
        "kind": "finetune",
        "job_id": job.job_id,
        "pretrain_id": job.pretrain_job.job_id if job.pretrain_job is not None else None,
        "method": job.method,
        "dataset": job.dataset,
        "fraction": job.fraction,
        "seed": job.seed,
        "preset": job.preset,
        "protocol": cfg.protocol,
        "init": init_source,
        "load": cfg.load,  # asked for
        "loaded": loaded,  # what was loaded: less than asked when the method has no more
        "backbone": job.backbone,
        "bands": job.data.bands,
        "resumed_from_step": start_step,
        "n_labelled": len(labelled),
        "n_train": len(train),
        "n_test": len(test),
        "class_names": list(dataset.class_names),
        "ignore_index": dataset.ignore_index,
        "metric_note": METRIC_NOTE,
        **scores,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "device": str(device),
        "finished_at": now_iso(),
        **provenance(),
    }
