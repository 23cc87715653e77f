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
from scipy import special

from bench.config import PRESETS, ConfigError, check_unique
from bench.conventions import CONVENTIONS, NOT_RESCORABLE
from bench.protocols import PROTOCOLS, describe_overrides
from bench.report import power
from bench.report.columns import (
    METRIC_LABELS,
    PROTOCOL_FIELDS,
    RecordColumns,
    check_metrics_recorded,
    columns_of,
    in_percent,
)

DECIMALS = 2  # percent values are shown (and ranked) with two decimals
MIN_PAIRED_SEEDS = 3  # fewer pairs than this: no test (a t-test on 2 pairs has 1 dof)
ALPHA = 0.05
POWER = 0.8  # of the minimum detectable difference and the seeds needed
AUTO = "auto"  # baseline: "random" when it is in the table, else none
DEFAULT_BASELINE = "random"
# A dataset's block (Table.blocks) with more value columns than this is split per metric.
BLOCK_COLUMNS = 6
# The harness's own methods in registration order (bench/methods/__init__.py), each with
# whether it pretrains. Tables of these methods are ordered without importing the registry,
# which imports torch (seconds and a GiB that `bench table` does not need); a test checks
# this against the registry. Any other name (a plugin's) is ordered by the registry.
BUILTIN_METHODS = (
    ("random", False),
    ("imagenet", False),
    ("simclr", True),
    ("moco", True),
    ("byol", True),
    ("false", True),
    ("grass", True),
    ("glcnet", True),
    ("multitask", True),
)


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
    # of ``values``, computed from them when not given (a table computes those of all its
    # cells together: :func:`_cells`); None without values
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof=1); None below two values

    def __post_init__(self) -> None:
        if self.values and self.mean is None:
            object.__setattr__(self, "mean", float(np.mean(self.values)))
        if len(self.values) > 1 and self.std is None:
            object.__setattr__(self, "std", float(np.std(self.values, ddof=1)))

    @property
    def n(self) -> int:
        return len(self.values)

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
    preset_captions: tuple[str, ...] = ()  # the presets of the records, as they describe them
    conventions: tuple[str, ...] = ()  # the scoring conventions of the records, described

    def cell(self, method: str, column: Column) -> Cell:
        return self.cells[self._method_rows[method]][self._column_indices[column]]

    @cached_property
    def _method_rows(self) -> dict[str, int]:
        return {method: row for row, method in enumerate(self.methods)}

    @cached_property
    def _column_indices(self) -> dict[Column, int]:
        return {column: index for index, column in enumerate(self.columns)}

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
        return self.preset_captions + self.protocols + self.conventions

    def select(self, columns: Iterable[Column]) -> Table:
        """This table with only ``columns`` (in that order); the rest is the same."""
        index = {column: j for j, column in enumerate(self.columns)}
        picked = [index[column] for column in columns]
        cells = tuple(tuple(row[j] for j in picked) for row in self.cells)
        return replace(self, columns=tuple(self.columns[j] for j in picked), cells=cells)

    def blocks(self, wide: bool = False) -> tuple[Block, ...]:
        """The table as a reader takes it in: one block per dataset, split per metric when a
        dataset has more than ``BLOCK_COLUMNS`` value columns and several metrics (papers
        print a block per dataset; one row of every dataset x fraction x metric fits no
        page or terminal).
        ``wide``, a per-class table, or one dataset with few columns: the whole table, with
        no title. Titles name the dataset (when there are several) and the metric (when
        split)."""
        if wide or self.kind == "per-class":
            return (Block("", self),)
        several = len(self.datasets) > 1
        blocks = []
        for dataset in self.datasets:
            columns = [c for c in self.columns if c.dataset == dataset]
            metrics = dict.fromkeys(c.metric for c in columns)
            if len(columns) <= BLOCK_COLUMNS or len(metrics) == 1:
                blocks.append(Block(dataset if several else "", self.select(columns)))
                continue
            for metric in metrics:
                label = METRIC_LABELS[metric]
                title = f"{dataset}, {label}" if several else label
                blocks.append(Block(title, self.select(c for c in columns if c.metric == metric)))
        return tuple(blocks)


