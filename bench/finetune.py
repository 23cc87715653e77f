"""Fine-tuning of smp DeepLabV3+ (or a linear probe) on a labelled fraction, and evaluation
on the test split.

The encoder starts from the method's backbone (loaded strictly) or, for baselines, from what
the baseline says. ``finetune.load`` says how much more of a pretrained DeepLabV3+ to start
from, for methods that pretrain it (GLCNet): ``backbone``, ``backbone+aspp`` (GLCNet's
protocol, the default) or ``all`` (the whole decoder); a method that pretrains only a backbone
loads only that, and the record says what was loaded. The class head always starts fresh.

What is trained and how comes from ``finetune.protocol`` (:mod:`bench.protocols`) and
its overrides: the head (:class:`bench.models.DeepLabHead`, or with ``finetune.decoder=
linear`` a 1x1 convolution on the frozen encoder's features, :class:`bench.models.
LinearHead`: the ``linear`` protocol), a frozen or trained encoder, the
optimiser and schedule, a number of steps or of epochs, which patches are labelled
(:mod:`bench.datasets.subsets`) and how the test split is scored (:mod:`bench.evaluation`).
Batches are drawn from seeded permutations of the labelled patches, with random flips and
90-degree rotations.
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

from bench.config import LOAD_MODES, PRESETS, FinetuneConfig
from bench.datasets import PatchSet, create_dataset
from bench.datasets.base import check_fraction_usable
from bench.datasets.subsets import labelled_indices_by, write_subset
from bench.engine import (
    StepOutcome,
    Trainer,
    build_optimizer,
    parameter_groups,
    place_on,
    resolve_device,
    seed_for,
)
from bench.evaluation import IMAGE_IDS, PER_IMAGE, check_window, evaluate_patches, evaluate_tiles
from bench.methods import METHODS
from bench.metrics import METRIC_NOTE
from bench.models import build_segmentation_model, load_backbone_strict, load_strict
from bench.protocols import PROTOCOLS, protocol_overrides
from bench.store import (
    BACKBONE,
    CHECKPOINT,
    DECODER,
    SCORES,
    append_log,
    now_iso,
    provenance,
    write_scores,
)
from bench.tracking import open_tracker, score_scalars

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingLength:
    """How long a fine-tuning runs: ``steps`` in all, ``per_epoch`` steps per pass over the
    labelled patches (``floor(labelled / batch)``, at least 1); ``by_epochs`` when the
    protocol counts epochs (``finetune.epochs``) rather than steps."""

    steps: int
    per_epoch: int
    by_epochs: bool

    @classmethod
    def of(cls, cfg: FinetuneConfig, labelled: int) -> TrainingLength:
        per_epoch = max(1, labelled // cfg.batch_size)
        if cfg.epochs is not None:
            return cls(cfg.epochs * per_epoch, per_epoch, True)
        return cls(cfg.steps, per_epoch, False)


def lr_at(cfg: FinetuneConfig, step: int, length: TrainingLength) -> float:
    """Learning rate of ``step`` (0-based) under the configured schedule."""
    t = step / length.steps
    if cfg.schedule == "poly":
        return (cfg.lr - cfg.min_lr) * (1 - t) ** cfg.poly_power + cfg.min_lr
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "epoch_decay":
        return cfg.lr * cfg.lr_decay ** (step // length.per_epoch)
    return cfg.lr


def finetune_lr_schedule(cfg: FinetuneConfig, length: TrainingLength) -> np.ndarray:
    """The learning rate of every step (:func:`lr_at`), for the engine."""
    return np.array([lr_at(cfg, step, length) for step in range(length.steps)])


def batch_indices(n: int, batch_size: int, length: TrainingLength, seed: int) -> np.ndarray:
    """``[steps, batch_size]`` indices of the labelled patches. Counted in steps: consecutive
    seeded permutations of ``range(n)`` cut into batches. Counted in epochs: one seeded
    permutation per epoch without its incomplete last batch (``drop_last``), or, with fewer
    patches than a batch, one batch per epoch from the consecutive permutations."""
    rng = np.random.default_rng([seed, 0xF1])
    if length.by_epochs and n >= batch_size:
        used = length.per_epoch * batch_size
        epochs = length.steps // length.per_epoch
        stream = np.concatenate([rng.permutation(n)[:used] for _ in range(epochs)])
    else:
        needed = length.steps * batch_size
        stream = np.concatenate([rng.permutation(n) for _ in range(-(-needed // n))])
    return stream[: length.steps * batch_size].reshape(length.steps, batch_size)


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


def finetuning_model(job, dataset, pretrained_dir: Path | None, device) -> tuple:
    """DeepLabV3+ (or the linear probe) for ``job``, seeded from the job's seed, starting
    from the method's weights (the encoder frozen with ``freeze=backbone``), on ``device``;
    with where the encoder came from and what was loaded."""
    cfg: FinetuneConfig = job.finetune
    torch.manual_seed(seed_for(job.seed, 0xF7))
    model = build_segmentation_model(
        job.backbone, dataset.in_channels, dataset.num_classes, cfg.head
    )
    init_source, loaded = load_initial_weights(model, job, pretrained_dir, dataset.in_channels)
    if cfg.freeze == "backbone":
        model.encoder.requires_grad_(False)
    model = place_on(model, device)
    if cfg.compile:
        model.compile()  # in place: state-dict keys unchanged
    return model, init_source, loaded


def finetuning_trainer(job, model, device, run_dir: Path | None, length: TrainingLength) -> Trainer:
    cfg: FinetuneConfig = job.finetune
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    optimizer = build_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum, betas=cfg.betas)
    return Trainer(
        job_id=job.job_id,
        model=model,
        optimizer=optimizer,
        schedule=finetune_lr_schedule(cfg, length),
        device=device,
        amp=cfg.amp,
        checkpoint_path=run_dir / CHECKPOINT if run_dir is not None else None,
        what="fine-tuning",
        checkpoint_seconds=60 * cfg.checkpoint_minutes,
    )


def segmentation_loss(model, images, masks, cfg: FinetuneConfig, ignore_index: int):
    """The step's cross-entropy, with the encoder's BN statistics kept when it is frozen
    (those of the pretrained backbone)."""
    model.train()
    if cfg.freeze == "backbone":
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
    length: TrainingLength

    @classmethod
    def load(cls, job, data_root, device: torch.device) -> FinetuneData:
        cfg: FinetuneConfig = job.finetune
        dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
        train, test = dataset.load_split("train"), dataset.load_split("test")
        check_fraction_usable(job.dataset, job.fraction, len(train))
        tiles = dataset.patch_tiles("train") if cfg.labels == "stratified" else None
        chosen = labelled_indices_by(cfg.labels, len(train), job.fraction, job.seed, tiles)
        labelled = train.subset(chosen)
        subset_path = write_subset(
            dataset.prepared_dir, labelled.ids, job.fraction, job.seed, cfg.labels
        )
        log.info(
            "  finetune %s | %d labelled of %d training patches (%s)",
            job.method,
            len(labelled),
            len(train),
            subset_path,
        )
        normalize = Normalizer(*dataset.band_stats(), device)
        length = TrainingLength.of(cfg, len(labelled))
        return cls(dataset, train, test, labelled, normalize, length)


@dataclass
class FinetuneSetup:
    """Everything a fine-tuning needs, built from its job by :func:`prepare_finetuning`:
    the job itself and ``bench perf``'s bare loop start from it."""

    data: FinetuneData
    model: torch.nn.Module
    init_source: str  # where the encoder's weights came from
    loaded: Any  # what of the pretrained model was loaded
    trainer: Trainer


