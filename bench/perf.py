"""``python -m bench perf``: what the harness costs over a bare PyTorch loop, and how fast
its parts are, each as a ratio of two measurements taken in this one process.

1. pretraining: images/s of a real pretraining job (``bench.jobs.execute``: data, schedule,
   logging, checkpoints, record) vs a bare loop doing the same computation (same method,
   seeds, batches and learning rates: the final losses are compared to prove it);
2. fine-tuning: the same for a DeepLabV3+ fine-tuning job;
3. metrics: confusion-matrix accumulation vs scikit-learn's ``confusion_matrix`` (and
   torchmetrics when installed) on the same predictions;
4. data loading: prepared (memory-mapped) patches/s of the pretraining loader vs the
   patches/s the pretraining step consumes;
5. each method's bare step cost relative to SimCLR at equal batch.

Every rate is the best of ``repeats`` runs (the least disturbed by other processes).
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from bench.config import ConfigError
from bench.datasets import create_dataset
from bench.datasets.folder import FolderParams
from bench.engine import resolve_device
from bench.finetune import batch_indices, labelled_batches, prepare_finetuning, segmentation_loss
from bench.jobs import FinetuneJob, PretrainJob, execute
from bench.methods import METHODS
from bench.methods.base import StepContext
from bench.metrics import ConfusionMatrix
from bench.pretrain import (
    epoch_batches,
    method_step,
    prepare_pretraining,
    shuffled_batches,
)
from bench.sweep import SweepSpec, plan

log = logging.getLogger(__name__)

HARNESS_GOAL = 0.95  # harness / bare throughput (issue 12)
METRIC_GOAL = 20.0  # ours / scikit-learn speed


def pretraining_methods() -> tuple[str, ...]:
    """Every registered method that pretrains (plugins' included), in registry order."""
    return tuple(name for name in METHODS.names() if METHODS.get(name).pretrains)


@dataclass(frozen=True)
class PerfSettings:
    methods: tuple[str, ...] = field(default_factory=pretraining_methods)
    pretrain_steps: int = 6
    finetune_steps: int = 20
    repeats: int = 2
    preset: str = "quick"
    overrides: tuple[str, ...] = ()  # extra --set items (tests use tiny sizes)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS or not METHODS.get(m).pretrains]
        if unknown:
            raise ConfigError(f"perf measures pretraining methods; not one: {', '.join(unknown)}")


def _best_rate(run: Callable[[], float], repeats: int) -> float:
    return max(run() for _ in range(repeats))


# -- 1, 5: pretraining -------------------------------------------------------------------
def _pretrain_job(method: str, settings: PerfSettings) -> PretrainJob:
    spec = SweepSpec(
        methods=(method,),
        fractions=(1.0,),
        seeds=(0,),
        preset=settings.preset,
        overrides=(
            *settings.overrides,
            "pretrain.epochs=1",
            "synthetic.n_test=8",
            "pretrain.log_every=100000",
        ),
    )
    job = next(j for j in plan(spec) if isinstance(j, PretrainJob))
    batch = job.pretrain.batch_size
    own = METHODS.get(method).few_batches_settings(batch)  # they hold for >= 3 batches
    steps = max(3, settings.pretrain_steps) if own else settings.pretrain_steps
    sizes = [f"synthetic.n_train={batch * steps}", *(f"{method}.{k}={v}" for k, v in own.items())]
    spec = SweepSpec(**{**spec.__dict__, "overrides": (*spec.overrides, *sizes)})
    return next(j for j in plan(spec) if isinstance(j, PretrainJob))


def harness_pretraining(
    job: PretrainJob, data_root: Path, device: torch.device | None = None
) -> tuple[float, float]:
    """images/s and final loss of the real job, in a fresh results folder, on ``device``
    (default: the GPU when there is one)."""
    with tempfile.TemporaryDirectory() as results:
        record = execute(job, results, data_root, device=device)
    if record["status"] != "ok":
        raise RuntimeError(f"perf pretraining of {job.method} failed: {record.get('error')}")
    return record["images_per_second"], record["final_loss"]


def bare_pretraining(
    job: PretrainJob, data_root: Path, device: torch.device | None = None
) -> tuple[float, float]:
    """The same computation as ``run_pretraining``'s first epoch (the same set-up,
    :func:`bench.pretrain.prepare_pretraining`: model, seeds, schedule, batches and engine
    step), without the harness around it (logging, checkpoints, record)."""
    setup = prepare_pretraining(job, data_root, device or resolve_device())
    method, trainer, steps = setup.method, setup.trainer, setup.steps_per_epoch
    method.train()
    batches = epoch_batches(setup.train, job.pretrain, job.seed, 0, trainer.device, trainer.place)
    total = job.pretrain.epochs * steps  # as the run's step contexts count
    start = time.perf_counter()
    for step, (images, _) in enumerate(batches):
        outcome = method_step(trainer, method, images, StepContext(step, total, 0))
    return steps * job.pretrain.batch_size / (time.perf_counter() - start), outcome.loss


# -- 2: fine-tuning ----------------------------------------------------------------------
def _finetune_job(settings: PerfSettings) -> FinetuneJob:
    spec = SweepSpec(
        methods=("random",),
        fractions=(1.0,),
        seeds=(0,),
        preset=settings.preset,
        overrides=(
            *settings.overrides,
            "synthetic.n_train=64",
            "synthetic.n_test=8",
            f"finetune.steps={settings.finetune_steps}",
            "finetune.epochs=none",  # a fixed number of steps under every protocol
            "finetune.log_every=100000",
        ),
    )
    return next(j for j in plan(spec) if isinstance(j, FinetuneJob))


def harness_finetuning(
    job: FinetuneJob, data_root: Path, device: torch.device | None = None
) -> float:
    """Patches/s of the real job's training steps (its ``train_seconds``), on ``device``."""
    with tempfile.TemporaryDirectory() as results:
        record = execute(job, results, data_root, device=device)
    if record["status"] != "ok":
        raise RuntimeError(f"perf fine-tuning failed: {record.get('error')}")
    return job.finetune.steps * job.finetune.batch_size / record["train_seconds"]


def bare_finetuning(job: FinetuneJob, data_root: Path, device: torch.device | None = None) -> float:
    """The same computation as ``run_finetuning``'s training (the same set-up,
    :func:`bench.finetune.prepare_finetuning`: model, seeds, batches and engine step),
    without the harness around it."""
    setup = prepare_finetuning(job, data_root, None, device or resolve_device())
    data, trainer, cfg = setup.data, setup.trainer, job.finetune
    order = batch_indices(len(data.labelled), cfg.batch_size, data.length, job.seed)
    batches = labelled_batches(
        data.labelled, order, data.normalize, trainer.device, range(cfg.steps)
    )
    ignore = data.dataset.ignore_index
    start = time.perf_counter()
    for step, (images, masks) in batches:
        trainer.step(step, lambda: segmentation_loss(setup.model, images, masks, cfg, ignore))  # noqa: B023
    return cfg.steps * cfg.batch_size / (time.perf_counter() - start)


# -- 3: metrics ----------------------------------------------------------------------------
def metric_rates(repeats: int, pixels: int = 16 * 256 * 256, classes: int = 7) -> dict:
    """Predictions/s of confusion-matrix accumulation: ours, scikit-learn, torchmetrics."""
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, classes, pixels).astype(np.uint8))
    target[torch.from_numpy(rng.random(pixels) < 0.05)] = 255  # ignored pixels
    pred = torch.from_numpy(rng.integers(0, classes, pixels))

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return pixels / (time.perf_counter() - start)

    def ours() -> np.ndarray:
        matrix = ConfusionMatrix(classes)
        matrix.update(pred, target)
        return matrix.matrix.numpy()

    from sklearn.metrics import confusion_matrix

    def sklearn() -> np.ndarray:
        valid = target.numpy() != 255
        return confusion_matrix(
            target.numpy()[valid], pred.numpy()[valid], labels=list(range(classes))
        )

    if not np.array_equal(ours(), sklearn()):
        raise AssertionError("confusion matrices of bench and scikit-learn differ")
    repeats *= 10  # milliseconds each: many repeats cost little and steady the best
    for _ in range(3):  # warm-up: thread pools, allocator
        ours(), sklearn()
    rates = {
        "bench": max(timed(ours) for _ in range(repeats)),
        "sklearn": max(timed(sklearn) for _ in range(repeats)),
    }
    try:
        from torchmetrics.classification import MulticlassConfusionMatrix
    except ImportError:
        rates["torchmetrics"] = None
    else:
        metric = MulticlassConfusionMatrix(classes, ignore_index=255)

        def torchmetrics() -> np.ndarray:
            metric.reset()
            metric.update(pred, target.long())
            return metric.compute().numpy()

        if not np.array_equal(ours(), torchmetrics()):
            raise AssertionError("confusion matrices of bench and torchmetrics differ")
        rates["torchmetrics"] = max(timed(torchmetrics) for _ in range(repeats))
    return rates


