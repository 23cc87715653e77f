"""The measurements and checks of ``benchmarks/gpu_check.py`` (imported once there is a
device to check: importing the harness takes seconds).

Everything runs the harness's own code: ``bench.perf``'s job builders, bare loops
(``prepare_pretraining`` / ``prepare_finetuning`` and the engine's step) and harness runs
(``bench.jobs.execute``), ``bench.evaluation.evaluate_tiles``, ``bench.distributed``,
``bench.pretrain.run_pretraining`` with its checkpoints. Only the clock is added: it reads
``time.perf_counter()`` after ``torch.cuda.synchronize()``, once after the warm-up steps
and once at the end.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist

from bench import distributed
from bench.config import canonical_json
from bench.datasets import create_dataset
from bench.datasets.base import PatchSet, TileLayout
from bench.datasets.prepared import cut_patches, patch_origins
from bench.datasets.synthetic import SyntheticLandCover, _save_npz
from bench.datasets.synthetic_scene import render_patch
from bench.engine import StepOutcome, autocast_for
from bench.evaluation import check_window, evaluate_tiles
from bench.finetune import (
    Normalizer,
    batch_indices,
    finetuning_model,
    labelled_batches,
    prepare_finetuning,
    segmentation_loss,
)
from bench.methods.base import StepContext
from bench.perf import (
    PerfSettings,
    _finetune_job,
    _pretrain_job,
    harness_finetuning,
    harness_pretraining,
    pretraining_methods,
)
from bench.preemption import Preempted, StopAtStep
from bench.pretrain import (
    epoch_batches,
    method_step,
    prepare_pretraining,
    pretraining_trainer,
    run_pretraining,
)
from bench.store import BACKBONE, CHECKPOINT, DECODER


# ----------------------------------------------------------------------------------------
# Sizes: the only difference between the real run and --dry-run (besides the device)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Where and how large. The ``--set`` items go over each preset's own values:
    ``pretrain`` for section 1, ``finetune`` for sections 2 and 3, ``checks`` over the
    ``quick`` preset for the CUDA-path checks of section 4."""

    device: torch.device
    presets: tuple[str, ...] = ("common", "paper")
    pretrain: tuple[str, ...] = ()
    finetune: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    warmup: int = 3  # steps before the clock (cuDNN's choices, the allocator, a compile)
    timed: int = 10  # steps timed after them
    tile: int = 6000  # the sliding-window tile's side (an ISPRS Potsdam tile)
    tile_patch: int = 256  # the patches the tile is cut into, as prepared
    window: int | None = None  # None: the protocol's eval_window and eval_stride
    stride: int | None = None
    render_workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    child_timeout_s: float = 120.0  # a process of a distributed check that hangs is killed


def real_sizes() -> Sizes:
    return Sizes(device=torch.device("cuda"))


def dry_sizes() -> Sizes:
    """Every section on the CPU in about a minute: ResNet-18, batch 4, 32 px views (64 px
    fine-tuning patches), a 256 px tile, one warm-up and one timed step."""
    tiny = ("pretrain.batch_size=4", "pretrain.view_size=32", "synthetic.patch_size=32")
    return Sizes(
        device=torch.device("cpu"),
        pretrain=("pretrain.backbone=resnet18", *tiny, "glcnet.region_size=12"),
        finetune=("pretrain.backbone=resnet18", "finetune.batch_size=2", "synthetic.patch_size=64"),
        checks=tiny,
        warmup=1,
        timed=1,
        tile=256,
        tile_patch=64,
        window=64,
        stride=32,
        render_workers=2,
        child_timeout_s=180.0,
    )


def describe(sizes: Sizes) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, torch.device) else v for k, v in sizes.__dict__.items()}


def estimates(sizes: Sizes) -> dict[str, float]:
    """What a measurement is expected to take before the first of its kind ran: a compile
    of ResNet-50's step takes minutes; the others are learnt as they run."""
    return {"compile": 150.0} if sizes.device.type == "cuda" else {}


# ----------------------------------------------------------------------------------------
# Small tools: the clock, memory, errors, synthetic data
# ----------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """A check ran and found something wrong (the message says what)."""


