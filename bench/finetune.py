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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import LOAD_MODES, FinetuneConfig
from bench.datasets import PatchSet, create_dataset
from bench.datasets.base import check_fraction_usable
from bench.datasets.subsets import labelled_indices, write_subset
from bench.engine import (
    StepOutcome,
    Trainer,
    autocast_for,
    build_optimizer,
    parameter_groups,
    place_on,
    resolve_device,
    seed_for,
)
from bench.methods import METHODS
from bench.metrics import METRIC_NOTE, ConfusionMatrix
from bench.models import build_segmentation_model, load_backbone_strict, load_strict
from bench.store import BACKBONE, CHECKPOINT, DECODER, append_log, now_iso, provenance

log = logging.getLogger(__name__)


def lr_at(cfg: FinetuneConfig, step: int) -> float:
    """Learning rate of ``step`` (0-based) under the configured schedule."""
    t = step / cfg.steps
    if cfg.schedule == "poly":
        return cfg.lr * (1 - t) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr


def lr_schedule(cfg: FinetuneConfig) -> np.ndarray:
    """The learning rate of every step (:func:`lr_at`), for the engine."""
    return np.array([lr_at(cfg, step) for step in range(cfg.steps)])


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
    job, pretrained_dir: Path | None, in_channels: int
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The encoder weights the fine-tuning starts from (None: random) and their source."""
    if job.pretrain_job is not None:
        path = Path(pretrained_dir) / BACKBONE
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


def load_pretrained_decoder(model, job, pretrained_dir: Path | None, mode: str) -> None:
    """Load the pretraining run's ASPP (``backbone+aspp``) or whole decoder (``all``) into
    ``model.decoder``, strictly; nothing for ``backbone``."""
    if mode == "backbone":
        return
    path = Path(pretrained_dir) / DECODER
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


def load_initial_weights(
    model, job, pretrained_dir: Path | None, in_channels: int
) -> tuple[str, str]:
    """Load the start of fine-tuning into ``model``; return where the encoder came from and
    which parts were loaded (a ``LOAD_MODES`` entry, or ``none`` for a random encoder)."""
    weights, init_source = initial_backbone(job, pretrained_dir, in_channels)
    if weights is None:
        return init_source, "none"
    load_backbone_strict(model.encoder, weights)
    mode = load_mode_for(job)
    load_pretrained_decoder(model, job, pretrained_dir, mode)
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


def finetuning_model(job, dataset, pretrained_dir: Path | None, device) -> tuple:
    """DeepLabV3+ for ``job``, seeded from the job's seed, starting from the method's
    weights (the encoder frozen in the ``frozen`` protocol), on ``device``; with where the
    encoder came from and what was loaded."""
    cfg: FinetuneConfig = job.finetune
    torch.manual_seed(seed_for(job.seed, 0xF7))
    model = build_segmentation_model(
        job.backbone, dataset.in_channels, dataset.num_classes, cfg.output_stride
    )
    init_source, loaded = load_initial_weights(model, job, pretrained_dir, dataset.in_channels)
    if cfg.protocol == "frozen":
        model.encoder.requires_grad_(False)
    model = place_on(model, device)
    if cfg.compile:
        model.compile()  # in place: state-dict keys unchanged
    return model, init_source, loaded


def finetuning_trainer(job, model, device, run_dir: Path | None) -> Trainer:
    cfg: FinetuneConfig = job.finetune
    groups = parameter_groups(model, cfg.weight_decay)
    return Trainer(
        job_id=job.job_id,
        model=model,
        optimizer=build_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum),
        schedule=lr_schedule(cfg),
        device=device,
        amp=cfg.amp,
        checkpoint_path=run_dir / CHECKPOINT if run_dir is not None else None,
        what="fine-tuning",
    )


def segmentation_loss(model, images, masks, cfg: FinetuneConfig, ignore_index: int):
    """The step's cross-entropy, with the encoder's BN statistics kept in the ``frozen``
    protocol (those of the pretrained backbone)."""
    model.train()
    if cfg.protocol == "frozen":
        model.encoder.eval()
    logits = model(images)
    return F.cross_entropy(logits.float(), masks, ignore_index=ignore_index), {}


def labelled_batches(labelled, order, normalize, device, steps: range):
    """``(step, (images, masks))`` for ``steps``: the step's labelled patches, flipped and
    rotated at random, normalised, on ``device``."""
    for step in steps:
        images, masks = random_dihedral(*labelled[order[step]])
        if device.type == "cuda":  # page-locked, so the copies below overlap compute
            images, masks = images.pin_memory(), masks.pin_memory()
        images = normalize(images.to(device, non_blocking=True))
        yield step, (images, masks.to(device, non_blocking=True).long())


@dataclass(frozen=True)
class FinetuneData:
    """What a fine-tuning reads: the dataset, its splits, the labelled subset (its list
    written next to the prepared data) and the band normalisation."""

    dataset: Any
    train: PatchSet
    test: PatchSet
    labelled: PatchSet
    normalize: Normalizer

    @classmethod
    def load(cls, job, data_root, device: torch.device) -> FinetuneData:
        dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
        train, test = dataset.load_split("train"), dataset.load_split("test")
        check_fraction_usable(job.dataset, job.fraction, len(train))
        labelled = train.subset(labelled_indices(len(train), job.fraction, job.seed))
        subset_path = write_subset(dataset.prepared_dir, labelled.ids, job.fraction, job.seed)
        log.info(
            "  finetune %s | %d labelled of %d training patches (%s)",
            job.method,
            len(labelled),
            len(train),
            subset_path,
        )
        return cls(dataset, train, test, labelled, Normalizer(*dataset.band_stats(), device))


def run_finetuning(
    job, run_dir: Path, data_root=None, pretrained_dir: Path | None = None
) -> dict[str, Any]:
    """Fine-tune DeepLabV3+ on ``job``'s labelled subset and score it on the test split;
    ``pretrained_dir`` is the run folder of the job's pretraining (its backbone.pt and
    decoder.pt), None for baselines."""
    device = resolve_device()
    data = FinetuneData.load(job, data_root, device)
    model, init_source, loaded = finetuning_model(job, data.dataset, pretrained_dir, device)
    trainer = finetuning_trainer(job, model, device, run_dir)
    progress = train_on_labels(job, trainer, data, run_dir)
    train_seconds = time.perf_counter() - progress.started
    eval_start = time.perf_counter()
    scores = evaluate_job(job, model, data, device)
    return {
        **finetune_record(job, data),
        "init": init_source,
        "load": job.finetune.load,  # asked for
        "loaded": loaded,  # what was loaded: less than asked when the method has no more
        "resumed_from_step": progress.start_step,
        **scores,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "device": str(device),
        "finished_at": now_iso(),
        **provenance(),
    }


def train_on_labels(job, trainer: Trainer, data: FinetuneData, run_dir: Path) -> FinetuneLog:
    """The fine-tuning steps, from the checkpoint if there is one; a stop signal ends them
    early after a checkpoint (so does ``checkpoint_every``, without ending them)."""
    cfg: FinetuneConfig = job.finetune
    resumed = trainer.load() or {"step": 0, "running": 0.0}
    start_step = int(resumed["step"])
    if "rng" in resumed:
        trainer.restore_rng(resumed, seed_for(job.seed, 0xF7, start_step))
        log.info("%s: resumed from checkpoint at step %d/%d", job.job_id, start_step, cfg.steps)
    progress = FinetuneLog(job, run_dir, float(resumed["running"]), start_step)
    ignore_index = data.dataset.ignore_index

    def train_step(batch, step: int) -> StepOutcome:
        images, masks = batch
        loss = lambda: segmentation_loss(trainer.model, images, masks, cfg, ignore_index)  # noqa: E731
        outcome = trainer.step(step, loss)
        progress.step(step, outcome)
        return outcome

    def position(step: int) -> tuple[dict[str, Any], str]:
        return {"step": step + 1, "running": progress.running}, f"at fine-tuning step {step + 1}"

    order = batch_indices(len(data.labelled), cfg.batch_size, cfg.steps, job.seed)
    steps = range(start_step, cfg.steps)
    batches = labelled_batches(data.labelled, order, data.normalize, trainer.device, steps)
    with trainer.stop:
        trainer.run(batches, train_step, position, cfg.checkpoint_every, cfg.steps - 1)
    return progress


def evaluate_job(job, model, data: FinetuneData, device: torch.device) -> dict[str, Any]:
    """The test split's scores (:func:`evaluate`), logged."""
    cfg, dataset = job.finetune, data.dataset
    scores = evaluate(
        model,
        data.test,
        data.normalize,
        dataset.num_classes,
        dataset.ignore_index,
        cfg.eval_batch_size,
        device,
        cfg.amp,
    )
    log.info(
        "  finetune %s f=%g | test mIoU %.2f Kappa %.2f OA %.2f",
        job.method,
        job.fraction,
        100 * scores["miou"],
        100 * scores["kappa"],
        100 * scores["oa"],
    )
    return scores