# -- 4: data loading -----------------------------------------------------------------------
def prepared_loader_rate(root: Path, batch: int, patch: int, repeats: int) -> float:
    """Patches/s of the pretraining loader over a prepared (memory-mapped) folder dataset
    of 3-band ``patch`` px patches, written here from random 512 px TIFFs."""
    import tifffile
    import yaml

    raw = root / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    (raw / "classes.yaml").write_text(yaml.safe_dump({"classes": [{"name": "a", "value": 0}]}))
    rng = np.random.default_rng(0)
    for n in range(20):
        tifffile.imwrite(raw / "images" / f"{n}.tif", rng.integers(0, 256, (512, 512, 3), np.uint8))
        tifffile.imwrite(raw / "masks" / f"{n}.tif", np.zeros((512, 512), np.uint8))
    dataset = create_dataset("folder", FolderParams(patch_size=patch), data_root=root / "data")
    dataset.prepare(raw, seeds=(), fractions=(), progress=lambda m: None)
    train = dataset.load_split("train")

    def one_epoch() -> float:
        start, count = time.perf_counter(), 0
        for images, _ in shuffled_batches(train, batch, torch.Generator().manual_seed(0)):
            count += len(images)
        return count / (time.perf_counter() - start)

    return _best_rate(one_epoch, repeats)


