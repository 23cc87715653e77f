"""What a sweep costs before it runs (``bench plan``): per job its optimisation steps and
images seen, and hours on one GPU from a per-method throughput table.

Counts are exact where the data sizes are known: a generated dataset's settings, a
prepared dataset's manifest, or, for a release whose tile sizes are published
(``../shared/DATASETS.md``), the patch grid the prepare step would cut. Hours are not:

- No GPU throughput has been measured for this harness (BENCHMARKS.md has CPU figures
  only), so the default table is an estimate built from one assumed figure,
  :data:`SIMCLR_GPU_RATE`, times each method's step cost relative to SimCLR, measured on CPU
  (BENCHMARKS.md, ``bench perf``). Every rate says where it comes from.
- ``bench perf --output perf.json`` run on the user's GPU replaces the table with its
  measured rates (:func:`perf_rates`).
- A rate measured or assumed at one backbone, view size and precision is scaled to a job's
  by the backbones' FLOPs and the pixels per view (compute-bound steps; small views on a
  large GPU run below that, so scaling up a small measurement overestimates the hours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.datasets import create_dataset
from bench.datasets.isprs import POTSDAM_TEST, POTSDAM_TRAIN
from bench.datasets.prepared import PreparedDataset, patch_origins, seeded_split
from bench.datasets.subsets import subset_size
from bench.datasets.synthetic import SyntheticLandCover
from bench.jobs import FinetuneJob, Job, PretrainJob

# torchvision's published GFLOPS per 224 px image (model docs): the scale between backbones.
BACKBONE_GFLOPS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09}
# ASSUMED, not measured: SimCLR images (two 224 px views each) per second on one A100-class
# GPU, ResNet-50, bf16 autocast; the order of NVIDIA's published ResNet-50 training rates
# (DeepLearningExamples, ~2,000-3,000 images/s with mixed precision), halved for two views.
SIMCLR_GPU_RATE = 1000.0
# float32 steps (pretrain.amp=false, the VISSL and GLCNet releases) take about twice as long
# as bf16 ones on such a GPU (assumed from the same tables' TF32 vs mixed-precision rates).
FLOAT32_SLOWDOWN = 2.0
# Bare step time relative to SimCLR at equal batch, measured on CPU (BENCHMARKS.md,
# `bench perf --repeats 3`, quick preset: ResNet-18, batch 64, 48 px views, 2026-11-21).
CPU_STEP_COST = {
    "simclr": 1.0,
    "moco": 0.73,
    "byol": 1.568,
    "false": 1.098,
    "grass": 1.357,
    "glcnet": 2.319,
    "multitask": 1.826,
}
# A DeepLabV3+ training patch (256 px) costs what this many SimCLR images (224 px views)
# cost, measured on CPU with ResNet-18 (BENCHMARKS.md: 2.0 SimCLR images/s, 0.3 patches/s).
FINETUNE_PATCH_COST = 2.0 / 0.3
# Scoring a patch is a forward pass: about a third of a training step (forward + backward).
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class Rate:
    """Images (pretraining) or patches (fine-tuning) per second at ``backbone``, ``side`` px
    and ``amp``; ``measured``: by ``bench perf`` rather than assumed; ``source`` says how."""

    per_second: float
    backbone: str
    side: int
    amp: bool
    measured: bool
    source: str

    def seconds(self, count: int, backbone: str, side: int, amp: bool, gpu: bool) -> float:
        """Seconds for ``count`` images at a job's backbone, side and precision."""
        scale = BACKBONE_GFLOPS[backbone] / BACKBONE_GFLOPS[self.backbone]
        scale *= (side / self.side) ** 2
        if gpu:  # precision matters on a GPU; on CPU autocast is off
            scale *= (1 if amp else FLOAT32_SLOWDOWN) / (1 if self.amp else FLOAT32_SLOWDOWN)
        return count / self.per_second * scale


@dataclass(frozen=True)
class Rates:
    """The throughput table: pretraining per method, DeepLabV3+ fine-tuning, on ``device``."""

    pretrain: dict[str, Rate]
    finetune: Rate
    device: str
    gpu: bool

    def of(self, method: str) -> Rate:
        if method in self.pretrain:
            return self.pretrain[method]
        simclr = DEFAULT_RATES.pretrain["simclr"]
        return replace(simclr, source=f"{method}: no step cost known, SimCLR's estimate")


