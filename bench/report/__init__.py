"""Result records -> tables (Markdown, LaTeX, CSV, HTML) and plots.

``table`` builds typed ``Table``s (numbers, ranks, Δ, paired tests), ``formats`` writes them
as text, ``plots`` draws them with matplotlib. ``comparison_table`` is the one-call version
``bench run`` prints at the end of a sweep.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.report.formats import FORMATS, SUFFIXES, check_format, latex_escape, render
from bench.report.plots import PLOT_FORMATS, plot_fraction_curves
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
    records_frame,
)

NO_RESULTS = "no fine-tuning results yet"


def comparison_table(
    records: Iterable[dict[str, Any]],
    metrics: Iterable[str] = ("miou", "kappa"),
    baseline: str | None = AUTO,
    fmt: str = "md",
) -> str:
    """The comparison table of ``records`` as text in ``fmt`` (see ``FORMATS``)."""
    table = build_table(records, metrics, baseline)
    return NO_RESULTS if table is None else render(table, fmt)


__all__ = [
    "ALPHA",
    "AUTO",
    "FORMATS",
    "METRIC_LABELS",
    "MIN_PAIRED_SEEDS",
    "NO_RESULTS",
    "PLOT_FORMATS",
    "SUFFIXES",
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
    "records_frame",
    "render",
]