# -- all -----------------------------------------------------------------------------------
def row(measure: str, ours: float, reference: float, goal: str, ok, note: str) -> dict[str, Any]:
    """One line of the report: ``ratio`` = ours / reference."""
    return {
        "measure": measure,
        "harness": ours,
        "reference": reference,
        "ratio": ours / reference,
        "goal": goal,
        "ok": ok,
        "note": note,
    }


def pretraining_rows(settings: PerfSettings, data_root: Path, progress) -> list[dict[str, Any]]:
    """Harness vs bare loop for each method (interleaved, best of each), then each method's
    bare step cost relative to SimCLR."""
    rows, bare = [], {}
    methods = settings.methods if "simclr" in settings.methods else ("simclr", *settings.methods)
    for method in methods:
        job = _pretrain_job(method, settings)
        bare_pretraining(job, data_root)  # warm-up (and renders the data once)
        harness_rate = bare_rate = 0.0
        for _ in range(settings.repeats):
            rate, harness_loss = harness_pretraining(job, data_root)
            harness_rate = max(harness_rate, rate)
            rate, bare_loss = bare_pretraining(job, data_root)
            bare_rate = max(bare_rate, rate)
        bare[method] = bare_rate
        same = harness_loss == bare_loss
        note = "same final loss" if same else f"loss {harness_loss} vs {bare_loss}"
        ratio = harness_rate / bare_rate
        goal, ok = f">= {HARNESS_GOAL}", ratio >= HARNESS_GOAL
        rows.append(
            row(f"pretraining {method} (images/s)", harness_rate, bare_rate, goal, ok, note)
        )
        progress(f"pretraining {method}: harness/bare {ratio:.3f}")
    for method in methods:
        rows.append(
            row(
                f"step cost {method} / simclr",
                1 / bare[method],
                1 / bare["simclr"],
                "",
                None,
                "bare step time ratio, equal batch",
            )
        )
    return rows