def error_text(error: BaseException) -> str:
    if isinstance(error, CheckFailed):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    return text if len(text) < 1500 else text[:1500] + " ..."


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last reset, MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Clock:
    """Seconds of a loop, read after the device finished its queued work: from the start,
    and from :meth:`lap` (the end of the warm-up)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.now()
        self.warm: float | None = None

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> None:
        self.warm = self.now()

    def rates(self, steps: int, warmup: int, batch: int) -> dict[str, Any]:
        """``images_per_s`` over all ``steps`` (warm-up included, as the job counts them),
        ``steady_images_per_s`` over the steps after the warm-up; ``warmup_s`` the warm-up's
        seconds (a compile's time is in it)."""
        end = self.now()
        out: dict[str, Any] = {"steps": steps, "warmup": warmup, "batch": batch}
        out["images_per_s"] = steps * batch / (end - self.start)
        if self.warm is not None and steps > warmup:
            out["steady_images_per_s"] = (steps - warmup) * batch / (end - self.warm)
            out["warmup_s"] = round(self.warm - self.start, 3)
        return out


def render_chunk(task: tuple[int, str, int, int, int, bool]) -> tuple[np.ndarray, np.ndarray]:
    seed, split, start, stop, size, ir = task
    pairs = [render_patch(seed, split, i, size=size, ir_band=ir) for i in range(start, stop)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def render_synthetic(job, data_root: Path, workers: int) -> None:
    """Write the cache that :class:`SyntheticLandCover` renders at its first load (its
    ``train.npz``, ``test.npz`` and ``params.json``), from the same ``render_patch`` calls
    spread over ``workers`` processes: the same arrays, minutes sooner (3,328 patches of
    256 px take about 1.5 min in one process)."""
    dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
    if not isinstance(dataset, SyntheticLandCover):
        return
    params, ir = dataset.params, job.data.bands == "rgbir"
    for split, count in (("train", params.n_train), ("test", params.n_test)):
        path = dataset.prepared_dir / f"{split}.npz"
        if path.exists():
            continue
        share = -(-count // workers)
        tasks = [
            (params.data_seed, split, start, min(start + share, count), params.patch_size, ir)
            for start in range(0, count, share)
        ]
        with multiprocessing.get_context("fork").Pool(len(tasks)) as pool:
            parts = pool.map(render_chunk, tasks)
        images, masks = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        _save_npz(path, images=images, masks=masks)
        key = {"params": params, "bands": job.data.bands}
        (dataset.prepared_dir / "params.json").write_text(canonical_json(key) + "\n")


def check_methods(methods: tuple[str, ...] | None) -> None:
    """Refuse names that are not registered pretraining methods, listing the valid ones."""
    valid = pretraining_methods()
    unknown = [m for m in methods or () if m not in valid]
    if unknown:
        raise ValueError(
            f"not a pretraining method: {', '.join(unknown)}; valid: {', '.join(valid)}"
        )


# ----------------------------------------------------------------------------------------
# The session: data folder, budget, report
# ----------------------------------------------------------------------------------------
class Session:
    """One run of the check: a temporary data folder (the synthetic patches rendered once,
    shared by every job of the same sizes), the budget and the report."""

    def __init__(self, sizes: Sizes, budget, report, methods: tuple[str, ...] | None) -> None:
        self.sizes, self.budget, self.report = sizes, budget, report
        self.device = sizes.device
        self.methods = methods or pretraining_methods()
        self._folder: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Session:
        self._folder = tempfile.TemporaryDirectory(prefix="gpu_check_")
        self.data_root = Path(self._folder.name) / "data"
        return self

    def __exit__(self, *exc: object) -> None:
        self._folder.cleanup()

    def run(self, section: str) -> None:
        SECTION_RUNS[section](self)

    def attempt(self, section: str, kind: str, measure: Callable[[], dict], **fields) -> dict:
        """One measurement or check as a row of ``section``: not started when the budget
        would run out (``skipped: budget``), an exception recorded as ``failed`` with its
        text; ``measure`` may return its own ``status`` and ``reason`` (e.g. skipped)."""
        estimate = self.budget.estimate(kind)
        if not self.budget.allows(estimate):
            left = max(self.budget.left(), 0.0)
            reason = f"skipped: budget ({left:.0f} s left, about {estimate:.0f} s needed)"
            row = {**fields, "status": "skipped", "reason": reason}
            self.report.add(section, row)
            return row
        label = fields.get("name") or f"{fields.get('case')} {fields.get('loop', '')}"
        print(f"  {section}: {label}", file=sys.stderr)
        started = time.perf_counter()
        try:
            row = {**fields, "status": "passed", **measure()}
        except Exception as error:  # noqa: BLE001  (one check never stops the others)
            row = {**fields, "status": "failed", "error": error_text(error)}
            row["traceback"] = traceback.format_exc()[-3000:]
        finally:
            release_memory()
        row["wall_s"] = round(time.perf_counter() - started, 2)
        self.budget.observe(kind, row["wall_s"])
        self.report.add(section, row)
        return row


def with_peak(device: torch.device, measure: Callable[[], dict]) -> dict:
    reset_peak(device)
    out = measure()
    return {**out, "peak_memory_mib": peak_mib(device)}


# ----------------------------------------------------------------------------------------
# Section 1: pretraining
# ----------------------------------------------------------------------------------------
MATRIX = (
    "Matrix, in this order (a short budget drops the last rows first): every method at the "
    "first preset's own precision (the precision its jobs run at; common: bf16 autocast) "
    "with channels_last, bare loop then harness; SimCLR at that preset with channels_last "
    "off (bf16, fp32) and with torch.compile on (bf16), bare loop; every method at the "
    "second preset's own precision (paper: fp32 as the releases ran), bare loop then "
    "harness; every method at the other precision of each preset, bare loop. Each "
    "measurement is one epoch of warm-up + timed steps of the preset's batch on its "
    "synthetic 256 px patches. channels_last and compile are toggled for SimCLR only: "
    "they change the convolutions, which every method shares."
)


@dataclass(frozen=True)
class PretrainCase:
    """One measurement of section 1; ``harness``: also time the real job (same precision,
    channels_last, no compile: the job as a preset runs it)."""

    preset: str
    method: str
    precision: str  # bf16: pretrain.amp=true (bf16 autocast on CUDA); fp32: amp=false
    channels_last: bool = True
    compile: bool = False
    harness: bool = False

    @property
    def key(self) -> str:
        layout = "" if self.channels_last else " contiguous"
        return f"{self.method} {self.preset} {self.precision}{layout}" + (
            " compiled" if self.compile else ""
        )

    def fields(self, loop: str) -> dict[str, Any]:
        names = ("method", "preset", "precision", "channels_last", "compile")
        return {"case": self.key, **{n: getattr(self, n) for n in names}, "loop": loop}


def pretrain_job(sizes: Sizes, case: PretrainCase, precision: str | None = None):
    """``bench perf``'s pretraining job of ``case`` (one epoch of warm-up + timed steps)."""
    overrides = [*sizes.pretrain, f"pretrain.compile={str(case.compile).lower()}"]
    if precision != "own":
        overrides.append(f"pretrain.amp={str(case.precision == 'bf16').lower()}")
    settings = PerfSettings(methods=(case.method,), preset=case.preset, overrides=tuple(overrides))
    return _pretrain_job(case.method, settings, sizes.warmup + sizes.timed)


def own_precision(sizes: Sizes, preset: str, method: str) -> str:
    job = pretrain_job(sizes, PretrainCase(preset, method, "bf16"), precision="own")
    return "bf16" if job.pretrain.amp else "fp32"


def pretraining_matrix(sizes: Sizes, methods: tuple[str, ...]) -> list[PretrainCase]:
    """The cases of :data:`MATRIX`, in its order."""
    own = {(p, m): own_precision(sizes, p, m) for p in sizes.presets for m in methods}
    other = {"bf16": "fp32", "fp32": "bf16"}
    first, *rest = sizes.presets
    cases = [PretrainCase(first, m, own[first, m], harness=True) for m in methods]
    if "simclr" in methods:
        cases += [PretrainCase(first, "simclr", x, channels_last=False) for x in ("bf16", "fp32")]
        cases.append(PretrainCase(first, "simclr", "bf16", compile=True))
    cases += [PretrainCase(p, m, own[p, m], harness=True) for p in rest for m in methods]
    cases += [PretrainCase(p, m, other[own[p, m]]) for p in sizes.presets for m in methods]
    return cases


def pretraining_steps(setup, job) -> Iterator[StepOutcome]:
    """``bench.perf.bare_pretraining``'s loop: the first epoch's batches through the
    engine's step (:func:`bench.pretrain.method_step`), nothing around it."""
    method, trainer = setup.method, setup.trainer
    method.train()
    batches = epoch_batches(setup.train, job.pretrain, job.seed, 0, trainer.device, trainer.place)
    total = job.pretrain.epochs * setup.steps_per_epoch
    for step, (images, _) in enumerate(batches):
        yield method_step(trainer, method, images, StepContext(step, total, 0))


def bare_pretraining(s: Session, case: PretrainCase) -> dict[str, Any]:
    """Images/s of the bare loop (all steps, and after the warm-up), its final loss, the
    peak memory and what one checkpoint costs; channels_last off converts the placed model
    back to NCHW."""
    if case.compile and s.device.type != "cuda":
        reason = "cpu: torch.compile is not run in --dry-run (an inductor build takes minutes)"
        return {"status": "skipped", "reason": reason}
    job = pretrain_job(s.sizes, case)
    render_synthetic(job, s.data_root, s.sizes.render_workers)
    reset_peak(s.device)
    setup = prepare_pretraining(job, s.data_root, s.device)
    if not case.channels_last:
        setup.method.to(memory_format=torch.contiguous_format)
    clock = Clock(s.device)
    outcome = None
    for index, outcome in enumerate(pretraining_steps(setup, job)):  # noqa: B007
        if index + 1 == s.sizes.warmup:
            clock.lap()
    cfg = job.pretrain
    rates = clock.rates(setup.steps_per_epoch, s.sizes.warmup, cfg.batch_size)
    note = f"{cfg.backbone}, batch {cfg.batch_size}, {cfg.view_size} px views"
    if s.device.type != "cuda":
        note += "; cpu: no autocast, the harness places no model channels_last"
    peak = peak_mib(s.device)  # before the checkpoint's copies to the host
    return {
        **rates,
        **checkpoint_cost(setup.trainer),  # what pretrain.checkpoint_minutes weighs
        "final_loss": outcome.loss,
        "peak_memory_mib": peak,
        "note": note,
    }


def harness_pretraining_row(s: Session, case: PretrainCase, bare: dict) -> dict[str, Any]:
    """Images/s of the real job (``bench.jobs.execute``: the epoch with logging, the
    health pass and the record), over the same steps as the bare loop."""
    job = pretrain_job(s.sizes, case)

    def measure() -> dict[str, Any]:
        rate, loss = harness_pretraining(job, s.data_root, s.device)
        return {"images_per_s": rate, "final_loss": loss}

    out = with_peak(s.device, measure)
    if out["final_loss"] == bare.get("final_loss"):
        out["note"] = "same final loss as the bare loop"
    else:
        out["note"] = (
            f"final loss {out['final_loss']:.6g} vs bare {bare.get('final_loss')!r} (GPU "
            "kernels need not be bit-exact between runs)"
        )
    return out


def pretraining_section(s: Session) -> None:
    s.report.begin("pretraining", matrix=MATRIX)
    for case in pretraining_matrix(s.sizes, s.methods):
        kind = "compile" if case.compile else f"pretrain-bare-{case.precision}"
        bare = s.attempt(
            "pretraining", kind, lambda c=case: bare_pretraining(s, c), **case.fields("bare")
        )
        if not case.harness:
            continue
        if bare["status"] != "passed":
            reason = f"skipped: the bare loop {bare['status']}"
            s.report.add(
                "pretraining", {**case.fields("harness"), "status": "skipped", "reason": reason}
            )
            continue
        s.attempt(
            "pretraining",
            f"pretrain-harness-{case.precision}",
            lambda c=case, b=bare: harness_pretraining_row(s, c, b),
            **case.fields("harness"),
        )


# ----------------------------------------------------------------------------------------
# Sections 2 and 3: fine-tuning and the sliding window
# ----------------------------------------------------------------------------------------
def finetune_job(sizes: Sizes, precision: str | None = None):
    """``bench perf``'s fine-tuning job under the first preset (its protocol: glcnet), at
    ``precision`` (None: the protocol's own)."""
    overrides = list(sizes.finetune)
    if precision is not None:
        overrides.append(f"finetune.amp={str(precision == 'bf16').lower()}")
    settings = PerfSettings(preset=sizes.presets[0], overrides=tuple(overrides))
    return _finetune_job(settings, sizes.warmup + sizes.timed)


def bare_finetuning(s: Session, job) -> dict[str, Any]:
    """``bench.perf.bare_finetuning``'s loop (the labelled batches through the engine's
    step, nothing around it), timed all steps and after the warm-up."""
    render_synthetic(job, s.data_root, s.sizes.render_workers)
    reset_peak(s.device)
    setup = prepare_finetuning(job, s.data_root, None, s.device)
    data, trainer, cfg = setup.data, setup.trainer, job.finetune
    order = batch_indices(len(data.labelled), cfg.batch_size, data.length, job.seed)
    steps = range(data.length.steps)
    batches = labelled_batches(data.labelled, order, data.normalize, trainer.device, steps)
    ignore = data.dataset.ignore_index
    clock = Clock(s.device)
    for step, (images, masks) in batches:
        trainer.step(step, lambda: segmentation_loss(setup.model, images, masks, cfg, ignore))  # noqa: B023
        if step + 1 == s.sizes.warmup:
            clock.lap()
    rates = clock.rates(data.length.steps, s.sizes.warmup, cfg.batch_size)
    size = job.dataset_params.patch_size
    note = f"{job.backbone} DeepLabV3+ ({cfg.protocol}), batch {cfg.batch_size}, {size} px"
    peak = peak_mib(s.device)
    return {**rates, **checkpoint_cost(trainer), "peak_memory_mib": peak, "note": note}


def checkpoint_cost(trainer) -> dict[str, Any]:
    """Seconds and MB of one checkpoint of ``trainer`` (weights, optimiser state, random
    states: what a periodic checkpoint writes) from the device into a temporary folder."""
    kept = trainer.checkpoint_path
    with tempfile.TemporaryDirectory() as tmp:
        trainer.checkpoint_path = Path(tmp) / CHECKPOINT
        try:
            started = time.perf_counter()
            trainer.save({"step": 0})
            seconds = time.perf_counter() - started
            size = trainer.checkpoint_path.stat().st_size
        finally:  # the trainer's own path, not the folder about to be removed
            trainer.checkpoint_path = kept
    return {"checkpoint_s": round(seconds, 3), "checkpoint_mb": round(size / 1e6, 1)}


def harness_finetuning_row(s: Session, job) -> dict[str, Any]:
    """Patches/s of the real job's training (``bench.jobs.execute``; its ``train_seconds``,
    the test split's scoring left out), over the same steps as the bare loop."""
    rate = with_peak(
        s.device, lambda: {"images_per_s": harness_finetuning(job, s.data_root, s.device)}
    )
    return {**rate, "note": "the job's train_seconds (the test split's scoring left out)"}


def finetuning_section(s: Session) -> None:
    own = "bf16" if finetune_job(s.sizes).finetune.amp else "fp32"
    other = {"bf16": "fp32", "fp32": "bf16"}[own]
    s.report.begin(
        "finetuning",
        what=(
            "The glcnet protocol's model (DeepLabV3+, output stride 16, non-separable ASPP) on "
            "the first preset's 256 px patches: bare loop and harness at the protocol's "
            "precision, bare loop at the other."
        ),
    )
    for precision, loop in ((own, "bare"), (own, "harness"), (other, "bare")):
        job = finetune_job(s.sizes, precision)
        fields = {"case": f"glcnet {precision}", "precision": precision, "loop": loop}
        run = bare_finetuning if loop == "bare" else harness_finetuning_row
        measure = lambda run=run, job=job: run(s, job)  # noqa: E731
        s.attempt("finetuning", f"finetune-{loop}-{precision}", measure, **fields)


def random_tile(size: int, patch: int, bands: int, classes: int):
    """A ``size`` px square tile of random pixels and labels, cut into ``patch`` px patches
    as a prepared dataset holds them, and its layout."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (bands, size, size), dtype=np.uint8)
    mask = rng.integers(0, classes, (size, size), dtype=np.uint8)
    images, masks, origins = cut_patches(image, mask, patch, patch)
    patches = PatchSet(images, masks, [f"tile_{i}" for i in range(len(images))])
    layout = TileLayout("tile", np.arange(len(images)), np.array(origins), size, size, patch)
    return patches, layout


def tile_evaluation(s: Session, job) -> dict[str, Any]:
    """Seconds and peak memory of ``evaluate_tiles`` (the harness's sliding-window scoring,
    with its confusion matrices) over one tile, with the protocol's window, stride and
    batch of windows."""
    cfg = job.finetune
    render_synthetic(job, s.data_root, s.sizes.render_workers)
    dataset = create_dataset(job.dataset, job.dataset_params, job.data, s.data_root)
    model = finetuning_model(job, dataset, None, s.device)[0]
    normalize = Normalizer(*dataset.band_stats(), s.device)
    patches, layout = random_tile(
        s.sizes.tile, s.sizes.tile_patch, dataset.in_channels, dataset.num_classes
    )
    window, stride = s.sizes.window or cfg.eval_window, s.sizes.stride or cfg.eval_stride
    check_window([layout], window, job.dataset)
    reset_peak(s.device)
    clock = Clock(s.device)
    scores = evaluate_tiles(
        model,
        patches,
        [layout],
        normalize,
        dataset.num_classes,
        dataset.ignore_index,
        window,
        stride,
        cfg.eval_batch_size,
        s.device,
        cfg.amp,
    )
    seconds = clock.now() - clock.start
    windows = len(patch_origins(s.sizes.tile, window, stride)) ** 2
    return {
        "tile": f"{s.sizes.tile}x{s.sizes.tile} px, {dataset.in_channels} bands",
        "windows": windows,
        "seconds": round(seconds, 3),
        "windows_per_s": windows / seconds,
        "peak_memory_mib": peak_mib(s.device),
        "miou": scores["miou"],
        "note": f"{job.backbone}, window {window}, stride {stride}, batch {cfg.eval_batch_size}",
    }


def sliding_window_section(s: Session) -> None:
    own = "bf16" if finetune_job(s.sizes).finetune.amp else "fp32"
    s.report.begin(
        "sliding_window",
        what=(
            "bench.evaluation.evaluate_tiles on one tile of random pixels (the protocol's model, "
            "random weights): windows predicted a row at a time, overlapping logits averaged, "
            "scored; at the protocol's precision, then the other."
        ),
    )
    for precision in (own, {"bf16": "fp32", "fp32": "bf16"}[own]):
        job = finetune_job(s.sizes, precision)
        s.attempt(
            "sliding_window",
            f"tile-{precision}",
            lambda j=job: tile_evaluation(s, j),
            name=f"tile {precision}",
            precision=precision,
        )


# ----------------------------------------------------------------------------------------
# Section 4: the CUDA-only paths
# ----------------------------------------------------------------------------------------
def check_job(sizes: Sizes, steps: int = 4):
    """A short SimCLR pretraining of the ``quick`` preset (ResNet-18, bf16 autocast on CUDA;
    SimCLR asks for SyncBatchNorm on several processes)."""
    settings = PerfSettings(methods=("simclr",), preset="quick", overrides=sizes.checks)
    return _pretrain_job("simclr", settings, steps)


def check_grad_scaler(s: Session, job) -> dict[str, Any]:
    """The fp16 path of a GPU without bf16 (a V100): the engine's GradScaler enabled, fp16
    autocast, a few steps with finite losses, the scaler's state in the checkpoint. On a
    bf16 GPU this is reached by making ``torch.cuda.is_bf16_supported`` answer False."""
    cuda = s.device.type == "cuda"
    fp16 = mock.patch.object(torch.cuda, "is_bf16_supported", return_value=False)
    with fp16 if cuda else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        setup = prepare_pretraining(job, s.data_root, s.device, run_dir=Path(tmp))
        trainer = setup.trainer
        autocast = autocast_for(s.device, job.pretrain.amp)
        dtype = str(getattr(autocast, "fast_dtype", None))
        losses = [o.loss for o in islice(pretraining_steps(setup, job), 3)]
        trainer.save({"epoch": 0, "batch": 3, "totals": {}})
        saved = "scaler" in trainer.load()
    enabled = trainer.scaler.is_enabled()
    scale = trainer.scaler.get_scale() if enabled else None
    problems = [] if all(map(math.isfinite, losses)) else [f"non-finite losses {losses}"]
    if cuda and not (enabled and dtype == "torch.float16" and saved):
        problems.append(f"scaler enabled {enabled}, autocast {dtype}, in checkpoint {saved}")
    if problems:
        raise CheckFailed("; ".join(problems))
    if not cuda:
        note = (
            "cpu: not applicable (GradScaler disabled, no autocast); the code path ran with "
            f"enabled=False, losses {', '.join(f'{x:.4g}' for x in losses)}"
        )
    else:
        note = (
            f"fp16 autocast, GradScaler on: 3 steps, losses "
            f"{', '.join(f'{x:.4g}' for x in losses)}, scale {scale:g}; saved and loaded "
            "with the checkpoint"
        )
    return {"losses": losses, "scale": scale, "scaler_enabled": enabled, "note": note}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_main(target: str, rank: int, world: int, port: int, payload: dict, folder: str):
    """A process of a distributed check: torch's ``env://`` variables, then ``target``;
    its result (or error) in ``folder/<rank>.json``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    if payload["device"] == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        result = globals()[target](rank, world, payload)
    except BaseException as error:  # noqa: BLE001  (reported to the parent)
        result = {"error": error_text(error), "traceback": traceback.format_exc()[-3000:]}
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    (Path(folder) / f"{rank}.json").write_text(json.dumps(result))


@contextlib.contextmanager
def gpus_hidden(hide: bool) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES`` empty for the processes started inside (a dry run's
    children stay on the CPU on a machine with GPUs, where the harness would pick NCCL)."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def spawn(target: str, world: int, payload: dict, timeout: float) -> list[dict[str, Any]]:
    """``target(rank, world, payload)`` in ``world`` fresh processes (spawned: no CUDA
    state inherited); what each returned, or its error, or that it timed out (killed)."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        procs = [
            context.Process(target=child_main, args=(target, r, world, port, payload, folder))
            for r in range(world)
        ]
        with gpus_hidden(payload["device"] == "cpu"):
            for proc in procs:
                proc.start()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        results = []
        for rank, proc in enumerate(procs):
            late = proc.is_alive()
            if late:
                proc.kill()
                proc.join()
            path = Path(folder) / f"{rank}.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
            elif late:
                results.append({"error": f"rank {rank} timed out after {timeout:.0f} s"})
            else:
                results.append({"error": f"rank {rank} exited ({proc.exitcode}) without a result"})
    return results


def norm_layers(module: torch.nn.Module) -> dict[str, int]:
    """How many normalisation layers of each class ``module`` holds."""
    counts: dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def one_process_world(rank: int, world: int, payload: dict) -> dict[str, Any]:
    """NCCL (gloo on the CPU) in a world of one: an all-reduce, then the harness's batch
    norm conversion (``bench.distributed.convert_batchnorm``: SyncBatchNorm on CUDA) and
    two steps of the engine with it (a world of one syncs nothing: BN's own kernels)."""
    cuda, job = payload["device"] == "cuda", payload["job"]
    device, backend = (torch.device("cuda", 0), "nccl") if cuda else (torch.device("cpu"), "gloo")
    if cuda:
        torch.cuda.set_device(device)  # needs an index: torch.device("cuda") is refused
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=90))
    total = torch.ones(4, device=device)
    dist.all_reduce(total)
    setup = prepare_pretraining(job, payload["data_root"], device)
    method = distributed.convert_batchnorm(setup.method, device)
    schedule = setup.trainer.schedule  # the optimiser again, over the converted layers
    setup.method, setup.trainer = method, pretraining_trainer(job, method, device, schedule, None)
    losses = [o.loss for o in islice(pretraining_steps(setup, job), 2)]
    return {
        "backend": backend,
        "all_reduce": total.tolist(),
        "layers": norm_layers(method),
        "losses": losses,
    }


def check_one_process_world(s: Session, job) -> dict[str, Any]:
    payload = {"device": s.device.type, "job": job, "data_root": str(s.data_root)}
    result = spawn("one_process_world", 1, payload, s.sizes.child_timeout_s)[0]
    if "error" in result:
        raise CheckFailed(result["error"])
    expected = "SyncBatchNorm" if s.device.type == "cuda" else "GlobalBatchNorm"
    layers, losses = result["layers"], result["losses"]
    if not layers.get(expected) or not all(map(math.isfinite, losses)):
        raise CheckFailed(f"norm layers {layers}, losses {losses} (expected {expected})")
    note = (
        f"{result['backend']}, world of 1: all-reduce {result['all_reduce'][0]:g}; "
        f"{layers[expected]} {expected} layers, 2 steps, losses "
        f"{', '.join(f'{x:.4g}' for x in losses)}"
    )
    if s.device.type != "cuda":
        note = "cpu: gloo in place of NCCL, GlobalBatchNorm in place of SyncBatchNorm; " + note
    return {"backend": result["backend"], "note": note}


@contextlib.contextmanager
def process_group(payload: dict, world: int) -> Iterator[distributed.Topology]:
    """The harness's own group (``bench.distributed.process_group``: NCCL on GPUs, gloo on
    CPUs), or gloo on one GPU (NCCL refuses two ranks on one device)."""
    if payload["backend"] == "harness":
        with distributed.process_group(world) as place:
            yield place
        return
    torch.cuda.set_device(0)
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))
    try:
        yield distributed.topology()
    finally:
        dist.destroy_process_group()