def prepare_finetuning(
    job, data_root, pretrained_dir: Path | None, device: torch.device, run_dir: Path | None = None
) -> FinetuneSetup:
    """``job``'s data, seeded DeepLabV3+ on ``device`` from the weights in
    ``pretrained_dir`` (None for baselines) and trainer (checkpointing into ``run_dir``)."""
    data = FinetuneData.load(job, data_root, device)
    model, init_source, loaded = finetuning_model(job, data.dataset, pretrained_dir, device)
    trainer = finetuning_trainer(job, model, device, run_dir, data.length)
    return FinetuneSetup(data, model, init_source, loaded, trainer)


def run_finetuning(
    job,
    run_dir: Path,
    data_root=None,
    pretrained_dir: Path | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Fine-tune DeepLabV3+ on ``job``'s labelled subset on ``device`` (default: the GPU if
    there is one) and score it on the test split; ``pretrained_dir`` is the run folder of
    the job's pretraining (its backbone.pt and decoder.pt), None for baselines."""
    device = device or resolve_device()
    setup = prepare_finetuning(job, data_root, pretrained_dir, device, run_dir)
    data, model, init_source, loaded = setup.data, setup.model, setup.init_source, setup.loaded
    progress = train_on_labels(job, setup.trainer, data, run_dir)
    try:
        train_seconds = time.perf_counter() - progress.started
        eval_start = time.perf_counter()
        scores = evaluate_job(job, model, data, device)
        progress.final_scores(scores, data.dataset.class_names)
    finally:
        progress.close()
    keep_per_image_scores(run_dir, scores)
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
    early after a checkpoint (so does ``checkpoint_every``, without ending them). Returns
    the open log (the final scores go to it too)."""
    total = data.length.steps
    resumed = trainer.load() or {"step": 0, "running": 0.0}
    start_step = int(resumed["step"])
    if "rng" in resumed:
        trainer.restore_rng(resumed, seed_for(job.seed, 0xF7, start_step))
        log.info("%s: resumed from checkpoint at step %d/%d", job.job_id, start_step, total)
    progress = FinetuneLog(job, run_dir, float(resumed["running"]), start_step, total)
    try:
        _train_steps(job, trainer, data, progress, start_step)
    except BaseException:
        progress.close()
        raise
    return progress


def _train_steps(job, trainer: Trainer, data: FinetuneData, progress, start_step: int) -> None:
    """Steps ``start_step`` .. the last of the labelled batches, with the engine's loop."""
    cfg: FinetuneConfig = job.finetune
    total = data.length.steps
    ignore_index = data.dataset.ignore_index

    def train_step(batch, step: int) -> StepOutcome:
        images, masks = batch
        loss = lambda: segmentation_loss(trainer.model, images, masks, cfg, ignore_index)  # noqa: E731
        outcome = trainer.step(step, loss)
        progress.step(step, outcome)
        return outcome

    def position(step: int) -> tuple[dict[str, Any], str]:
        return {"step": step + 1, "running": progress.running}, f"at fine-tuning step {step + 1}"

    order = batch_indices(len(data.labelled), cfg.batch_size, data.length, job.seed)
    steps = range(start_step, total)
    batches = labelled_batches(data.labelled, order, data.normalize, trainer.device, steps)
    with trainer.stop:
        trainer.run(batches, train_step, position, cfg.checkpoint_every, total - 1)