def finetuning_row(settings: PerfSettings, data_root: Path) -> dict[str, Any]:
    job = _finetune_job(settings)
    bare_finetuning(job, data_root)  # warm-up
    harness_rate = bare_rate = 0.0
    for _ in range(settings.repeats):
        harness_rate = max(harness_rate, harness_finetuning(job, data_root))
        bare_rate = max(bare_rate, bare_finetuning(job, data_root))
    ratio = harness_rate / bare_rate
    note = f"batch {job.finetune.batch_size}, {job.finetune.steps} steps"
    return row(
        "fine-tuning DeepLabV3+ (patches/s)",
        harness_rate,
        bare_rate,
        f">= {HARNESS_GOAL}",
        ratio >= HARNESS_GOAL,
        note,
    )


def metric_rows(repeats: int) -> list[dict[str, Any]]:
    metrics, rows = metric_rates(repeats), []
    for other in ("sklearn", "torchmetrics"):
        if metrics[other] is None:
            continue
        ratio = metrics["bench"] / metrics[other]
        goal = f">= {METRIC_GOAL:g}" if other == "sklearn" else ""
        ok = ratio >= METRIC_GOAL if other == "sklearn" else None
        rows.append(
            row(
                f"confusion matrix vs {other} (pixels/s)",
                metrics["bench"],
                metrics[other],
                goal,
                ok,
                "1M predictions, 7 classes, 5% ignored",
            )
        )
    return rows


def loader_row(settings: PerfSettings, folder: Path, simclr_rate: float) -> dict[str, Any]:
    job = _pretrain_job("simclr", settings)
    batch, patch = job.pretrain.batch_size, job.dataset_params.patch_size
    loader = prepared_loader_rate(folder, batch, patch, settings.repeats)
    note = "memory-mapped .npy, batch reads, 0 workers vs simclr consumption"
    return row(
        "prepared data loader vs pretraining step (patches/s)",
        loader,
        simclr_rate,
        "> 1",
        loader > simclr_rate,
        note,
    )


def run_perf(settings: PerfSettings, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Measure everything; returns the JSON report (rows + machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        rows = pretraining_rows(settings, data_root, progress)
        rows.append(finetuning_row(settings, data_root))
        progress("fine-tuning measured")
        rows += metric_rows(settings.repeats)
        progress("metrics measured")
        simclr = "pretraining simclr (images/s)"  # its rate through the harness
        simclr_rate = next(r["harness"] for r in rows if r["measure"] == simclr)
        rows.append(loader_row(settings, Path(tmp) / "loader", simclr_rate))
    return {"settings": settings.__dict__, "machine": machine(), "rows": rows}


def machine() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(resolve_device()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_report(report: dict[str, Any]) -> str:
    table = [
        [
            row["measure"],
            f"{row['harness']:.4g}",
            f"{row['reference']:.4g}",
            f"{row['ratio']:.3f}",
            row["goal"],
            {True: "yes", False: "NO", None: ""}[row["ok"]],
            row["note"],
        ]
        for row in report["rows"]
    ]
    headers = ["measure", "harness/ours", "reference", "ratio", "goal", "met", "note"]
    machine_line = ", ".join(f"{k} {v}" for k, v in report["machine"].items())
    return tabulate(table, headers, tablefmt="github") + f"\n\nmachine: {machine_line}"


def write_perf_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