@dataclass(frozen=True)
class Block:
    """A part of a table shown on its own (its columns of one dataset, or of one dataset and
    metric) under a title; "" when the block is the whole table."""

    title: str
    table: Table


def preset_captions(records: RecordColumns) -> tuple[str, ...]:
    """The caption of each preset among the records, as the records give it
    (``preset_caption``); records written before they carried it take today's caption."""
    captions = set()
    pairs = zip(records["preset"], records["preset_caption"], strict=True)
    for name, caption in set(pairs):
        if not isinstance(caption, str) and isinstance(name, str) and name in PRESETS:
            caption = PRESETS.get(name).caption
        if isinstance(caption, str):
            captions.add((name, caption))
    return tuple(caption for _, caption in sorted(captions))


def protocol_captions(records: RecordColumns) -> tuple[str, ...]:
    """One line per (protocol, overrides, evaluation) among the finished records: the
    protocol's name and source, every field overridden, what was scored."""
    columns = [records[field] for field in ("status", *PROTOCOL_FIELDS)]
    lines = []
    seen = set()
    for status, *values in zip(*columns, strict=True):
        if status != "ok":
            continue
        key = repr(values)  # overrides are dicts: the distinct combinations, by their text
        if key not in seen:
            seen.add(key)
            lines.append(_protocol_line(*values))
    return tuple(dict.fromkeys(line for line in lines if line))


def _protocol_line(name, overrides, evaluated_on, window, stride, source) -> str | None:
    """The caption line of one protocol as the record describes it (``protocol_source``);
    a record written before records carried it takes today's description."""
    if not isinstance(source, str):
        if not isinstance(name, str) or name not in PROTOCOLS:
            return None
        source = PROTOCOLS.get(name).source
    line = f"fine-tuned under protocol {name} ({source})"
    if isinstance(overrides, dict) and overrides:
        line += f", overridden: {describe_overrides(overrides)}"
    if evaluated_on == "tiles":
        line += f"; scored on whole test tiles, sliding windows of {window} px every {stride} px"
    elif evaluated_on == "patches":
        line += "; scored on the test patches"
    return line


def convention_captions(records: RecordColumns) -> tuple[str, ...]:
    """One line per scoring convention the records were scored under (none when they keep
    the scores of their run)."""
    if "convention" not in records:
        return ()
    names = [n for n in dict.fromkeys(records["convention"]) if n in CONVENTIONS]
    return tuple(CONVENTIONS.get(name).caption for name in names)


def method_order(names: Iterable[str]) -> list[str]:
    """Baselines first, then pretraining methods, each in registry order; unknown last.
    Names all among ``BUILTIN_METHODS`` are ordered without importing the registry."""
    names = set(names)
    builtin = dict(BUILTIN_METHODS)
    if names <= set(builtin):
        registered, pretrains = list(builtin), builtin
    else:
        from bench.methods import METHODS

        registered = METHODS.names()
        pretrains = {m: METHODS.get(m).pretrains for m in registered}
    baselines = [m for m in registered if m in names and not pretrains[m]]
    pretrained = [m for m in registered if m in names and pretrains[m]]
    return baselines + pretrained + sorted(names - set(registered))


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


# (method, column index) -> the (seed, status, value in percent) of each of its runs
Runs = dict[tuple[str, int], list[tuple[int, str, float]]]


def build_table(
    records: Iterable[dict[str, Any]] | RecordColumns,
    metrics: Iterable[str] = ("miou", "kappa"),
    baseline: str | None = AUTO,
    unreadable: int = 0,
) -> Table | None:
    """The comparison table of fine-tuning records (or of their :func:`record_columns`);
    None when there are none.

    Columns are the (dataset, fraction) pairs that have records (datasets and fractions
    sorted) x ``metrics``; ``baseline`` is a method name, ``AUTO`` or None; ``unreadable``
    counts records left out because they could not be read (said in the footer).
    """
    metrics = check_metrics(metrics)
    records = columns_of(records)
    if records.empty:
        return None
    check_metrics_recorded(records, metrics)
    datasets, fractions = records["dataset"], [float(f) for f in records["fraction"]]
    pairs = sorted(set(zip(datasets, fractions, strict=True)))
    columns = [Column(d, f, m) for d, f in pairs for m in metrics]
    first = {pair: index * len(metrics) for index, pair in enumerate(pairs)}
    seeds, statuses = [int(seed) for seed in records["seed"]], records["status"]
    values = [[in_percent(value) for value in records[m]] for m in metrics]
    runs: Runs = {}
    for (method, dataset, fraction), rows in records.groups(
        "method", "dataset", "fraction"
    ).items():
        start = first[(dataset, float(fraction))]
        for offset, metric_values in enumerate(values):
            runs[(method, start + offset)] = [
                (seeds[i], statuses[i], metric_values[i]) for i in rows
            ]
    table = _assemble_many("comparison", [(records, columns, runs)], baseline)[0]
    return replace(table, unreadable_records=unreadable)