def data_parallel(rank: int, world: int, payload: dict) -> dict[str, Any]:
    """One process of a data-parallel pretraining as the harness runs it: an all-reduce of
    ``rank + 1``, ``prepare_pretraining`` for ``world`` processes (SimCLR's batch norm
    converted, rank 0's weights broadcast), two steps of the engine (gathered views,
    averaged gradients), then a checksum of the weights, which must agree everywhere."""
    job = payload["job"]
    with process_group(payload, world) as place:
        device = place.device() if payload["device"] == "cuda" else torch.device("cpu")
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        setup = prepare_pretraining(job, payload["data_root"], device, world_size=world)
        losses = [o.loss for o in islice(pretraining_steps(setup, job), 2)]
        checksum = float(sum(p.detach().double().sum() for p in setup.method.parameters()))
        checksums = distributed.gather_objects(checksum)
        backend = dist.get_backend()
    return {
        "backend": backend,
        "device": str(device),
        "all_reduce": value.item(),
        "layers": norm_layers(setup.method),
        "losses": losses,
        "checksums": checksums,
    }


def check_data_parallel(s: Session, job) -> dict[str, Any]:
    """Two processes: NCCL on two GPUs (the harness's own group), gloo sharing one GPU when
    there is only one, gloo on the CPU in a dry run."""
    gpus = torch.cuda.device_count() if s.device.type == "cuda" else 0
    own = s.device.type != "cuda" or gpus >= 2
    payload = {
        "device": s.device.type,
        "job": job,
        "data_root": str(s.data_root),
        "backend": "harness" if own else "gloo",
    }
    results = spawn("data_parallel", 2, payload, s.sizes.child_timeout_s)
    errors = [f"rank {r}: {x['error']}" for r, x in enumerate(results) if "error" in x]
    if errors:
        raise CheckFailed("; ".join(errors))
    first = results[0]
    expected = "SyncBatchNorm" if s.device.type == "cuda" else "GlobalBatchNorm"
    problems = []
    if not first["layers"].get(expected):
        problems.append(f"norm layers {first['layers']}, expected {expected}")
    if any(x["losses"] != first["losses"] for x in results) or not all(
        map(math.isfinite, first["losses"])
    ):
        problems.append(f"losses per rank {[x['losses'] for x in results]}")
    if len(set(first["checksums"])) != 1:
        problems.append(f"weights differ between ranks (checksums {first['checksums']})")
    if first["all_reduce"] != 3.0:
        problems.append(f"all-reduce of 1 + 2 gave {first['all_reduce']}")
    if problems:
        raise CheckFailed("; ".join(problems))
    why = "" if own else " (fallback: 1 GPU, NCCL cannot put two ranks on one GPU)"
    note = (
        f"{first['backend']}{why}, {first['device']}: {first['layers'][expected]} "
        f"{expected} layers, 2 steps, losses {', '.join(f'{x:.4g}' for x in first['losses'])}"
        " on both ranks, identical weights after the steps"
    )
    return {
        "backend": first["backend"],
        "gpus": gpus,
        "all_reduce": first["all_reduce"],
        "note": note,
    }


