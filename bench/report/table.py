"""Result records -> a typed comparison table: cells, ranks, Δ and paired tests; no text.

Definitions (README "Comparison tables" says the same):

- A *cell* is one method in one column. A column is dataset x label fraction x metric (or
  one class of a per-class IoU table). Its values are the metric of the method's finished
  (``"ok"``) fine-tuning runs, one per seed, in percent.
- Mean and *sample* standard deviation (``ddof=1``) over those seeds; one seed has no std.
- Ranks compare the means rounded to the shown precision (``DECIMALS``), so what looks tied
  is tied: every cell equal to the best mean is rank 1, every cell equal to the next lower
  mean is rank 2. A column with fewer than two distinct means is not ranked.
- Δ = cell mean - baseline mean, each over its own seeds, in percentage points.
- Significance: two-sided paired t-test (as ``scipy.stats.ttest_rel``) of the method's values
  against the baseline's on the seeds both finished (same seed = same pretraining seed and
  same labelled subset), run only with at least ``MIN_PAIRED_SEEDS`` pairs; significant when
  ``p < ALPHA``. No correction for multiple comparisons.
- Minimum detectable difference (MDD, :mod:`bench.report.power`): for a method with at
  least 2 seeds shared with the baseline, the smallest true mean difference the same test
  detects with power ``POWER``, from the observed std of the paired differences (0 when they
  do not vary; none with fewer than 2 pairs). *Seeds needed*: the smallest number of shared
  seeds (at least ``MIN_PAIRED_SEEDS``, where the table starts testing) at which the
  observed mean paired difference would be detected with that power at that spread.
- A cell without values says why: ``failed`` (a run failed), ``skipped`` (its pretraining
  failed), ``not run`` (no record), ``undefined`` (finished but the metric is NaN) or
  ``not re-scorable`` (its records cannot be scored under the convention asked for,
  :mod:`bench.conventions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from bench.config import PRESETS, ConfigError, check_unique
from bench.conventions import CONVENTIONS, NOT_RESCORABLE
from bench.methods import METHODS
from bench.protocols import PROTOCOLS, describe_overrides
from bench.report import power

# image_miou: GLCNet's per-image IoU averaged over the scored images (bench.metrics)
METRIC_LABELS = {
    "miou": "mIoU",
    "kappa": "Kappa",
    "oa": "OA",
    "mean_f1": "F1",
    "image_miou": "per-image mIoU",
}
DECIMALS = 2  # percent values are shown (and ranked) with two decimals
MIN_PAIRED_SEEDS = 3  # fewer pairs than this: no test (a t-test on 2 pairs has 1 dof)
ALPHA = 0.05
POWER = 0.8  # of the minimum detectable difference and the seeds needed
AUTO = "auto"  # baseline: "random" when it is in the table, else none
DEFAULT_BASELINE = "random"


@dataclass(frozen=True)
class Column:
    """One column of values: a metric of a dataset at a label fraction, or one class's IoU."""

    dataset: str
    fraction: float
    metric: str  # a METRIC_LABELS key, or "iou" in a per-class table
    class_name: str | None = None

    @property
    def label(self) -> str:
        return self.class_name if self.class_name is not None else METRIC_LABELS[self.metric]

    @property
    def fraction_label(self) -> str:
        return f"{100 * self.fraction:g}%"


@dataclass(frozen=True)
class Cell:
    """One method's values in one column, with its rank and its comparison to the baseline."""

    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()  # percent, in seed order
    missing: str | None = None  # why there are no values: failed, skipped, not run, undefined
    failed: int = 0  # failed runs among this cell's seeds
    skipped: int = 0
    rank: int | None = None  # 1 best, 2 second best in the column
    delta: float | None = None  # mean - baseline mean, percentage points
    p_value: float | None = None  # paired t-test vs the baseline; None when not tested
    pairs: int = 0  # seeds both this cell and the baseline's have
    gap: float | None = None  # mean paired difference over those seeds, points
    mdd: float | None = None  # minimum detectable difference at those seeds; None: < 2 pairs
    seeds_needed: int | None = None  # pairs to detect ``gap``; None: no gap, or beyond reach

    @property
    def n(self) -> int:
        return len(self.values)

    @cached_property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @cached_property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for fewer than two seeds."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


