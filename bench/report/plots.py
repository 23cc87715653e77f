"""Figures with matplotlib (Agg canvas, no display): a metric vs the label fraction, and
the pretraining loss curves of the HTML report.

One figure per metric, one panel per dataset; x is the label fraction, on a log axis when
the fractions span more than a decade (1, 2, 5, 10, 100%: the convention), else linear; y
the mean over seeds in percent with the sample std (ddof=1) as error bars (none for one
seed); one line per method in the table's row order. Points without a value are left out.
Figures are made in memory (``fraction_figure``, ``table_figure``, ``loss_figure``) and
written as files (``plot_fraction_curves``) or embedded (``figure_bytes``,
:mod:`bench.report.html`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.report.table import build_table, check_metrics, method_order
from bench.store import atomic_write_bytes

PLOT_FORMATS = ("png", "svg")


def plot_fraction_curves(
    records: Iterable[dict[str, Any]],
    output_dir: Path | str,
    metrics: Iterable[str] = ("miou",),
    formats: Iterable[str] = PLOT_FORMATS,
) -> list[Path]:
    """Write ``<metric>_vs_fraction.<format>`` per metric and format; return the paths."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"unknown plot format {bad[0] if bad else ''!r}; valid: {', '.join(PLOT_FORMATS)}"
        )
    metrics = check_metrics(metrics)  # all of them before the first file is written
    records = list(records)
    paths = []
    for metric in metrics:
        figure = fraction_figure(records, metric)
        for fmt in formats:
            path = Path(output_dir) / f"{metric}_vs_fraction.{fmt}"
            atomic_write_bytes(path, figure_bytes(figure, fmt))
            paths.append(path)
    return paths


def fraction_figure(records: Iterable[dict[str, Any]], metric: str):
    """The figure of ``metric`` vs the label fraction (module docstring), in memory."""
    table = build_table(records, (metric,), baseline=None)
    if table is None:
        raise ConfigError("no fine-tuning results to plot")
    return table_figure(table)


def figure_bytes(figure, fmt: str, dpi: int = 150) -> bytes:
    """``figure`` as a PNG or SVG file's bytes, the same on every rerun (no dates, a fixed
    SVG id salt, text kept as text)."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "bench", "svg.fonttype": "none"}):
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
    return buffer.getvalue()


def loss_figure(curves: dict[str, dict[str, list[list[tuple[int, float]]]]]):
    """Pretraining loss curves: one panel per method (``curves`` method -> dataset -> the
    (epoch, mean loss) points of each run), a line per dataset, the mean over its runs,
    shaded between the lowest and the highest run (a study has tens of seeds: a line and a
    legend entry per run would hide the curves); each panel on its own scale (the methods'
    losses are not comparable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    methods = list(curves)
    columns = min(4, len(methods))
    rows = -(-len(methods) // columns)
    figure = Figure(figsize=(3.4 * columns, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, method in zip(axes, methods, strict=False):
        for index, (dataset, runs) in enumerate(curves[method].items()):
            epochs, mean, low, high = spread_over_runs(runs)
            label = f"{dataset} ({len(runs)} run{'s' * (len(runs) != 1)})"
            axis.plot(epochs, mean, marker="o", markersize=3, color=f"C{index}", label=label)
            if len(runs) > 1:
                axis.fill_between(epochs, low, high, color=f"C{index}", alpha=0.2, linewidth=0)
        axis.set_title(method)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("mean loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", frameon=False)
    for axis in axes[len(methods) :]:
        axis.set_visible(False)
    return figure


def spread_over_runs(runs: list[list[tuple[int, float]]]):
    """Epochs, and per epoch the mean, lowest and highest loss of the runs that have it."""
    losses: dict[int, list[float]] = {}
    for points in runs:
        for epoch, loss in points:
            losses.setdefault(epoch, []).append(loss)
    epochs = sorted(losses)
    mean = [sum(losses[e]) / len(losses[e]) for e in epochs]
    return epochs, mean, [min(losses[e]) for e in epochs], [max(losses[e]) for e in epochs]


LOG_SPAN = 10  # fractions whose largest is more than this times the smallest: a log x axis


def table_figure(table):
    """The figure of a comparison table of one metric: one panel per dataset, one legend
    for every method (module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = table.datasets
    figure = Figure(figsize=(4.2 * len(datasets) + 1.8, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets, strict=True):
        _panel(axis, table, dataset)
    legend = {}  # every method once, even one with points in one panel only
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    ordered = sorted(legend, key=table.methods.index)
    figure.legend([legend[m] for m in ordered], ordered, loc="outside right center", frameon=False)
    return figure


X_LABEL = "labelled fraction of the training patches"


def log_axis(fractions: list[float]) -> bool:
    """Whether fractions are shown on a log axis: they span more than a decade."""
    return max(fractions) > LOG_SPAN * min(fractions)


def fraction_series(table, dataset: str) -> list[tuple[int, str, list[tuple[float, float, float]]]]:
    """The lines of ``dataset``'s panel: (colour index, method, [(fraction in %, mean, std)])
    per method with values, a colour per method the same in every panel."""
    columns = [c for c in table.columns if c.dataset == dataset]
    series = []
    for index, method in enumerate(method_order(table.methods)):
        cells = [(c.fraction, table.cell(method, c)) for c in columns]
        points = [(100 * f, cell.mean, cell.std or 0.0) for f, cell in cells if cell.n]
        if points:
            series.append((index, method, points))
    return series


def _panel(axis, table, dataset: str) -> None:
    """The metric vs the label fraction on ``dataset``, a line per method with std bars."""
    columns = [c for c in table.columns if c.dataset == dataset]
    for index, method, points in fraction_series(table, dataset):
        fractions, means, stds = zip(*points, strict=True)
        axis.errorbar(
            fractions,
            means,
            yerr=stds,
            marker="o",
            markersize=4,
            capsize=3,
            color=f"C{index}",  # one colour per method in every panel
            label=method,
        )
    fractions = [100 * c.fraction for c in columns]
    if log_axis(fractions):
        axis.set_xscale("log")
    axis.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    axis.minorticks_off()
    axis.set_xlabel(X_LABEL)
    axis.set_ylabel(f"{columns[0].label} (%)")
    axis.set_title(dataset)
    axis.grid(alpha=0.3)


def _metadata(fmt: str) -> dict[str, Any]:
    """No creation date or software version, so reruns write the same file."""
    return {"Date": None} if fmt == "svg" else {"Software": None}