def nccl_all_reduce(s: Session, parallel: dict) -> dict[str, Any]:
    """Read from the data-parallel check, which runs the two-process all-reduce."""
    if s.device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"status": "skipped", "reason": "skipped: 1 GPU"}
    if parallel["status"] != "passed":
        raise CheckFailed(f"the two-process run {parallel['status']}: {parallel.get('error')}")
    prefix = "cpu: gloo in place of NCCL; " if s.device.type != "cuda" else ""
    total = parallel["all_reduce"]
    return {"note": f"{prefix}{parallel['backend']}: all-reduce of 1 + 2 = {total:g}"}


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """cuDNN's deterministic algorithms and torch's deterministic mode (warnings only),
    restored afterwards: a resumed run can only be compared bit for bit without atomics."""
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def weight_differences(first: Path, second: Path) -> tuple[list[str], float]:
    """Saved tensors (backbone.pt, decoder.pt) that differ between two run folders, and
    the largest absolute difference."""
    differ, largest = [], 0.0
    for name in (BACKBONE, DECODER):
        if not (first / name).exists():
            continue
        a = torch.load(first / name, map_location="cpu", weights_only=True)
        b = torch.load(second / name, map_location="cpu", weights_only=True)
        for key, tensor in a.items():
            if not torch.equal(tensor, b[key]):
                differ.append(f"{name}:{key}")
                delta = (tensor.double() - b[key].double()).abs().max().item()
                largest = max(largest, delta)
    return differ, largest