def _default_rates() -> Rates:
    assumed = (
        f"SimCLR's GPU rate assumed in bench/cost.py ({SIMCLR_GPU_RATE:,.0f} images/s, ResNet-50, "
        "224 px, bf16, one A100-class GPU)"
    )
    pretrain = {
        method: Rate(
            SIMCLR_GPU_RATE / cost,
            "resnet50",
            224,
            True,
            False,
            f"{assumed} / the method's step cost vs SimCLR measured on CPU (BENCHMARKS.md)",
        )
        for method, cost in CPU_STEP_COST.items()
    }
    finetune = Rate(
        SIMCLR_GPU_RATE / FINETUNE_PATCH_COST,
        "resnet50",
        256,
        True,
        False,
        f"{assumed} / {FINETUNE_PATCH_COST:.2g}, a DeepLabV3+ patch's cost vs a SimCLR image's "
        "measured on CPU (BENCHMARKS.md)",
    )
    return Rates(pretrain, finetune, "GPU (estimated)", True)


DEFAULT_RATES = _default_rates()


# ----------------------------------------------------------------------------------------
# Rates measured by `bench perf --output FILE`
# ----------------------------------------------------------------------------------------
def throughput_table(path: Path | str | None) -> Rates:
    """The rates of a ``bench perf`` report, or :data:`DEFAULT_RATES` without one."""
    return DEFAULT_RATES if path is None else perf_rates(Path(path))


def perf_rates(path: Path) -> Rates:
    """Measured rates from the JSON ``bench perf --output`` writes (:mod:`bench.perf`): each
    method's pretraining images/s and DeepLabV3+ patches/s through the harness, at the
    backbone, view size and precision of the perf run's preset; methods it did not
    measure keep their estimates."""
    report = _read_perf(path)
    settings, machine = report["settings"], report["machine"]
    device = str(machine.get("gpu") or machine.get("device", "?"))
    rates = {row["measure"]: float(row["harness"]) for row in report["rows"]}
    where = f"measured by bench perf on {device} ({path})"
    pretrain = dict(DEFAULT_RATES.pretrain)
    for method in settings.get("methods", ()):
        rate = rates.get(f"pretraining {method} (images/s)")
        if rate:
            job = _perf_job(settings, method, PretrainJob)
            cfg = job.pretrain
            pretrain[method] = Rate(rate, cfg.backbone, cfg.view_size, cfg.amp, True, where)
    finetune, patches = DEFAULT_RATES.finetune, rates.get("fine-tuning DeepLabV3+ (patches/s)")
    if patches:
        job = _perf_job(settings, "random", FinetuneJob)
        side, amp = job.dataset_params.patch_size, job.finetune.amp
        finetune = Rate(patches, job.backbone, side, amp, True, where)
    gpu = str(machine.get("device", "")).startswith("cuda")
    return Rates(pretrain, finetune, device, gpu)