def keep_per_image_scores(run_dir: Path, scores: dict[str, Any]) -> None:
    """Move the per-image confusion matrices of every label variant out of ``scores`` into
    ``scores.npz`` in ``run_dir`` (written before the record), naming it in ``scores``."""
    per_image, ids = scores.pop(PER_IMAGE), scores.pop(IMAGE_IDS)
    arrays = {f"confusions_{variant}": matrices for variant, matrices in per_image.items()}
    write_scores(run_dir, {**arrays, "image_ids": np.array(ids, dtype=str)})
    scores["scores_file"] = SCORES


def evaluate_job(job, model, data: FinetuneData, device: torch.device) -> dict[str, Any]:
    """The test split's scores under every label variant, patch by patch or over whole
    tiles (``finetune.evaluation``), logged."""
    cfg, dataset = job.finetune, data.dataset
    common = (data.normalize, dataset.num_classes, dataset.ignore_index)
    variants = dataset.test_label_variants()
    own = dataset.label_variant
    others = {name: patches for name, patches in variants.items() if name != own}
    if cfg.evaluation == "tiles":
        layouts = dataset.test_tiles()
        check_window(layouts, cfg.eval_window, job.dataset)
        scores = evaluate_tiles(
            model, data.test, layouts, *common, cfg.eval_window, cfg.eval_stride,
            cfg.eval_batch_size, device, cfg.amp, others, own,
        )  # fmt: skip
    else:
        scores = evaluate_patches(
            model, data.test, *common, cfg.eval_batch_size, device, cfg.amp, others, own
        )
    log.info(
        "  finetune %s f=%g | test mIoU %.2f Kappa %.2f OA %.2f (per-image mIoU %.2f, %s)",
        job.method, job.fraction, 100 * scores["miou"], 100 * scores["kappa"],
        100 * scores["oa"], 100 * scores["image_miou"], scores["evaluated_on"],
    )  # fmt: skip
    return scores


class FinetuneLog:
    """The running loss, a progress line and a log.jsonl line every ``log_every`` steps;
    each step's loss and LR, and the final scores, to the live curves of
    :mod:`bench.tracking`. Close it at the end."""

    def __init__(self, job, run_dir: Path, running: float, start_step: int, total: int) -> None:
        self.job, self.run_dir, self.running = job, run_dir, running
        self.start_step, self.total = start_step, total
        self.started = time.perf_counter()
        self.tracker = open_tracker(run_dir, job, job.finetune, start_step + 1)

    def close(self) -> None:
        self.tracker.close()

    def final_scores(self, scores: dict[str, Any], class_names) -> None:
        """The test scores, at the last step."""
        self.tracker.scalars(score_scalars(scores, class_names), self.total)

    def step(self, step: int, outcome: StepOutcome) -> None:
        cfg = self.job.finetune
        self.running += outcome.loss
        self.tracker.scalars({"train/loss": outcome.loss, "train/lr": outcome.lr}, step + 1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == self.total:
            count = (step % cfg.log_every) + 1
            seconds = (time.perf_counter() - self.started) / (step + 1 - self.start_step)
            log.info(
                "  finetune %s f=%g | step %d/%d | loss %.4f | %.2f s/step",
                self.job.method,
                self.job.fraction,
                step + 1,
                self.total,
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
        # what defined the preset and protocol when this ran (captions read these, not
        # today's definitions)
        "preset_caption": PRESETS.get(job.preset).caption if job.preset in PRESETS else None,
        "protocol": job.finetune.protocol,
        "protocol_source": PROTOCOLS.get(job.finetune.protocol).source,
        "protocol_settings": dict(PROTOCOLS.get(job.finetune.protocol).values),
        "protocol_overrides": protocol_overrides(job.finetune),
        "head": job.finetune.head.describe(),
        "freeze": job.finetune.freeze,
        "labels": job.finetune.labels,
        "steps": data.length.steps,
        "steps_per_epoch": data.length.per_epoch,
        "backbone": job.backbone,
        "bands": job.data.bands,
        "n_labelled": len(data.labelled),
        "n_train": len(data.train),
        "n_test": len(data.test),
        "class_names": list(data.dataset.class_names),
        "ignore_index": data.dataset.ignore_index,
        "metric_note": METRIC_NOTE,
    }