@dataclass(frozen=True)
class Table:
    """Rows are methods, columns ``Column``s; ``cells[i][j]`` is method i in column j."""

    kind: str  # "comparison" or "per-class"
    methods: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: tuple[tuple[Cell, ...], ...]
    baseline: str | None
    seeds: tuple[int, ...]  # every seed of the records in the table
    failed_runs: int
    skipped_runs: int
    presets: tuple[str, ...]
    unreadable_records: int = 0  # result.json files left out because they are not records
    protocols: tuple[str, ...] = ()  # the downstream protocols of the records, described
    conventions: tuple[str, ...] = ()  # the scoring conventions of the records, described

    def cell(self, method: str, column: Column) -> Cell:
        return self.cells[self.methods.index(method)][self.columns.index(column)]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.dataset for c in self.columns))

    def header(self, column: Column) -> tuple[str, ...]:
        """Header levels, outermost first; the dataset only when the table has several."""
        if self.kind == "per-class":
            return (column.label,)
        levels = (column.fraction_label, column.label)
        return (column.dataset, *levels) if len(self.datasets) > 1 else levels

    def missing_counts(self) -> dict[str, int]:
        """Cells without values, by reason."""
        counts: dict[str, int] = {}
        for row in self.cells:
            for cell in row:
                if cell.missing:
                    counts[cell.missing] = counts.get(cell.missing, 0) + 1
        return counts

    @property
    def partial_cells(self) -> int:
        """Cells with values from fewer seeds than the table has."""
        return sum(0 < c.n < len(self.seeds) for row in self.cells for c in row)

    @property
    def n_cells(self) -> int:
        return len(self.methods) * len(self.columns)

    @property
    def captions(self) -> tuple[str, ...]:
        presets = tuple(PRESETS.get(p).caption for p in self.presets if p in PRESETS)
        return presets + self.protocols + self.conventions


def protocol_captions(frame: pd.DataFrame) -> tuple[str, ...]:
    """One line per (protocol, overrides, evaluation) among the records: the protocol's
    name and source, every field overridden, what was scored."""
    if "protocol" not in frame:
        return ()
    lines = []
    for _, row in frame[frame["status"] == "ok"].iterrows():
        name = row["protocol"]
        if not isinstance(name, str) or name not in PROTOCOLS:
            continue
        line = f"fine-tuned under protocol {name} ({PROTOCOLS.get(name).source})"
        overrides = row.get("protocol_overrides")
        if isinstance(overrides, dict) and overrides:
            line += f", overridden: {describe_overrides(overrides)}"
        if row.get("evaluated_on") == "tiles":
            line += (
                f"; scored on whole test tiles, sliding windows of {row.get('eval_window')} px "
                f"every {row.get('eval_stride')} px"
            )
        elif row.get("evaluated_on") == "patches":
            line += "; scored on the test patches"
        lines.append(line)
    return tuple(dict.fromkeys(lines))


def convention_captions(frame: pd.DataFrame) -> tuple[str, ...]:
    """One line per scoring convention the records were scored under (none when they keep
    the scores of their run)."""
    if "convention" not in frame:
        return ()
    names = [n for n in frame["convention"].dropna().unique() if n in CONVENTIONS]
    return tuple(CONVENTIONS.get(name).caption for name in names)


