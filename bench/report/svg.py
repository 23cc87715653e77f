"""The HTML report's figures as SVG written directly: milliseconds where matplotlib takes
about a second per figure, and a report over 10,000 records has six figures.

The same figures as :mod:`bench.report.plots` (which ``bench plot`` uses for its PNG and SVG
files) from the same data (:func:`bench.report.plots.fraction_series`,
:func:`~bench.report.plots.spread_over_runs`) and rules (:func:`~bench.report.plots.log_axis`):
a panel per dataset of a metric vs the label fraction, a line per method with std bars;
and a panel per method of the pretraining loss per epoch, a line per dataset with the
spread over its runs shaded; and a panel per health signal of the pretrainings
(:mod:`bench.health`), a line per run, a collapsed run dashed and its collapsed epochs
crossed in red. Only lines, markers, text and a legend: no interaction.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from bench.report.plots import X_LABEL, fraction_series, log_axis, spread_over_runs

# matplotlib's default colour cycle (C0, C1, ...), so the report matches `bench plot`
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
WIDTH, HEIGHT = 300, 230  # of a panel, px
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 26, 44  # a panel's margins around its plot area
LEGEND_WIDTH = 170
FONT = 'font-family="sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    """A line: its label, colour index and (x, y, low, high) points; ``band`` shades from
    low to high, else error bars."""

    label: str
    colour: int
    points: list[tuple[float, float, float, float]]
    band: bool = False
    dashed: bool = False
    crossed: list[tuple[float, float]] = field(default_factory=list)  # red crosses at (x, y)


@dataclass(frozen=True)
class Panel:
    title: str
    series: list[Series]
    x_label: str
    y_label: str
    x_ticks: list[tuple[float, str]] | None = None  # None: about five round ones
    log_x: bool = False


def fraction_svg(table) -> str:
    """A comparison table of one metric as a figure: a panel per dataset (plots' rules)."""
    panels = []
    for dataset in table.datasets:
        fractions = [100 * c.fraction for c in table.columns if c.dataset == dataset]
        series = [
            Series(method, index, [(x, m, m - s, m + s) for x, m, s in points])
            for index, method, points in fraction_series(table, dataset)
        ]
        ticks = [(f, f"{f:g}%") for f in fractions]
        label = f"{table.columns[0].label} (%)"
        panels.append(Panel(dataset, series, X_LABEL, label, ticks, log_axis(fractions)))
    return figure(panels)


def loss_svg(curves: dict[str, dict[str, list[list[tuple[int, float]]]]]) -> str:
    """Pretraining loss: a panel per method (own scale), a line per dataset, the mean over
    its runs shaded from the lowest to the highest run."""
    panels = []
    for method, by_dataset in curves.items():
        series = []
        for index, (dataset, runs) in enumerate(by_dataset.items()):
            epochs, mean, low, high = spread_over_runs(runs)
            label = f"{dataset} ({len(runs)} run{'s' * (len(runs) != 1)})"
            points = list(zip(epochs, mean, low, high, strict=True))
            series.append(Series(label, index, points, band=True))
        panels.append(Panel(method, series, "epoch", "mean loss"))
    return figure(panels, legend_per_panel=True)


# The health panels: the log.jsonl key of each signal and the panel's title
HEALTH_PANELS = (
    ("embedding_std", "embedding std x sqrt(d)"),
    ("effective_rank", "effective rank"),
    ("alignment", "alignment (lower: closer views)"),
    ("uniformity", "uniformity (lower: more spread)"),
    ("knn_accuracy", "k-NN accuracy"),
)


def health_svg(groups: dict[str, list[list[dict[str, Any]]]]) -> str:
    """The health curves of pretraining runs (``groups``: label -> the health lines of the
    log.jsonl of each of its runs), a panel per signal, a line per group: the mean over its
    runs, shaded from the lowest to the highest; the std in units of 1/sqrt(d) (the collapse
    threshold's). A group whose runs collapsed (its label says so) is dashed, its collapsed
    epochs crossed in red."""
    panels = []
    for key, title in HEALTH_PANELS:
        series = []
        for index, (label, runs) in enumerate(groups.items()):
            curves = [[(p["epoch"], _health_value(p, key)) for p in r if key in p] for r in runs]
            if not any(curves):
                continue
            epochs, mean, low, high = spread_over_runs([c for c in curves if c])
            points = list(zip(epochs, mean, low, high, strict=True))
            flagged = {p["epoch"] for run in runs for p in run if p.get("collapsed")}
            crossed = [(e, m) for e, m, _, _ in points if e in flagged]
            series.append(Series(label, index, points, True, bool(flagged), crossed))
        if series:
            panels.append(Panel(title, series, "epoch", ""))
    return figure(panels)


def _health_value(health: dict[str, Any], key: str) -> float:
    value = float(health[key])
    return value * health["embedding_dim"] ** 0.5 if key == "embedding_std" else value


def figure(panels: list[Panel], legend_per_panel: bool = False) -> str:
    """Panels side by side (four to a row), then one legend of every series label (or, with
    ``legend_per_panel``, a legend inside each panel: their labels differ)."""
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    legend = {} if legend_per_panel else {s.label: s.colour for p in panels for s in p.series}
    width = columns * WIDTH + (LEGEND_WIDTH if legend else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{rows * HEIGHT}" '
        f'viewBox="0 0 {width} {rows * HEIGHT}">',
        f'<rect width="{width}" height="{rows * HEIGHT}" fill="white"/>',
    ]
    for index, panel in enumerate(panels):
        x0, y0 = (index % columns) * WIDTH, (index // columns) * HEIGHT
        parts.append(f'<g transform="translate({x0},{y0})">{_panel(panel, legend_per_panel)}</g>')
    for row, (label, colour) in enumerate(legend.items()):
        y = 30 + 16 * row
        parts.append(_legend_entry(columns * WIDTH + 8, y, label, colour))
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(panel: Panel, legend: bool) -> str:
    """One panel: axes, grid, ticks, labels, the lines (and a legend)."""
    xs = [p[0] for s in panel.series for p in s.points] or [0.0, 1.0]
    ys = [v for s in panel.series for p in s.points for v in p[1:]] or [0.0, 1.0]
    if panel.x_ticks:
        xs += [t for t, _ in panel.x_ticks]
    fx = _scale(min(xs), max(xs), LEFT, WIDTH - RIGHT, panel.log_x)
    fy = _scale(min(ys), max(ys), HEIGHT - BOTTOM, TOP, False)
    x_ticks = panel.x_ticks or [(t, f"{t:g}") for t in _round_ticks(min(xs), max(xs))]
    out = [f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" {FONT}>{_e(panel.title)}</text>']
    for value, label in x_ticks:
        x = fx(value)
        out.append(_line(x, TOP, x, HEIGHT - BOTTOM, "#ddd"))
        out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" {FONT}>')
        out[-1] += f"{_e(label)}</text>"
    for value in _round_ticks(min(ys), max(ys)):
        y = fy(value)
        out.append(_line(LEFT, y, WIDTH - RIGHT, y, "#ddd"))
        label = f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{value:g}</text>'
        out.append(label)
    out.append(_line(LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, HEIGHT - BOTTOM, "#444"))
    out.append(_line(LEFT, TOP, LEFT, HEIGHT - BOTTOM, "#444"))
    out.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        f"{FONT}>{_e(panel.x_label)}</text>"
        f'<text transform="translate(12,{(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle" {FONT}>{_e(panel.y_label)}</text>'
    )
    out += [_series(s, fx, fy) for s in panel.series]
    if legend:
        out += [_legend_entry(LEFT + 8, TOP + 10 + 14 * i, s.label, s.colour)
                for i, s in enumerate(panel.series)]  # fmt: skip
    return "\n".join(out)


def _series(series: Series, fx, fy) -> str:
    """A line with round markers, and its std bars or its shaded band."""
    colour = PALETTE[series.colour % len(PALETTE)]
    points = [(fx(x), fy(y), fy(low), fy(high)) for x, y, low, high in series.points]
    out = []
    if series.band and len(points) > 1:
        outline = [(x, hi) for x, _, _, hi in points] + [(x, lo) for x, _, lo, _ in points[::-1]]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in outline)
        out.append(f'<polygon points="{path}" fill="{colour}" fill-opacity="0.2"/>')
    elif not series.band:
        for x, _, low, high in points:
            out.append(_line(x, low, x, high, colour))
            out += [_line(x - 3, y, x + 3, y, colour) for y in (low, high)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
    dash = ' stroke-dasharray="5,3"' if series.dashed else ""
    out.append(
        f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>'
    )
    out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y, _, _ in points]
    for x, y in ((fx(x), fy(y)) for x, y in series.crossed):
        out.append(_line(x - 4, y - 4, x + 4, y + 4, "red", 2))
        out.append(_line(x - 4, y + 4, x + 4, y - 4, "red", 2))
    return "\n".join(out)


def _legend_entry(x: float, y: float, label: str, colour: int) -> str:
    hex_colour = PALETTE[colour % len(PALETTE)]
    return (
        f"{_line(x, y - 4, x + 18, y - 4, hex_colour, 2)}"
        f'<text x="{x + 24}" y="{y}" {FONT}>{_e(label)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 1) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
        f'stroke-width="{width}"/>'
    )


def _scale(low: float, high: float, start: float, end: float, log: bool):
    """Data -> pixels, the data range padded by 5% (a single value: centred)."""
    f = math.log10 if log else float
    a, b = f(low), f(high)
    pad = (b - a) * 0.05 if b > a else 1.0
    a, b = a - pad, b + pad
    return lambda v: start + (f(v) - a) / (b - a) * (end - start)


def _round_ticks(low: float, high: float, wanted: int = 5) -> list[float]:
    """About ``wanted`` round values (1, 2 or 5 x 10^k apart) from ``low`` to ``high``."""
    span = high - low if high > low else abs(high) or 1.0
    raw = span / wanted
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)),
               key=lambda s: abs(s - raw))  # fmt: skip
    first = math.ceil(low / step) * step
    count = int(math.floor((high - first) / step + 1e-9)) + 1
    return [round(first + i * step, 10) for i in range(max(count, 1))]


def _e(text: str) -> str:
    return html.escape(str(text))