def per_class_table(
    records: Iterable[dict[str, Any]] | RecordColumns,
    dataset: str | None = None,
    fraction: float | None = None,
    baseline: str | None = AUTO,
    unreadable: int = 0,
) -> Table | None:
    """Per-class IoU of one dataset at one label fraction (each inferred when unique)."""
    records = columns_of(records)
    if records.empty:
        return None
    dataset = _pick(records, "dataset", dataset, "--dataset")
    records = records.where("dataset", dataset)
    fraction = _pick(records, "fraction", fraction, "--fraction")
    part = _per_class_part(records.where("fraction", fraction), dataset, fraction)
    table = _assemble_many("per-class", [part], baseline)[0]
    return replace(table, unreadable_records=unreadable)


def per_class_tables(records: RecordColumns, baseline: str | None = AUTO) -> list[Table]:
    """The per-class IoU table (:func:`per_class_table`) of every (dataset, fraction) with
    finished runs, datasets and fractions sorted; the records split in one pass and the
    cells of all tables compared with their baselines together (a report of 35 tables makes
    the few numpy and scipy calls of one)."""
    groups = records.groups("dataset", "fraction")
    statuses = records["status"]
    pairs = sorted(pair for pair, rows in groups.items() if any(statuses[i] == "ok" for i in rows))
    parts = [_per_class_part(records.take(groups[pair]), *pair) for pair in pairs]
    return _assemble_many("per-class", parts, baseline) if parts else []


Part = tuple[RecordColumns, list[Column], "Runs"]  # a table's records, columns and runs


def _per_class_part(records: RecordColumns, dataset: str, fraction: float) -> Part:
    """The columns (one per class) and runs of the per-class table of ``records``, those of
    one dataset at one label fraction."""
    fields = ("job_id", "method", "seed", "status", "per_class_iou", "class_names")
    rows = list(zip(*(records[f] for f in fields), strict=True))
    finished = [names for *_, status, _, names in rows if status == "ok" and names is not None]
    if not finished:
        raise ConfigError(f"no finished fine-tuning runs on {dataset} at {fraction:g}")
    names = list(finished[0])
    columns = [Column(dataset, float(fraction), "iou", name) for name in names]
    by_method: dict[str, list[tuple[int, str, list[float | None] | None]]] = {}
    for job_id, method, seed, status, ious, classes in rows:
        ious = ious if status == "ok" else None
        if ious is not None and list(classes) != names:
            raise ConfigError(f"run {job_id} has classes {classes}, others {names}")
        by_method.setdefault(method, []).append((int(seed), status, ious))
    runs: Runs = {}
    for method, method_runs in by_method.items():
        for index in range(len(names)):
            runs[(method, index)] = [
                (seed, status, _class_percent(ious, index)) for seed, status, ious in method_runs
            ]
    return records, columns, runs


def _class_percent(ious: list[float | None] | None, index: int) -> float:
    """Class ``index``'s IoU in percent; NaN for a run without per-class IoU or a class it
    could not score."""
    value = ious[index] if ious is not None else None
    return math.nan if value is None else 100 * float(value)


def _pick(records: RecordColumns, field: str, wanted: Any, option: str) -> Any:
    choices = sorted(set(records[field]))
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