def method_order(names: Iterable[str]) -> list[str]:
    """Baselines first, then pretraining methods, each in registry order; unknown last."""
    names = set(names)
    registered = METHODS.names()
    baselines = [m for m in registered if m in names and not METHODS.get(m).pretrains]
    pretrained = [m for m in registered if m in names and METHODS.get(m).pretrains]
    return baselines + pretrained + sorted(names - set(registered))


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per fine-tuning record (any status); checks there is one run per seed."""
    rows = [r for r in records if r.get("kind") == "finetune"]
    columns = ["job_id", "method", "dataset", "fraction", "seed", "status", "preset"]
    frame = pd.DataFrame(rows)
    for column in [*columns, *METRIC_LABELS, "per_class_iou", "class_names"]:
        if column not in frame:
            frame[column] = None
    if not frame.empty:
        _check_one_run_per_seed(frame)
    return frame


def _check_one_run_per_seed(frame: pd.DataFrame) -> None:
    key = ["method", "dataset", "fraction", "seed"]
    repeated = frame[frame.duplicated(key, keep=False)]
    if repeated.empty:
        return
    first = repeated.sort_values([*key, "job_id"]).iloc[0]
    ids = repeated[(repeated[key] == first[key]).all(axis=1)]["job_id"].tolist()
    raise ConfigError(
        f"{len(repeated)} fine-tuning records repeat a (method, dataset, fraction, seed), e.g. "
        f"{first['method']} on {first['dataset']} at {first['fraction']:g}, seed "
        f"{first['seed']}: {', '.join(map(str, sorted(ids)))}; these runs differ in their "
        "settings and a table needs one run per seed: put sweeps with different settings in "
        "different --results folders"
    )


def check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """Known metrics, each named once (ConfigError naming the valid ones otherwise)."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown or not metrics:
        raise ConfigError(
            f"unknown metric {unknown[0] if unknown else ''!r}; "
            f"valid metrics: {', '.join(METRIC_LABELS)}"
        )
    check_unique("metric", metrics)
    return metrics


def check_metrics_recorded(frame: pd.DataFrame, metrics: tuple[str, ...]) -> None:
    """Each of ``metrics`` has a value in some finished record (ConfigError naming the
    metrics the records have otherwise: a table of empty cells says nothing)."""
    finished = frame[frame["status"] == "ok"]
    if finished.empty:
        return
    has = [m for m in METRIC_LABELS if finished[m].notna().any()]
    absent = [m for m in metrics if m not in has]
    if absent:
        raise ConfigError(
            f"no finished fine-tuning record has metric {absent[0]!r} (records written "
            f"before it existed lack it); metrics these records have: {', '.join(has)}"
        )


def build_table(
    records: Iterable[dict[str, Any]],
    metrics: Iterable[str] = ("miou", "kappa"),
    baseline: str | None = AUTO,
    unreadable: int = 0,
) -> Table | None:
    """The comparison table of fine-tuning records; None when there are none.

    Columns are the (dataset, fraction) pairs that have records (datasets and fractions
    sorted) x ``metrics``; ``baseline`` is a method name, ``AUTO`` or None; ``unreadable``
    counts records left out because they could not be read (said in the footer).
    """
    metrics = check_metrics(metrics)
    frame = records_frame(records)
    if frame.empty:
        return None
    check_metrics_recorded(frame, metrics)
    pairs = sorted(
        {(d, float(f)) for d, f in zip(frame["dataset"], frame["fraction"], strict=True)}
    )
    columns = [Column(d, f, m) for d, f in pairs for m in metrics]
    observations = []
    for index, column in enumerate(columns):
        runs = frame[(frame["dataset"] == column.dataset) & (frame["fraction"] == column.fraction)]
        observations.append(
            pd.DataFrame(
                {
                    "method": runs["method"],
                    "column": index,
                    "seed": runs["seed"],
                    "status": runs["status"],
                    "value": pd.to_numeric(runs[column.metric], errors="coerce") * 100,
                }
            )
        )
    table = _assemble("comparison", frame, columns, pd.concat(observations), baseline)
    return replace(table, unreadable_records=unreadable)


