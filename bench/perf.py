"""``python -m bench perf``: what the harness costs over a bare PyTorch loop, and how fast
its parts are, each as a ratio of two measurements taken in this one process.

1. pretraining: images/s of a real pretraining job (``bench.jobs.execute``: data, schedule,
   logging, health pass, record) vs a bare loop doing the same computation (same method,
   seeds, batches and learning rates: the final losses are compared to prove it);
2. fine-tuning: the same for a DeepLabV3+ fine-tuning job;
3. metrics: confusion-matrix accumulation vs scikit-learn's ``confusion_matrix`` (and
   torchmetrics when installed) on the same predictions;
4. data loading: prepared (memory-mapped) patches/s of the pretraining loader vs the
   patches/s the pretraining step consumes;
5. each method's bare step cost relative to SimCLR at equal batch.

Harness and bare loop (1, 2) are each run whole, set-up included, at two lengths: ``short``
steps and ``short + steady`` steps. The slope between the two is the steady-state step time
(the warm-up steps are in both and cancel), the intercept is the fixed cost of a job (data
set-up, model build, health pass, record); both are reported apart, with the process CPU
time per wall second of the steady steps. The two sides alternate in ``rounds`` (harness
first in even rounds, bare first in odd ones), a ratio per round; the report gives the
median ratio and its spread (lowest, highest). A round whose long run ended no later than
its short one measured no slope (its steady steps were within the runs' noise): its rate,
fixed cost and CPU/wall are NaN and left out of the medians, ``nan`` where no round had one.

The slope of whole runs carries the machine's drift: on this 2-core machine the same run
took 20% longer a few minutes later, so harness and bare runs taken in turn differ by +-20%
whatever the harness does. So each run also clocks its engine steps (:func:`step_clock`:
the start and end of every :meth:`bench.engine.Trainer.step`, the one step both sides go
through with the same inputs, as the equal final losses show): the median time inside a
step, and the median time between one step's end and the next one's start, where all the
harness's per-step work is (logging, TensorBoard, progress; the next batch's loading is in
both). Each round's ratio is the harness's own median step against that same step with the
bare loop's time between steps instead of its own: the harness's extra work per step as a
fraction of its step, free of the drift (the time between steps is about a millisecond, so
a drift of 20% moves it by a fifth of that). The goal (``HARNESS_GOAL``) is judged
on the median of these; the ratios of the median step periods and of the whole runs' slopes
are reported beside it, with their spread (the slope also carries what happens once in many
steps, such as a periodic checkpoint: ``finetune.checkpoint_every=50`` put one in each
long fine-tuning run, 0.3-1.1 s, and the slope's ratio at 0.93). The
other rates (3, 4) are the best of ``repeats`` runs.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from bench.config import ConfigError
from bench.datasets import create_dataset
from bench.datasets.folder import FolderParams
from bench.engine import Trainer, resolve_device
from bench.finetune import batch_indices, labelled_batches, prepare_finetuning, segmentation_loss
from bench.jobs import FinetuneJob, Job, PretrainJob, execute
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

HARNESS_GOAL = 0.97  # harness / bare steady-state throughput (issues 12, 33)
METRIC_GOAL = 20.0  # ours / scikit-learn speed


def pretraining_methods() -> tuple[str, ...]:
    """Every registered method that pretrains (plugins' included), in registry order."""
    return tuple(name for name in METHODS.names() if METHODS.get(name).pretrains)


@dataclass(frozen=True)
class PerfSettings:
    """``short`` steps of warm-up, ``steady`` more for the steady state (module docstring),
    ``rounds`` of harness and bare runs interleaved; ``repeats`` for the metric and loader
    rates (best kept)."""

    methods: tuple[str, ...] = field(default_factory=pretraining_methods)
    short: int = 5
    steady: int = 50
    rounds: int = 3
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
def _pretrain_job(method: str, settings: PerfSettings, steps: int | None = None) -> PretrainJob:
    """The method's pretraining job of one epoch of ``steps`` batches (default: ``short``)."""
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
    steps = steps or settings.short
    steps = max(3, steps) if own else steps
    sizes = [f"synthetic.n_train={batch * steps}", *(f"{method}.{k}={v}" for k, v in own.items())]
    spec = SweepSpec(**{**spec.__dict__, "overrides": (*spec.overrides, *sizes)})
    return next(j for j in plan(spec) if isinstance(j, PretrainJob))


def harness_pretraining(
    job: PretrainJob, data_root: Path, device: torch.device | None = None
) -> tuple[float, float]:
    """images/s of the training loop and final loss of the real job, in a fresh results
    folder, on ``device`` (default: the GPU when there is one)."""
    record = _execute(job, data_root, device)
    return record["images_per_second"], record["final_loss"]


def _execute(job: Job, data_root: Path, device: torch.device | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as results:
        record = execute(job, results, data_root, device=device)
    if record["status"] != "ok":
        raise RuntimeError(f"perf {job.kind} of {job.method} failed: {record.get('error')}")
    return record


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
def _finetune_job(settings: PerfSettings, steps: int | None = None) -> FinetuneJob:
    """A DeepLabV3+ fine-tuning of ``steps`` batches (default: ``short``) on 64 patches."""
    spec = SweepSpec(
        methods=("random",),
        fractions=(1.0,),
        seeds=(0,),
        preset=settings.preset,
        overrides=(
            *settings.overrides,
            "synthetic.n_train=64",
            "synthetic.n_test=8",
            f"finetune.steps={steps or settings.short}",
            "finetune.epochs=none",  # a fixed number of steps under every protocol
            "finetune.log_every=100000",
        ),
    )
    return next(j for j in plan(spec) if isinstance(j, FinetuneJob))


def harness_finetuning(
    job: FinetuneJob, data_root: Path, device: torch.device | None = None
) -> float:
    """Patches/s of the real job's training steps (its ``train_seconds``), on ``device``."""
    record = _execute(job, data_root, device)
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


# -- 1, 2: steady state and fixed costs, interleaved ---------------------------------------
@dataclass(frozen=True)
class Run:
    """One whole run, set-up included: wall and process CPU seconds, its final loss and the
    (start, end) time of each of its engine steps (:func:`step_clock`)."""

    wall: float
    cpu: float
    loss: float | None
    steps: tuple[tuple[float, float], ...] = ()

    def step_times(self, skip: int) -> tuple[float, float] | None:
        """After the first ``skip`` steps (the warm-up): the median seconds inside a step
        and the median seconds between the end of one step and the start of the next (the
        harness's per-step work, the next batch's loading); None with under two steps."""
        steps = self.steps[skip:]
        if len(steps) < 2:
            return None
        inside = np.median([end - start for start, end in steps])
        between = np.median([steps[k + 1][0] - steps[k][1] for k in range(len(steps) - 1)])
        return float(inside), float(between)


@contextmanager
def step_clock() -> Iterator[list[tuple[float, float]]]:
    """Within the block, each :meth:`bench.engine.Trainer.step` appends its (start, end)
    ``time.perf_counter`` to the list yielded: the harness and the bare loops both step
    through it, so their steps are timed alike, from outside either."""
    steps: list[tuple[float, float]] = []
    step = Trainer.step

    def clocked(self, *args, **kwargs):
        start = time.perf_counter()
        outcome = step(self, *args, **kwargs)
        steps.append((start, time.perf_counter()))
        return outcome

    Trainer.step = clocked
    try:
        yield steps
    finally:
        Trainer.step = step


def timed(work: Callable[[], float | None]) -> Run:
    """``work()``'s wall and CPU time, the loss it returns and its steps' times."""
    with step_clock() as steps:
        wall, cpu = time.perf_counter(), time.process_time()
        loss = work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Run(wall, cpu, loss, tuple(steps))


def harness_run(job: Job, data_root: Path, device: torch.device | None = None) -> Run:
    """The whole real job (set-up, steps, health pass, record) in a fresh results folder."""
    return timed(lambda: _execute(job, data_root, device).get("final_loss"))


def bare_run(job: Job, data_root: Path, device: torch.device | None = None) -> Run:
    """The bare loop of the job, its set-up (``prepare_pretraining``/``prepare_finetuning``)
    included."""
    if isinstance(job, PretrainJob):
        return timed(lambda: bare_pretraining(job, data_root, device)[1])
    return timed(lambda: bare_finetuning(job, data_root, device) and None)


@dataclass(frozen=True)
class Steady:
    """From a run of ``short`` steps and one of ``short + steady``: the steady-state rate
    (items/s, from the slope), the fixed cost of a job (s, the intercept), the process
    CPU seconds per wall second of the steady steps, and the long run's median seconds
    inside a step and between steps (:meth:`Run.step_times`; None when not clocked)."""

    rate: float
    fixed: float
    cpu_per_wall: float
    inside: float | None = None
    between: float | None = None
    batch: int = 1

    @classmethod
    def of(cls, short: Run, long: Run, short_steps: int, steady_steps: int, batch: int):
        """The slope and intercept are NaN when the long run took no longer than the short
        one: the steady steps were shorter than the runs' noise (raise ``bench perf --steps``)."""
        inside, between = long.step_times(short_steps) or (None, None)
        if long.wall <= short.wall:
            return cls(math.nan, math.nan, math.nan, inside, between, batch)
        step = (long.wall - short.wall) / steady_steps
        cpu_step = (long.cpu - short.cpu) / steady_steps
        fixed = short.wall - short_steps * step
        return cls(batch / step, fixed, cpu_step / step, inside, between, batch)

    @property
    def period(self) -> float:
        """The median step period: inside a step plus between two."""
        return self.inside + self.between

    @property
    def step_rate(self) -> float:
        """Items/s at the median step period."""
        return self.batch / self.period


def interleaved(short: Job, long: Job, batch: int, settings: PerfSettings, data_root: Path):
    """Harness and bare runs of ``short`` and ``long`` (the same job, ``settings.steady``
    more steps) in alternating order over ``settings.rounds``, after one bare warm-up of
    each (which renders their data): per side the :class:`Steady` of each round, and
    whether every round's long runs ended at the same loss."""
    bare_run(short, data_root), bare_run(long, data_root)
    sides = {"harness": harness_run, "bare": bare_run}
    steady: dict[str, list[Steady]] = {"harness": [], "bare": []}
    same_loss = True
    for index in range(settings.rounds):
        order = ("harness", "bare") if index % 2 == 0 else ("bare", "harness")
        losses = {}
        for side in order:
            first, second = sides[side](short, data_root), sides[side](long, data_root)
            steady[side].append(Steady.of(first, second, settings.short, settings.steady, batch))
            losses[side] = second.loss
        same_loss &= losses["harness"] == losses["bare"]
    return steady, same_loss


def steady_row(measure: str, steady: dict[str, list[Steady]], note: str) -> dict[str, Any]:
    """One report line (module docstring): the per-step ratio from the work between steps
    (the goal is judged on it: the median over rounds, with its spread); the same
    harness/bare ratios of the median step periods and of the whole runs' slopes, which
    carry the machine's drift between runs; the fixed costs and CPU/wall of each side."""
    harness, bare = steady["harness"], steady["bare"]
    pairs = list(zip(harness, bare, strict=True))
    # per round: the harness's step, and that step with the bare loop's work between steps
    ratios = [(h.inside + b.between) / h.period for h, b in pairs]
    periods = [b.period / h.period for h, b in pairs]
    # the rounds that measured a slope on both sides (NaN rates otherwise: Steady.of)
    slopes = [h.rate / b.rate for h, b in pairs if not math.isnan(h.rate + b.rate)]
    ratio = float(np.median(ratios))
    out = row(measure, _median(harness, "step_rate"), _median(bare, "step_rate"),
              f">= {HARNESS_GOAL}", ratio >= HARNESS_GOAL, note)  # fmt: skip
    out |= {
        "ratio": ratio,
        "spread": [min(ratios), max(ratios)],
        "rounds": ratios,
        "between_ms": {side: 1e3 * _median(steady[side], "between") for side in steady},
        "inside_ms": {side: 1e3 * _median(steady[side], "inside") for side in steady},
        "period_ratio": float(np.median(periods)),
        "period_spread": [min(periods), max(periods)],
        "slope_ratio": float(np.median(slopes)) if slopes else math.nan,
        "slope_spread": [min(slopes), max(slopes)] if slopes else [math.nan, math.nan],
        "slope_rounds": slopes,
        "fixed_seconds": {"harness": _median(harness, "fixed"), "bare": _median(bare, "fixed")},
        "cpu_per_wall": {side: _median(steady[side], "cpu_per_wall") for side in steady},
    }
    return out


def _median(values: list[Steady], name: str) -> float:
    """The median over the rounds that measured ``name`` (NaN in none: :meth:`Steady.of`)."""
    measured = [value for value in (getattr(one, name) for one in values) if not math.isnan(value)]
    return float(np.median(measured)) if measured else math.nan


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
    """Harness vs bare loop in the steady state for each method, then each method's bare
    steady step cost relative to SimCLR's."""
    rows, bare = [], {}
    methods = settings.methods if "simclr" in settings.methods else ("simclr", *settings.methods)
    for method in methods:
        short = _pretrain_job(method, settings)
        long = _pretrain_job(method, settings, settings.short + settings.steady)
        steady, same = interleaved(short, long, short.pretrain.batch_size, settings, data_root)
        bare[method] = _median(steady["bare"], "step_rate")
        note = "same final loss" if same else "final losses differ"
        line = steady_row(f"pretraining {method} (images/s)", steady, note)
        rows.append(line)
        progress(f"pretraining {method}: harness/bare {line['ratio']:.3f} {_spread(line)}")
    for method in methods:
        note = "bare steady step time ratio, equal batch"
        rows.append(row(f"step cost {method} / simclr", 1 / bare[method], 1 / bare["simclr"],
                        "", None, note))  # fmt: skip
    return rows


def finetuning_row(settings: PerfSettings, data_root: Path) -> dict[str, Any]:
    short = _finetune_job(settings)
    long = _finetune_job(settings, settings.short + settings.steady)
    batch = short.finetune.batch_size
    steady, _ = interleaved(short, long, batch, settings, data_root)
    note = f"batch {batch}, {settings.short} + {settings.steady} steps"
    return steady_row("fine-tuning DeepLabV3+ (patches/s)", steady, note)


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
    """The rows as a table; a steady-state row's ratio with its spread over the rounds, and
    its fixed costs and CPU use in a second table."""
    table = [
        [
            row["measure"],
            f"{row['harness']:.4g}",
            f"{row['reference']:.4g}",
            f"{row['ratio']:.3f}" + (f" {_spread(row)}" if "spread" in row else ""),
            row["goal"],
            {True: "yes", False: "NO", None: ""}[row["ok"]],
            row["note"],
        ]
        for row in report["rows"]
    ]
    headers = ["measure", "harness/ours", "reference", "ratio", "goal", "met", "note"]
    fixed = [
        [row["measure"], f"{row['between_ms']['harness']:.2f}",
         f"{row['between_ms']['bare']:.2f}", f"{row['inside_ms']['harness']:.1f}",
         f"{row['period_ratio']:.3f} {_spread(row, 'period_spread')}",
         f"{row['slope_ratio']:.3f} {_spread(row, 'slope_spread')}",
         f"{row['fixed_seconds']['harness']:.2f}", f"{row['fixed_seconds']['bare']:.2f}",
         f"{row['cpu_per_wall']['harness']:.2f}", f"{row['cpu_per_wall']['bare']:.2f}"]
        for row in report["rows"] if "fixed_seconds" in row
    ]  # fmt: skip
    fixed_headers = ["steady state of", "ms between steps: harness", "bare", "ms in a step",
                     "ratio of step periods", "ratio of slopes", "fixed s: harness", "bare",
                     "CPU/wall: harness", "bare"]  # fmt: skip
    machine_line = ", ".join(f"{k} {v}" for k, v in report["machine"].items())
    return (
        tabulate(table, headers, tablefmt="github")
        + "\n\n"
        + tabulate(fixed, fixed_headers, tablefmt="github")
        + f"\n\nmachine: {machine_line}"
    )


def _spread(row: dict[str, Any], key: str = "spread") -> str:
    low, high = row[key]
    return f"[{low:.3f}, {high:.3f}]"


def write_perf_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