def _assemble_many(kind: str, parts: list[Part], baseline: str | None) -> list[Table]:
    """The table of each (records, columns, runs) of ``parts``: its cells ranked in each
    column and compared with its baseline (all tables' comparisons computed together)."""
    baselines, orders, observations = [], [], []
    for records, columns, runs in parts:
        methods = method_order(set(records["method"]))
        chosen = _resolve_baseline(baseline, methods)
        observations += [runs.get((m, j), []) for m in methods for j in range(len(columns))]
        baselines.append(None if chosen is None else methods.index(chosen))
        orders.append(methods)
    cells, grids = iter(_cells(observations)), []
    for (_, columns, _), methods in zip(parts, orders, strict=True):
        grids.append([[next(cells) for _ in columns] for _ in methods])
    updates = _compared_with_baselines(grids, baselines)
    for g, grid in enumerate(grids):
        for j, ranks in enumerate(map(_ranks, zip(*grid, strict=True))):
            for i, rank in ranks.items():
                updates.setdefault((g, i, j), {})["rank"] = rank
    for (g, i, j), fields in updates.items():
        grids[g][i][j] = replace(grids[g][i][j], **fields)
    tables = zip(parts, orders, grids, baselines, strict=True)
    return [
        _table(kind, records, columns, methods, grid, None if b is None else methods[b])
        for (records, columns, _), methods, grid, b in tables
    ]


def _table(
    kind: str,
    records: RecordColumns,
    columns: list[Column],
    methods: list[str],
    grid: list[list[Cell]],
    baseline: str | None,
) -> Table:
    """The table of ``grid`` (rows ``methods``, ``columns``) with what its ``records`` say
    of the runs (seeds, failures, presets, captions)."""
    statuses, presets = records["status"], set(records["preset"])
    return Table(
        kind=kind,
        methods=tuple(methods),
        columns=tuple(columns),
        cells=tuple(tuple(row) for row in grid),
        baseline=baseline,
        seeds=tuple(sorted({int(s) for s in records["seed"]})),
        failed_runs=statuses.count("failed"),
        skipped_runs=statuses.count("skipped"),
        presets=tuple(sorted(p for p in presets if p is not None and p == p)),  # not NaN
        protocols=protocol_captions(records),
        preset_captions=preset_captions(records),
        conventions=convention_captions(records),
    )


def _cells(observations: list[list[tuple[int, str, float]]]) -> list[Cell]:
    """The cell of each list of (seed, status, value in percent) observations; the means and
    standard deviations of all cells with the same number of values reduced in one numpy
    call (numpy reduces each row of an array as it reduces it alone: each cell's numbers)."""
    fields = [_cell_fields(runs) for runs in observations]
    by_count: dict[int, list[int]] = {}
    for k, cell in enumerate(fields):
        if cell["values"]:
            by_count.setdefault(len(cell["values"]), []).append(k)
    for n, members in by_count.items():
        values = np.array([fields[k]["values"] for k in members], dtype=float)
        means = np.mean(values, axis=1).tolist()
        stds = np.std(values, axis=1, ddof=1).tolist() if n > 1 else [None] * len(members)
        for k, mean, std in zip(members, means, stds, strict=True):
            fields[k].update(mean=mean, std=std)
    return [Cell(**cell) for cell in fields]


def _cell_fields(runs: list[tuple[int, str, float]]) -> dict[str, Any]:
    """A cell's values and why it has none, from its (seed, status, value in percent)
    observations."""
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
    return {
        "seeds": tuple(seed for seed, _ in good),
        "values": tuple(value for _, value in good),
        "missing": missing,
        "failed": failed,
        "skipped": skipped,
    }


def shown(value: float) -> float:
    """A percent value as the table shows it (``DECIMALS`` places)."""
    return float(f"{value:.{DECIMALS}f}")


def _ranks(column: tuple[Cell, ...]) -> dict[int, int]:
    """Row -> rank (1 or 2) of the cells of ``column`` whose shown mean is the best or the
    next best; none when the column has fewer than two distinct shown means."""
    means = [shown(c.mean) if c.mean is not None else None for c in column]
    distinct = sorted({m for m in means if m is not None}, reverse=True)
    if len(distinct) < 2:  # one value, or all equal: nothing to tell apart
        return {}
    ranks = {mean: rank for rank, mean in enumerate(distinct[:2], start=1)}
    return {i: ranks[m] for i, m in enumerate(means) if m in ranks}