def per_class_table(
    records: Iterable[dict[str, Any]],
    dataset: str | None = None,
    fraction: float | None = None,
    baseline: str | None = AUTO,
    unreadable: int = 0,
) -> Table | None:
    """Per-class IoU of one dataset at one label fraction (each inferred when unique)."""
    frame = records_frame(records)
    if frame.empty:
        return None
    dataset = _pick(frame, "dataset", dataset, "--dataset")
    frame = frame[frame["dataset"] == dataset]
    fraction = _pick(frame, "fraction", fraction, "--fraction")
    frame = frame[frame["fraction"] == fraction]
    finished = frame[(frame["status"] == "ok") & frame["class_names"].notna()]
    if finished.empty:
        raise ConfigError(f"no finished fine-tuning runs on {dataset} at {fraction:g}")
    names = list(finished["class_names"].iloc[0])
    columns = [Column(dataset, float(fraction), "iou", name) for name in names]
    observations = []
    for record in frame.to_dict("records"):
        ious = record["per_class_iou"] if record["status"] == "ok" else None
        if ious is not None and list(record["class_names"]) != names:
            raise ConfigError(
                f"run {record['job_id']} has classes {record['class_names']}, others {names}"
            )
        for index in range(len(names)):
            value = ious[index] if ious is not None else None
            observations.append(
                {
                    "method": record["method"],
                    "column": index,
                    "seed": record["seed"],
                    "status": record["status"],
                    "value": math.nan if value is None else 100 * float(value),
                }
            )
    table = _assemble("per-class", frame, columns, pd.DataFrame(observations), baseline)
    return replace(table, unreadable_records=unreadable)


def _pick(frame: pd.DataFrame, field: str, wanted: Any, option: str) -> Any:
    choices = sorted(frame[field].unique())
    if wanted is None:
        if len(choices) == 1:
            return choices[0]
        raise ConfigError(f"give {option}; the results have {', '.join(map(str, choices))}")
    matches = [c for c in choices if c == wanted]
    if not matches:
        raise ConfigError(
            f"no fine-tuning records with {field} {wanted}; "
            f"the results have {', '.join(map(str, choices))}"
        )
    return matches[0]


def check_baseline(baseline: str | None, methods: Iterable[str]) -> None:
    """Before a sweep: an explicit ``baseline`` must be one of the sweep's ``methods``."""
    methods = list(methods)
    if baseline not in (None, "none", AUTO) and baseline not in methods:
        raise ConfigError(
            f"baseline {baseline!r} is not a method of this sweep; "
            f"valid baselines: {', '.join(methods)}, none"
        )


def _resolve_baseline(baseline: str | None, methods: list[str]) -> str | None:
    if baseline is None or baseline == "none":
        return None
    if baseline == AUTO:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in methods else None
    if baseline not in methods:
        raise ConfigError(
            f"baseline {baseline!r} has no fine-tuning records here; "
            f"methods with records: {', '.join(methods)} (or none)"
        )
    return baseline


def _assemble(
    kind: str,
    frame: pd.DataFrame,
    columns: list[Column],
    observations: pd.DataFrame,
    baseline: str | None,
) -> Table:
    methods = method_order(frame["method"].unique())
    baseline = _resolve_baseline(baseline, methods)
    runs: dict[tuple[str, int], list[tuple[int, str, float]]] = {}
    for method, column, seed, status, value in observations[
        ["method", "column", "seed", "status", "value"]
    ].itertuples(index=False):
        runs.setdefault((method, int(column)), []).append((int(seed), status, float(value)))
    grid = [[_cell(runs.get((m, j), [])) for j in range(len(columns))] for m in methods]
    for j in range(len(columns)):  # rank within each column
        for i, cell in enumerate(_ranked([row[j] for row in grid])):
            grid[i][j] = cell
    if baseline is not None:
        reference = grid[methods.index(baseline)]
        for i, method in enumerate(methods):
            if method != baseline:
                grid[i] = [_compared(c, r) for c, r in zip(grid[i], reference, strict=True)]
    return Table(
        kind=kind,
        methods=tuple(methods),
        columns=tuple(columns),
        cells=tuple(tuple(row) for row in grid),
        baseline=baseline,
        seeds=tuple(sorted(int(s) for s in frame["seed"].unique())),
        failed_runs=int((frame["status"] == "failed").sum()),
        skipped_runs=int((frame["status"] == "skipped").sum()),
        presets=tuple(sorted(p for p in frame["preset"].dropna().unique())),
        protocols=protocol_captions(frame),
        conventions=convention_captions(frame),
    )