def pretraining_run(s: Session, job, folder: Path, stop_at: int | None = None) -> dict | None:
    """``run_pretraining`` on the device into ``folder``; stopped (checkpointed) during step
    ``stop_at`` when given, as a SIGTERM there would: None then."""
    folder.mkdir(parents=True, exist_ok=True)
    if stop_at is None:
        return run_pretraining(job, folder, s.data_root, device=s.device)
    try:
        run_pretraining(job, folder, s.data_root, StopAtStep(stop_at), device=s.device)
    except Preempted:
        return None
    raise CheckFailed(f"the run did not stop at step {stop_at}")


def check_resume(s: Session, job) -> dict[str, Any]:
    """A run stopped mid-epoch (checkpoint written on the device: weights, optimiser,
    scaler, CPU and CUDA random states) and resumed must end with the weights and final
    loss of an uninterrupted run, bit for bit (cuDNN deterministic). If not, a second
    uninterrupted run tells the GPU's own non-determinism from a resume fault."""
    with deterministic(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        whole = pretraining_run(s, job, root / "whole")
        pretraining_run(s, job, root / "resumed", stop_at=2)
        resumed = pretraining_run(s, job, root / "resumed")
        differ, largest = weight_differences(root / "whole", root / "resumed")
        where = f"epoch {resumed['resumed_from_epoch'] + 1}, batch {resumed['resumed_from_batch']}"
        if resumed["resumed_from_batch"] != 2:
            raise CheckFailed(f"resumed from {where}, not from the checkpoint of step 2")
        if not differ and whole["final_loss"] == resumed["final_loss"]:
            return {
                "note": (
                    f"{resumed['device']}: stopped at step 2 of {resumed['steps']}, "
                    f"resumed from {where}: backbone and final loss "
                    f"({whole['final_loss']:.6g}) bit-identical to an uninterrupted "
                    "run"
                )
            }
        again = pretraining_run(s, job, root / "again")
        baseline, _ = weight_differences(root / "whole", root / "again")
        same = not baseline and again["final_loss"] == whole["final_loss"]
        raise CheckFailed(
            f"resumed from {where}: {len(differ)} saved tensors differ (max |diff| "
            f"{largest:.3g}), final loss {resumed['final_loss']!r} vs {whole['final_loss']!r}; "
            + (
                "two uninterrupted runs agree, so the resume loses state"
                if same
                else "two uninterrupted runs differ too: the GPU kernels are not "
                "deterministic here, the resume cannot be judged bit for bit"
            )
        )


def cuda_paths_section(s: Session) -> None:
    s.report.begin(
        "cuda_paths",
        what=(
            "Each path run for real on a short SimCLR pretraining of the quick preset "
            "(ResNet-18, bf16 autocast on CUDA); pass/fail with the error text."
        ),
    )
    job = check_job(s.sizes)
    render_synthetic(job, s.data_root, s.sizes.render_workers)
    add = s.attempt
    add("cuda_paths", "scaler", lambda: check_grad_scaler(s, job), name="GradScaler with fp16")
    add(
        "cuda_paths",
        "one-process",
        lambda: check_one_process_world(s, job),
        name="SyncBatchNorm in a one-process NCCL world",
    )
    parallel = add(
        "cuda_paths",
        "two-process",
        lambda: check_data_parallel(s, job),
        name="data-parallel step, 2 processes, SyncBatchNorm",
    )
    add(
        "cuda_paths",
        "nccl",
        lambda: nccl_all_reduce(s, parallel),
        name="NCCL all-reduce, 2 processes",
    )
    add(
        "cuda_paths",
        "resume",
        lambda: check_resume(s, job),
        name="checkpoint written on the device, resumed bit-exactly",
    )


SECTION_RUNS: dict[str, Callable[[Session], None]] = {
    "pretraining": pretraining_section,
    "finetuning": finetuning_section,
    "sliding_window": sliding_window_section,
    "cuda_paths": cuda_paths_section,
}