def _read_perf(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"perf report {path} does not exist (write one: bench perf --output)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"perf report {path} cannot be read: {error}") from None
    keys = ("settings", "machine", "rows")
    if not isinstance(report, dict) or any(key not in report for key in keys):
        raise ConfigError(
            f"perf report {path} is not one `bench perf --output` writes (needs {', '.join(keys)})"
        )
    return report


def _perf_job(settings: dict[str, Any], method: str, kind: type) -> Job:
    """A job of the perf run's preset and settings (for its backbone, sizes, precision)."""
    from bench.sweep import SweepSpec, plan

    spec = SweepSpec(
        methods=(method,),
        fractions=(1.0,),
        seeds=(0,),
        preset=settings.get("preset", "quick"),
        overrides=tuple(settings.get("overrides", ())),
    )
    return next(job for job in plan(spec) if isinstance(job, kind))


# ----------------------------------------------------------------------------------------
# Data sizes
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Training and test patches of a dataset (None: not known before it is prepared)."""

    train: int | None
    test: int | None
    source: str


# Releases whose image sizes are published (../shared/DATASETS.md): name -> (train and
# test images, or None where a seeded split decides, all images, height, width).
RELEASES: dict[str, tuple[tuple[int, int] | None, int, int, int]] = {
    "potsdam": ((len(POTSDAM_TRAIN), len(POTSDAM_TEST)), 38, 6000, 6000),  # 6000 px tiles
    "deepglobe": (None, 803, 2448, 2448),  # 803 labelled 2448 px images, seeded split
}


def dataset_sizes(job: Job, data_root: Path | str | None) -> Sizes:
    """Patch counts of a job's dataset: generated, prepared, or from the release's sizes."""
    dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
    if isinstance(dataset, SyntheticLandCover):
        return Sizes(dataset.params.n_train, dataset.params.n_test, "generated")
    if not isinstance(dataset, PreparedDataset):
        return Sizes(None, None, "a plugin dataset: sizes unknown before it runs")
    try:
        splits = dataset.manifest()["splits"]
        train, test = int(splits["train"]["patches"]), int(splits["test"]["patches"])
        return Sizes(train, test, f"prepared in {dataset.prepared_dir}")
    except (ConfigError, KeyError, TypeError, ValueError):
        return release_sizes(dataset)


def release_sizes(dataset: PreparedDataset) -> Sizes:
    """The patches ``prepare`` would cut from a release of published image sizes."""
    if dataset.name not in RELEASES:
        return Sizes(None, None, "not prepared here; its sizes are known once it is")
    split, images, height, width = RELEASES[dataset.name]
    patch, stride = dataset.params.patch_size, dataset.stride
    per_image = len(patch_origins(height, patch, stride)) * len(patch_origins(width, patch, stride))
    if split is None:  # DeepGlobe: the seeded split by image id (DeepGlobeParams)
        params = dataset.params
        ids = seeded_split([str(n) for n in range(images)], params.test_fraction, params.split_seed)
        test = sum(part == "test" for part in ids.values())
        split = (images - test, test)
    source = f"from the release's {images} images of {height} x {width} px; not prepared here"
    return Sizes(split[0] * per_image, split[1] * per_image, source)


# ----------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobCost:
    """One job: optimisation steps, images (or patches) trained on, test patches scored,
    and hours on one device; None where the data sizes are not known."""

    job: Job
    steps: int | None
    images: int | None
    scored: int
    hours: float | None


@dataclass(frozen=True)
class Estimate:
    jobs: list[JobCost]
    sizes: dict[str, Sizes]  # dataset -> sizes
    rates: Rates


def estimate_cost(jobs: list[Job], data_root: Path | str | None, rates: Rates) -> Estimate:
    """Steps, images seen and hours of every job of a plan (:func:`bench.sweep.plan`)."""
    sizes: dict[tuple, Sizes] = {}
    costs = []
    for job in jobs:
        key = (job.dataset, job.dataset_params, job.data)
        if key not in sizes:
            sizes[key] = dataset_sizes(job, data_root)
        size = sizes[key]
        cost = pretrain_cost if isinstance(job, PretrainJob) else finetune_cost
        costs.append(cost(job, size, rates))
    return Estimate(costs, {key[0]: size for key, size in sizes.items()}, rates)


def pretrain_cost(job: PretrainJob, sizes: Sizes, rates: Rates) -> JobCost:
    """``epochs x floor(train / batch)`` steps (the loader drops the last partial batch)."""
    if sizes.train is None:
        return JobCost(job, None, None, 0, None)
    cfg = job.pretrain
    steps = cfg.epochs * (sizes.train // cfg.batch_size)
    images = steps * cfg.batch_size
    seconds = rates.of(job.method).seconds(images, cfg.backbone, cfg.view_size, cfg.amp, rates.gpu)
    return JobCost(job, steps, images, 0, seconds / 3600)


def finetune_cost(job: FinetuneJob, sizes: Sizes, rates: Rates) -> JobCost:
    """The fine-tuning's steps (:class:`bench.finetune.TrainingLength`) on its labelled
    patches, then one forward pass per test patch (overlapping windows for whole tiles)."""
    from bench.finetune import TrainingLength

    if sizes.train is None or sizes.test is None:
        return JobCost(job, None, None, 0, None)
    cfg = job.finetune
    steps = TrainingLength.of(cfg, subset_size(sizes.train, job.fraction)).steps
    images = steps * cfg.batch_size
    overlap = (cfg.eval_window / cfg.eval_stride) ** 2 if cfg.evaluation == "tiles" else 1
    scored = round(sizes.test * overlap)
    side = getattr(job.dataset_params, "patch_size", 256)
    passes = images + scored * FORWARD_SHARE
    seconds = rates.finetune.seconds(round(passes), job.backbone, side, cfg.amp, rates.gpu)
    return JobCost(job, steps, images, scored, seconds / 3600)


def format_estimate(estimate: Estimate) -> str:
    """The estimate as ``plan`` prints it: totals by stage and method, the data sizes and
    the throughput of each method with its source."""
    rates = estimate.rates
    unit = "GPU-hours" if rates.gpu else f"hours on {rates.device}"
    lines = [f"estimated compute, in {unit}:", f"  ({_measured_note(estimate)})"]
    lines.append(f"  {'stage':<12} {'jobs':>5} {'steps':>13} {'images seen':>15} {unit:>10}")
    for kind, label in (("pretrain", "pretraining"), ("finetune", "fine-tuning")):
        costs = [c for c in estimate.jobs if c.job.kind == kind]
        known = [c for c in costs if c.hours is not None]
        steps, images = sum(c.steps for c in known), sum(c.images for c in known)
        hours = sum(c.hours for c in known)
        lines.append(f"  {label:<12} {len(costs):>5} {steps:>13,} {images:>15,} {_h(hours):>10}")
    known = [c for c in estimate.jobs if c.hours is not None]
    total = sum(c.hours for c in known)
    lines.append(f"  {'total':<12} {len(estimate.jobs):>5} {'':>13} {'':>15} {_h(total):>10}")
    scored = sum(c.scored for c in known if c.job.kind == "finetune")
    lines.append(f"  (fine-tuning includes scoring {scored:,} test patches, forward passes only)")
    by_method: dict[str, float] = {}
    for cost in known:
        by_method[cost.job.method] = by_method.get(cost.job.method, 0.0) + cost.hours
    lines.append("  by method: " + ", ".join(f"{m} {_h(h)}" for m, h in by_method.items()))
    lines += [f"  data: {name}: {_sizes_text(s)}" for name, s in estimate.sizes.items()]
    lines += _rate_lines(estimate)
    unknown = [c for c in estimate.jobs if c.hours is None]
    if unknown:
        names = ", ".join(dict.fromkeys(c.job.dataset for c in unknown))
        lines.append(
            f"  left out of the totals: {len(unknown)} job{'s' * (len(unknown) != 1)} on {names} "
            "(sizes unknown until prepared; prepare, then plan again)"
        )
    return "\n".join(lines)


def _h(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 1 else f"{hours:.2g}"


def _measured_note(estimate: Estimate) -> str:
    rates = [estimate.rates.of(m) for m in dict.fromkeys(c.job.method for c in estimate.jobs)]
    rates.append(estimate.rates.finetune)
    if all(rate.measured for rate in rates):
        return f"every rate measured by bench perf on {estimate.rates.device}"
    return "rates marked ESTIMATE are not measured; give measured ones with --perf PERF.json, " \
        "written by `bench perf --output PERF.json` on your GPU"  # fmt: skip


def _sizes_text(sizes: Sizes) -> str:
    if sizes.train is None or sizes.test is None:
        return f"sizes unknown ({sizes.source})"
    return f"{sizes.train:,} train / {sizes.test:,} test patches ({sizes.source})"


def _rate_lines(estimate: Estimate) -> list[str]:
    """Each rate the estimate used (per second, backbone, size, precision), its source a
    numbered note."""
    rates = estimate.rates
    lines = ["  throughput (scaled to each job's backbone, view size and precision):"]
    methods = dict.fromkeys(c.job.method for c in estimate.jobs if c.job.kind == "pretrain")
    named = [(m, rates.of(m), "images") for m in methods]
    named.append(("fine-tuning", rates.finetune, "patches"))
    sources = list(dict.fromkeys(rate.source for _, rate, _ in named))
    for name, rate, what in named:
        precision = "bf16" if rate.amp else "fp32"
        kind = "measured" if rate.measured else "ESTIMATE"
        lines.append(
            f"    {name:<12} {rate.per_second:>9,.1f} {what}/s  {rate.backbone} {rate.side} px "
            f"{precision}  {kind} [{sources.index(rate.source) + 1}]"
        )
    lines += [f"    [{n}] {source}" for n, source in enumerate(sources, 1)]
    return lines