class FinetuneLog:
    """The running loss, a progress line and a log.jsonl line every ``log_every`` steps."""

    def __init__(self, job, run_dir: Path, running: float, start_step: int) -> None:
        self.job, self.run_dir, self.running = job, run_dir, running
        self.start_step = start_step
        self.started = time.perf_counter()

    def step(self, step: int, outcome: StepOutcome) -> None:
        cfg = self.job.finetune
        self.running += outcome.loss
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            count = (step % cfg.log_every) + 1
            seconds = (time.perf_counter() - self.started) / (step + 1 - self.start_step)
            log.info(
                "  finetune %s f=%g | step %d/%d | loss %.4f | %.2f s/step",
                self.job.method,
                self.job.fraction,
                step + 1,
                cfg.steps,
                self.running / count,
                seconds,
            )
            entry = {"step": step + 1, "loss": self.running / count, "lr": outcome.lr}
            append_log(self.run_dir, entry)
            self.running = 0.0


def finetune_record(job, data: FinetuneData) -> dict[str, Any]:
    """What a fine-tuning record says about the job and its data."""
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
        "protocol": job.finetune.protocol,
        "backbone": job.backbone,
        "bands": job.data.bands,
        "n_labelled": len(data.labelled),
        "n_train": len(data.train),
        "n_test": len(data.test),
        "class_names": list(data.dataset.class_names),
        "ignore_index": data.dataset.ignore_index,
        "metric_note": METRIC_NOTE,
    }