def _cell(runs: list[tuple[int, str, float]]) -> Cell:
    """A cell from its (seed, status, value in percent) observations."""
    good = sorted(
        (seed, value) for seed, status, value in runs if status == "ok" and value == value
    )
    statuses = [status for _, status, _ in runs]
    failed, skipped = statuses.count("failed"), statuses.count("skipped")
    missing = None
    if not good:
        if failed:
            missing = "failed"
        elif skipped:
            missing = "skipped"
        elif "ok" in statuses:
            missing = "undefined"
        elif NOT_RESCORABLE in statuses:
            missing = NOT_RESCORABLE
        else:
            missing = "not run"
    return Cell(
        seeds=tuple(seed for seed, _ in good),
        values=tuple(value for _, value in good),
        missing=missing,
        failed=failed,
        skipped=skipped,
    )


def shown(value: float) -> float:
    """A percent value as the table shows it (``DECIMALS`` places)."""
    return float(f"{value:.{DECIMALS}f}")


def _ranked(column: list[Cell]) -> list[Cell]:
    means = sorted({shown(c.mean) for c in column if c.mean is not None}, reverse=True)
    if len(means) < 2:  # one value, or all equal: nothing to tell apart
        return column
    ranks = {mean: rank for rank, mean in enumerate(means[:2], start=1)}
    return [replace(c, rank=ranks.get(shown(c.mean))) if c.mean is not None else c for c in column]


def _compared(cell: Cell, reference: Cell) -> Cell:
    if cell.mean is None or reference.mean is None:
        return cell
    ours = dict(zip(cell.seeds, cell.values, strict=True))
    theirs = dict(zip(reference.seeds, reference.values, strict=True))
    common = sorted(set(ours) & set(theirs))
    mine, base = [ours[s] for s in common], [theirs[s] for s in common]
    p_value = paired_test(mine, base) if len(common) >= MIN_PAIRED_SEEDS else None
    compared = replace(cell, delta=cell.mean - reference.mean, p_value=p_value, pairs=len(common))
    return _with_power(compared, np.asarray(mine) - np.asarray(base))


def _with_power(cell: Cell, differences: np.ndarray) -> Cell:
    """``cell`` with the gap, MDD and seeds needed of its paired ``differences`` (module
    docstring); unchanged with fewer than 2 pairs."""
    if len(differences) < 2:
        return cell
    gap, spread = float(np.mean(differences)), power.spread(differences)
    gap = 0.0 if abs(gap) < power.ROUND_OFF else gap  # equal values, up to float round-off
    needed = power.seeds_needed(gap, spread, ALPHA, POWER, MIN_PAIRED_SEEDS)
    mdd = power.minimum_detectable_difference(len(differences), spread, ALPHA, POWER)
    return replace(cell, gap=gap, mdd=mdd, seeds_needed=needed)


def paired_test(values: list[float], reference: list[float]) -> float | None:
    """Two-sided paired t-test p-value (what ``scipy.stats.ttest_rel`` computes, without its
    per-call overhead); None when every difference is zero (nothing to test)."""
    differences = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    n = len(differences)
    spread = float(np.std(differences, ddof=1))
    mean = float(np.mean(differences))
    if spread == 0:
        return None if mean == 0 else 0.0
    t = mean / (spread / math.sqrt(n))
    return float(2 * special.stdtr(n - 1, -abs(t)))