def _compared_with_baselines(
    grids: list[list[list[Cell]]], baselines: list[int | None]
) -> dict[tuple[int, int, int], dict[str, Any]]:
    """(grid, row, column) -> Δ, the paired test, gap, MDD and seeds needed of every cell of
    each grid (rows are methods) against the cell of its grid's ``baselines`` row in its
    column (module docstring); grids without a baseline have none. The paired differences
    of all cells with the same number of pairs are reduced in one numpy call and the seeds
    needed of all cells solved together (:func:`bench.report.power.seeds_needed_many`): the
    numbers of one cell at a time, with a few calls in all instead of a few per cell."""
    by_pairs: dict[int, list[tuple[tuple[int, int, int], list[float]]]] = {}
    for g, (grid, baseline) in enumerate(zip(grids, baselines, strict=True)):
        if baseline is None:
            continue
        reference_row = grid[baseline]
        for i, row in enumerate(grid):
            for j, (cell, reference) in enumerate(zip(row, reference_row, strict=True)):
                if i != baseline and cell.mean is not None and reference.mean is not None:
                    differences = _paired_differences(cell, reference)
                    by_pairs.setdefault(len(differences), []).append(((g, i, j), differences))
    updates, spreads = {}, {}  # spreads: (grid, row, column) -> std of >= 2 differences
    for n, group in by_pairs.items():
        statistics = _paired_statistics(n, [differences for _, differences in group])
        for (g, i, j), (mean, std, p_value) in zip(
            (key for key, _ in group), statistics, strict=True
        ):
            delta = grids[g][i][j].mean - grids[g][baselines[g]][j].mean
            fields = updates[(g, i, j)] = {"delta": delta, "p_value": p_value, "pairs": n}
            if n >= 2:
                spreads[(g, i, j)] = spread = power.without_round_off(std)
                fields["gap"] = power.without_round_off(mean)
                fields["mdd"] = power.minimum_detectable_difference(n, spread, ALPHA, POWER)
    gaps = [updates[key]["gap"] for key in spreads]
    needed = power.seeds_needed_many(gaps, list(spreads.values()), ALPHA, POWER, MIN_PAIRED_SEEDS)
    for key, seeds in zip(spreads, needed, strict=True):
        updates[key]["seeds_needed"] = seeds
    return updates


def _paired_differences(cell: Cell, reference: Cell) -> list[float]:
    """``cell``'s values minus ``reference``'s over the seeds both have, in seed order."""
    theirs = dict(zip(reference.seeds, reference.values, strict=True))
    return [
        value - theirs[seed]
        for seed, value in zip(cell.seeds, cell.values, strict=True)
        if seed in theirs
    ]


def _paired_statistics(n: int, rows: list[list[float]]) -> list[tuple[float, float, Any]]:
    """Per row of ``n`` paired differences: their mean, sample std (0 below 2 pairs) and the
    paired t-test's p-value (None below ``MIN_PAIRED_SEEDS`` pairs, or with nothing to
    test); the rows reduced together (numpy reduces each row of the array as it would
    reduce it alone)."""
    if n == 0:
        return [(0.0, 0.0, None)] * len(rows)
    values = np.asarray(rows, dtype=float)
    means = np.mean(values, axis=1)
    stds = np.std(values, axis=1, ddof=1) if n >= 2 else np.zeros(len(rows))
    p_values = _paired_p_values(n, means, stds) if n >= MIN_PAIRED_SEEDS else [None] * len(rows)
    return list(zip(means.tolist(), stds.tolist(), p_values, strict=True))


def paired_test(values: list[float], reference: list[float]) -> float | None:
    """Two-sided paired t-test p-value (what ``scipy.stats.ttest_rel`` computes, without its
    per-call overhead); None when every difference is zero (nothing to test)."""
    differences = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    mean, std = np.mean(differences), np.std(differences, ddof=1)
    return _paired_p_values(len(differences), np.array([mean]), np.array([std]))[0]


def _paired_p_values(n: int, means: np.ndarray, stds: np.ndarray) -> list[float | None]:
    """The paired t-test's p-value of each (mean, sample std) of ``n`` differences: None
    where every difference is zero, 0 where they are equal and not zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p_values = 2 * special.stdtr(n - 1, -np.abs(means / (stds / math.sqrt(n))))
    return [
        (None if mean == 0 else 0.0) if std == 0 else p_value
        for mean, std, p_value in zip(means.tolist(), stds.tolist(), p_values.tolist(), strict=True)
    ]
