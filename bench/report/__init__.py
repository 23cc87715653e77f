"""Result records -> tables (Markdown, LaTeX, CSV, HTML) and plots.

``records`` reads a results folder once, ``table`` builds typed ``Table``s (numbers, ranks,
Δ, paired tests, what the seeds can resolve with ``power``), ``formats`` writes them as text
(for a terminal, Markdown, LaTeX, CSV, HTML), ``plots`` draws them with matplotlib,
``html`` puts all of it, with job states and settings, on one page. ``comparison_table`` is
the one-call version ``bench run`` prints at the end of a sweep.

Nothing here imports torch (the method registry only for method names that are not the
harness's own), so ``bench table`` and ``bench report`` start in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.conventions import check_conventions, rescore_records
from bench.report.columns import RecordColumns, record_columns, records_frame
from bench.report.formats import (
    FORMATS,
    SUFFIXES,
    ansi_for,
    check_format,
    latex_escape,
    render,
)
from bench.report.html import REPORT, write_report
from bench.report.plots import PLOT_FORMATS, plot_fraction_curves
from bench.report.records import scan_results
from bench.report.table import (
    ALPHA,
    AUTO,
    METRIC_LABELS,
    MIN_PAIRED_SEEDS,
    Cell,
    Column,
    Table,
    build_table,
    check_baseline,
    check_metrics,
    method_order,
    paired_test,
    per_class_table,
)
from bench.store import RunStore, UnreadableRecord

NO_RESULTS = "no fine-tuning results yet"


def read_results(
    results: Path | str, rescoring: bool = False
) -> tuple[list[dict[str, Any]], list[UnreadableRecord]]:
    """The valid records of a results folder, and the unreadable ones (with why), each file
    read once (:func:`bench.report.records.scan_results`, the same as ``RunStore.scan``);
    with what re-scoring reads only when ``rescoring``."""
    store = RunStore(results)
    store.check_exists()
    scan = scan_results(store, rescoring=rescoring)
    return scan.valid, scan.unreadable


def results_table(
    results: Path | str,
    metrics: Iterable[str] = ("miou", "kappa"),
    baseline: str | None = AUTO,
    per_class: bool = False,
    dataset: str | None = None,
    fraction: float | None = None,
    conventions: Iterable[str] = (),
) -> tuple[Table | None, list[UnreadableRecord]]:
    """The comparison table of a results folder (or, with ``per_class``, the per-class IoU
    of one ``dataset`` at one ``fraction``), and the records left out as unreadable (the
    table's footer counts them). None when there are no fine-tuning records.

    With ``conventions`` (:mod:`bench.conventions`) the records are scored again under each
    from their stored matrices, several side by side; the captions name the conventions
    and say which records could not be re-scored and why."""
    check_metrics(metrics)
    conventions = tuple(conventions)
    check_conventions(conventions)
    if not per_class and (dataset is not None or fraction is not None):
        raise ConfigError("--dataset and --fraction choose the --per-class table; add it")
    if per_class and len(conventions) > 1:
        raise ConfigError("a --per-class table takes one --convention")
    records, unreadable = read_results(results, rescoring=bool(conventions))
    records, notes = convention_records(records, conventions, results, metrics)
    if per_class:
        table = per_class_table(records, dataset, fraction, baseline, unreadable=len(unreadable))
    else:
        table = build_table(records, metrics, baseline, unreadable=len(unreadable))
    if table is not None and notes:
        table = replace(table, conventions=table.conventions + tuple(notes))
    return table, unreadable


def convention_records(
    records: list[dict[str, Any]], conventions: tuple[str, ...], results, metrics
) -> tuple[list[dict[str, Any]], list[str]]:
    """``records`` scored again under ``conventions`` (unchanged without any), with notes
    on what could not be (:func:`bench.conventions.rescore_records`); the per-image scores
    are read only when a table shows ``image_miou``."""
    if not conventions:
        return records, []
    return rescore_records(records, conventions, results, "image_miou" in metrics)


def table_format(fmt: str | None, output: Path | None) -> str:
    """``fmt`` if given, else the format of ``output``'s suffix, else (the table goes to the
    terminal) text."""
    if fmt is not None:
        return check_format(fmt)
    if output is None:
        return "text"
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"cannot tell the table format from {Path(output).name!r}; name the file "
            f"{' or '.join(SUFFIXES)}, or give --format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def comparison_table(
    records: Iterable[dict[str, Any]],
    metrics: Iterable[str] = ("miou", "kappa"),
    baseline: str | None = AUTO,
    fmt: str = "md",
    wide: bool = False,
    ansi: bool = False,
) -> str:
    """The comparison table of ``records`` as text in ``fmt`` (see ``FORMATS``; ``wide``
    and ``ansi`` as :func:`bench.report.formats.render`)."""
    table = build_table(records, metrics, baseline)
    return NO_RESULTS if table is None else render(table, fmt, wide, ansi)


__all__ = [
    "ALPHA",
    "AUTO",
    "FORMATS",
    "METRIC_LABELS",
    "MIN_PAIRED_SEEDS",
    "NO_RESULTS",
    "PLOT_FORMATS",
    "SUFFIXES",
    "ansi_for",
    "Cell",
    "Column",
    "Table",
    "build_table",
    "check_baseline",
    "check_format",
    "check_metrics",
    "comparison_table",
    "latex_escape",
    "method_order",
    "paired_test",
    "per_class_table",
    "plot_fraction_curves",
    "read_results",
    "results_table",
    "table_format",
    "RecordColumns",
    "record_columns",
    "records_frame",
    "render",
    "REPORT",
    "write_report",
]
