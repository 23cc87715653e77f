"""Figures with matplotlib (Agg canvas, no display): a metric vs the label fraction, and
the pretraining loss curves of the HTML report.

One figure per metric, one panel per dataset; x is the label fraction on a log axis, y the
mean over seeds in percent with the sample std (ddof=1) as error bars (none for one seed);
one line per method in the table's row order. Points without a value are left out. Figures
are made in memory (``fraction_figure``, ``loss_figure``) and written as files
(``plot_fraction_curves``) or embedded (``figure_bytes``, :mod:`bench.report.html`).
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
    return _figure(table)


def figure_bytes(figure, fmt: str, dpi: int = 150) -> bytes:
    """``figure`` as a PNG or SVG file's bytes, the same on every rerun (no dates, a fixed
    SVG id salt, text kept as text)."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "bench", "svg.fonttype": "none"}):
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=_metadata(fmt))
    return buffer.getvalue()


def loss_figure(curves: dict[str, dict[str, list[tuple[int, float]]]]):
    """Pretraining loss curves: one panel per method (``curves`` method -> run label ->
    (epoch, mean loss) points), one line per run, each panel on its own scale (the methods'
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
        for index, (label, points) in enumerate(curves[method].items()):
            epochs, losses = zip(*points, strict=True)
            axis.plot(epochs, losses, marker="o", markersize=3, color=f"C{index}", label=label)
        axis.set_title(method)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("mean loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", frameon=False)
    for axis in axes[len(methods) :]:
        axis.set_visible(False)
    return figure


# The health panels (bench.health): the log.jsonl key and the panel's title
HEALTH_PANELS = (
    ("embedding_std", "embedding std x sqrt(d)"),
    ("effective_rank", "effective rank"),
    ("alignment", "alignment (lower: closer views)"),
    ("uniformity", "uniformity (lower: more spread)"),
    ("knn_accuracy", "k-NN accuracy"),
)


def health_figure(runs: dict[str, list[dict[str, Any]]]):
    """The health curves of pretraining runs (``runs``: label -> the health lines of its
    log.jsonl), one panel per signal, one line per run; the std in units of 1/sqrt(d) (the
    collapse threshold's), collapsed epochs marked with a red cross and a collapsed run's
    line dashed, with "collapsed" in its label."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(3.4 * len(HEALTH_PANELS), 3.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(HEALTH_PANELS), squeeze=False)[0]
    for index, (label, passes) in enumerate(runs.items()):
        ever = any(p.get("collapsed") for p in passes)
        for axis, (key, _) in zip(axes, HEALTH_PANELS, strict=True):
            points = [
                (p["epoch"], _panel_value(p, key), p.get("collapsed")) for p in passes if key in p
            ]
            if not points:
                continue
            epochs, values, _ = zip(*points, strict=True)
            name = f"{label} (collapsed)" if ever else label
            style = "--" if ever else "-"
            axis.plot(
                epochs, values, style, marker="o", markersize=3, color=f"C{index}", label=name
            )
            bad = [(e, v) for e, v, flagged in points if flagged]
            if bad:
                axis.plot(*zip(*bad, strict=True), "x", color="red", markersize=8)
    for axis, (_, title) in zip(axes, HEALTH_PANELS, strict=True):
        axis.set_title(title, fontsize="medium")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small", frameon=False)
    return figure


def _panel_value(health: dict[str, Any], key: str) -> float:
    value = float(health[key])
    return value * health["embedding_dim"] ** 0.5 if key == "embedding_std" else value


def _figure(table):
    """One panel per dataset of ``table`` (one metric), one legend for every method."""
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


def _panel(axis, table, dataset: str) -> None:
    """The metric vs the label fraction on ``dataset``, a line per method with std bars."""
    columns = [c for c in table.columns if c.dataset == dataset]
    for index, method in enumerate(method_order(table.methods)):
        cells = [table.cell(method, c) for c in columns]
        points = [(c.fraction, cell) for c, cell in zip(columns, cells, strict=True) if cell.n]
        if not points:
            continue
        axis.errorbar(
            [100 * f for f, _ in points],
            [cell.mean for _, cell in points],
            yerr=[cell.std or 0.0 for _, cell in points],
            marker="o",
            markersize=4,
            capsize=3,
            color=f"C{index}",  # one colour per method in every panel
            label=method,
        )
    fractions = [100 * c.fraction for c in columns]
    axis.set_xscale("log")
    axis.set_xticks(fractions, [f"{f:g}%" for f in fractions])
    axis.minorticks_off()
    axis.set_xlabel("labelled fraction of the training patches")
    axis.set_ylabel(f"{columns[0].label} (%)")
    axis.set_title(dataset)
    axis.grid(alpha=0.3)


def _metadata(fmt: str) -> dict[str, Any]:
    """No creation date or software version, so reruns write the same file."""
    return {"Date": None} if fmt == "svg" else {"Software": None}
