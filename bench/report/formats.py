"""A ``Table`` as text: terminal text, Markdown, LaTeX (booktabs), HTML and CSV.

Markup: the best mean of a column is bold (Markdown ``**``, LaTeX ``\\textbf``, HTML ``<b>``),
the second best underlined (``<u>``, ``\\underline``); Δ columns follow each value column when
the table has a baseline, with † for a significant paired test. Terminal text has no markup
a console cannot show: bold and underline as ANSI escapes on a terminal (``ansi``), else a
trailing ``*`` (best) and ``^`` (second), as its caption says. Every format but CSV shows
the table in blocks (:meth:`bench.report.table.Table.blocks`: one per dataset, and per
metric where wide; ``wide`` keeps one table) and ends with the caption, once: what a cell
is, the markers, the test, and the footer counting missing cells and failed or skipped
runs. CSV is long (one row per method x column, see ``to_csv``).
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from bench.conventions import NOT_RESCORABLE
from bench.report.power import MAX_SEEDS
from bench.report.table import ALPHA, DECIMALS, MIN_PAIRED_SEEDS, POWER, Cell, Column, Table

MISSING_ORDER = ("failed", "skipped", "not run", "undefined", NOT_RESCORABLE)


@dataclass(frozen=True)
class Style:
    """How one format writes text and the table's markers."""

    escape: Callable[[str], str]
    bold: Callable[[str], str]
    underline: Callable[[str], str]
    pm: str = "±"
    minus: str = "-"
    delta: str = "Δ"
    dagger: str = "†"
    less: str = "<"
    geq: str = "≥"
    best_mark: str | None = None  # the caption names the marks by these, else "Bold" and
    second_mark: str | None = None  # "underlined" in the format's bold and underline


def _markdown_escape(text: str) -> str:
    return re.sub(r"([\\|*`<>])", r"\\\1", text)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Text safe in LaTeX text mode (``loveda_urban`` -> ``loveda\\_urban``)."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _plain(text: str) -> str:
    return text


MARKDOWN = Style(_markdown_escape, lambda t: f"**{t}**", lambda t: f"<u>{t}</u>")
HTML = Style(html.escape, lambda t: f"<b>{t}</b>", lambda t: f"<u>{t}</u>", less="&lt;")
LATEX = Style(
    latex_escape,
    lambda t: f"\\textbf{{{t}}}",
    lambda t: f"\\underline{{{t}}}",
    pm=r"$\pm$",
    minus="$-$",
    delta=r"$\Delta$",
    dagger=r"$^\dagger$",
    less="$<$",
    geq=r"$\geq$",
)
# terminal text: plain marks for a pipe or a file, ANSI bold and underline for a terminal
TEXT = Style(_plain, lambda t: f"{t}*", lambda t: f"{t}^", best_mark="*", second_mark="^")
ANSI = Style(_plain, lambda t: f"\x1b[1m{t}\x1b[22m", lambda t: f"\x1b[4m{t}\x1b[24m")


def ansi_for(stream: TextIO) -> bool:
    """Whether text for ``stream`` may carry ANSI bold and underline: it is a terminal (not
    a pipe or a file), not a dumb one, and NO_COLOR (no-color.org) is not set."""
    isatty = getattr(stream, "isatty", None)
    terminal = bool(isatty and isatty())
    return terminal and os.environ.get("TERM") != "dumb" and not os.environ.get("NO_COLOR")


def _number(value: float, style: Style, sign: bool = False) -> str:
    text = f"{value:+.{DECIMALS}f}" if sign else f"{value:.{DECIMALS}f}"
    if float(text) == 0:
        text = text.lstrip("+-")
    return text.replace("-", style.minus)


def value_text(table: Table, cell: Cell, style: Style) -> str:
    """``mean ± std``, ``(n=k)`` when fewer seeds than the table has, bold/underlined by rank;
    or why the cell is empty."""
    if cell.mean is None:
        return style.escape(cell.missing or "not run")
    text = _number(cell.mean, style)
    if cell.std is not None:
        text += f" {style.pm} {_number(cell.std, style)}"
    if cell.n < len(table.seeds):
        text += f" (n={cell.n})"
    if cell.rank == 1:
        return style.bold(text)
    if cell.rank == 2:
        return style.underline(text)
    return text


def delta_text(table: Table, method: str, cell: Cell, style: Style) -> str:
    """``+1.23`` (``†`` when the paired test is significant); ``ref`` on the baseline's row;
    ``n/a`` when the method or the baseline has no value."""
    if method == table.baseline:
        return "ref"
    if cell.delta is None:
        return "n/a"
    return _number(cell.delta, style, sign=True) + (style.dagger if cell.significant else "")


def _layout(table: Table, style: Style) -> tuple[list[tuple[str, ...]], list[list[str]]]:
    """Escaped header levels per shown column and the text rows (method first)."""
    headers: list[tuple[str, ...]] = []
    for column in table.columns:
        levels = tuple(style.escape(level) for level in table.header(column))
        headers.append(levels)
        if table.baseline is not None:
            headers.append((*levels[:-1], f"{style.delta} {levels[-1]}"))
    rows = []
    for method, cells in zip(table.methods, table.cells, strict=True):
        row = [style.escape(method)]
        for cell in cells:
            row.append(value_text(table, cell, style))
            if table.baseline is not None:
                row.append(delta_text(table, method, cell, style))
        rows.append(row)
    return headers, rows


LEGEND, DETAILS = "legend", "details"


def caption_lines(
    table: Table, style: Style, parts: tuple[str, ...] = (LEGEND, DETAILS)
) -> list[str]:
    """What the cells mean, the markers, the test, and the footer; in ``style``. ``parts``
    picks the ``LEGEND`` (what every table of these records shares: cells, marks, the test,
    the MDD's definition, notes) and the ``DETAILS`` (this table's own: its MDDs, what is
    missing), so a page of several tables can give the legend once."""
    return [line for part, line in _caption(table, style) if part in parts]


def _caption(table: Table, style: Style) -> list[tuple[str, str]]:
    e = style.escape
    lines = _cells_lines(table, style)
    best = style.best_mark or style.bold(e("Bold"))
    second = style.second_mark or style.underline(e("underlined"))
    lines.append(
        (
            LEGEND,
            best
            + e(": best mean in its column; ")
            + second
            + e(": second best; means compared as shown; tied cells share the mark; no marks ")
            + e("in a column whose means are all equal."),
        )
    )
    if table.baseline is not None:
        lines.append((LEGEND, baseline_test_line(table.baseline, style)))
    power = power_lines(table, style)
    if len(power) == 1:  # no MDD, and why: this table's
        lines.append((DETAILS, power[0]))
    elif power:  # the definition, then a line per column
        lines += [(LEGEND, power[0]), *((DETAILS, line) for line in power[1:])]
    lines.append((DETAILS, e(_footer(table))))
    if table.kind == "comparison":
        note = "Metrics from one dataset-level confusion matrix over the test split"
        note += " unless a scoring convention below says otherwise." if table.conventions else "."
        lines.append((LEGEND, e(note)))
        if any(column.metric == "image_miou" for column in table.columns):
            lines.append((LEGEND, e(IMAGE_MIOU_NOTE)))
    lines += [(LEGEND, e(f"Note: {caption}.")) for caption in table.captions]
    return lines


def _cells_lines(table: Table, style: Style) -> list[tuple[str, str]]:
    """The first caption lines: what the rows and cells are (the dataset, if one, in the
    legend; a per-class table's dataset and fraction, its own, on a line before it)."""
    e = style.escape
    n = len(table.seeds)
    seeds = ", ".join(map(str, table.seeds))
    lines, line = [], ""
    if table.kind == "per-class":
        column = table.columns[0]
        text = f"IoU per class on {column.dataset} with {column.fraction_label} of the labels."
        lines.append((DETAILS, e(text)))
    elif len(table.datasets) == 1:
        line = e(f"Dataset: {table.datasets[0]}. ")
    line += (
        e("Rows: methods, baselines first. Cells: mean ")
        + style.pm
        + e(
            f" std over {n} seed{'s' if n != 1 else ''} ({seeds}) in %; std is the sample std "
            "(ddof=1), none for one seed; (n=k): only k of the seeds finished."
        )
    )
    return [*lines, (LEGEND, line)]


def _footer(table: Table) -> str:
    missing = table.missing_counts()
    total = sum(missing.values())
    footer = f"Missing cells: {total} of {table.n_cells}"
    if total:
        footer += " (" + ", ".join(f"{missing[k]} {k}" for k in MISSING_ORDER if k in missing)
        footer += ")"
    footer += (
        f"; cells with fewer seeds: {table.partial_cells}; failed runs: {table.failed_runs}; "
        f"skipped runs: {table.skipped_runs}"
    )
    if table.unreadable_records:
        return footer + f"; unreadable records left out: {table.unreadable_records}."
    return footer + "."


def baseline_test_line(baseline: str, style: Style) -> str:
    """What Δ and † mean: the difference from ``baseline`` and the paired test against it."""
    e, b = style.escape, style.escape(baseline)
    return (
        f"{style.delta}{e(': mean minus the mean of ')}{b}{e(', in points; ')}"
        f"{style.dagger}{e(': p ')}{style.less}{e(f' {ALPHA:g} in a two-sided paired t-test ')}"
        f"{e('(as scipy.stats.ttest_rel) against ')}{b}"
        f"{e(' over the seeds both finished, run only with ')}{style.geq}"
        f"{e(f' {MIN_PAIRED_SEEDS} such seeds; no correction for multiple comparisons.')}"
    )


def power_lines(table: Table, style: Style) -> list[str]:
    """What the seeds can resolve: how the MDD is defined, then one line per column with the
    MDD of each compared method and the seeds its gap needs; or why nothing can be said."""
    if table.baseline is None:
        return []
    e, b = style.escape, style.escape(table.baseline)
    columns = [(c, _power_entries(table, c, style)) for c in table.columns]
    columns = [(c, entries) for c, entries in columns if entries]
    if not columns:
        return [
            e(f"MDD: no method has values at 2 or more seeds where {table.baseline} has ")
            + e("values, so the table ")
            + e("cannot say which differences these seeds could detect; run at least ")
            + e(f"{MIN_PAIRED_SEEDS} seeds.")
        ]
    definition = (
        e("MDD (minimum detectable difference, in points): the smallest true difference from ")
        + b
        + e(f" that the paired t-test above (level {ALPHA:g}, over the seeds shared with ")
        + b
        + e(
            f") detects with power {POWER:g}, from the observed std of the paired "
            "differences; 0 where they do not vary, none with fewer than 2 shared seeds. No "
        )
        + style.dagger
        + e(
            " means not shown at this size, not no difference. Gap: the mean paired "
            f"difference; seeds: how many shared seeds would detect it with power {POWER:g} "
            f"at that spread (at least {MIN_PAIRED_SEEDS}, where the test starts)."
        )
    )
    lines = [definition]
    for column, entries in columns:
        lines.append(e(f"MDD, {_column_name(table, column)}: ") + "; ".join(entries) + e("."))
    return lines


def _column_name(table: Table, column: Column) -> str:
    if table.kind == "per-class":
        return f"IoU of {column.label}"
    return f"{column.dataset} {column.fraction_label} {column.label}"


def _power_entries(table: Table, column: Column, style: Style) -> list[str]:
    """``simclr 2.35 (3 seeds; gap +5.00 needs 3 seeds)`` for each compared method with at
    least 2 seeds shared with the baseline."""
    entries = []
    for method in table.methods:
        cell = table.cell(method, column)
        if method == table.baseline or cell.mdd is None:
            continue
        text = f"{style.escape(method)} {_number(cell.mdd, style)} ({cell.pairs} seeds; "
        text += f"gap {_number(cell.gap, style, sign=True)} "
        if cell.seeds_needed is None and cell.gap == 0:
            text += style.escape("is nothing to detect)")
        elif cell.seeds_needed is None:
            text += style.escape(f"needs more than {MAX_SEEDS:,} seeds)")
        else:
            text += style.escape(f"needs {cell.seeds_needed} seeds)")
        entries.append(text)
    return entries


IMAGE_MIOU_NOTE = (
    "per-image mIoU is GLCNet's: each scored image's (patch's or tile's) class IoU, 0 for a "
    "class absent from both image and prediction, averaged over images, then classes"
)


def _grid(table: Table, style: Style, tablefmt: str) -> str:
    """The rows and header of one block with tabulate (``pipe``: Markdown's; ``github``:
    the same grid without alignment colons, for a terminal)."""
    from tabulate import tabulate

    headers, rows = _layout(table, style)
    return tabulate(
        rows,
        headers=["method", *(" ".join(h) for h in headers)],
        tablefmt=tablefmt,
        disable_numparse=True,
    )


def to_markdown(table: Table, wide: bool = False) -> str:
    """A pipe table per block, each under its title in bold; the caption once, at the end."""
    parts = []
    for block in table.blocks(wide):
        if block.title:
            parts += [MARKDOWN.bold(MARKDOWN.escape(block.title)), ""]
        parts += [_grid(block.table, MARKDOWN, "pipe"), ""]
    return "\n".join([*parts, *caption_lines(table, MARKDOWN)])


def to_text(table: Table, wide: bool = False, ansi: bool = False) -> str:
    """For a console: a grid per block under its title, then the caption once, a line per
    fact (the terminal wraps them; grep finds them); marks as ANSI bold/underline with
    ``ansi``, else ``*`` and ``^``. No escaping and no markup a terminal prints as is."""
    style = ANSI if ansi else TEXT
    parts = []
    for block in table.blocks(wide):
        if block.title:
            parts.append(style.bold(block.title) if ansi else block.title)
        parts += [_grid(block.table, style, "github"), ""]
    return "\n".join([*parts, *caption_lines(table, style)])


def to_html(table: Table, wide: bool = False, parts: tuple[str, ...] = (LEGEND, DETAILS)) -> str:
    """A ``<table>`` per block (its title as the ``<caption>``), then the caption's
    ``parts`` as paragraphs."""
    lines = []
    for block in table.blocks(wide):
        headers, rows = _layout(block.table, HTML)
        lines.append("<table>")
        if block.title:
            lines.append(f"<caption>{HTML.escape(block.title)}</caption>")
        lines += ["<thead>", "<tr><th>method</th>"]
        lines[-1] += "".join(f"<th>{' '.join(h)}</th>" for h in headers) + "</tr>"
        lines += ["</thead>", "<tbody>"]
        for row in rows:
            cells = "".join(f"<td>{c}</td>" for c in row[1:])
            lines.append(f"<tr><th>{row[0]}</th>{cells}</tr>")
        lines += ["</tbody>", "</table>"]
    lines += [f"<p>{line}</p>" for line in caption_lines(table, HTML, parts)]
    return "\n".join(lines)


def to_latex(table: Table, wide: bool = False, label: str = "tab:bench") -> str:
    """A booktabs ``table`` environment: the caption once, a ``tabular`` per block (its
    title in italics above it), grouped header rows with ``\\cmidrule``s."""
    lines = [
        "% generated by `python -m bench table`; needs \\usepackage{booktabs}",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\caption{" + " ".join(caption_lines(table, LATEX)) + "}",
        f"\\label{{{label}}}",
    ]
    for index, block in enumerate(table.blocks(wide)):
        if index:
            lines.append("\\par\\medskip")
        if block.title:
            lines.append(f"\\textit{{{LATEX.escape(block.title)}}}\\par\\smallskip")
        lines += _tabular(block.table)
    lines.append("\\end{table}")
    return "\n".join(lines)


def _tabular(table: Table) -> list[str]:
    headers, rows = _layout(table, LATEX)
    depth = len(headers[0])
    lines = ["\\begin{tabular}{l" + "r" * len(headers) + "}", "\\toprule"]
    for level in range(depth - 1):
        groups: list[tuple[tuple[str, ...], int]] = []
        for header in headers:
            prefix = header[: level + 1]
            if groups and groups[-1][0] == prefix:
                groups[-1] = (prefix, groups[-1][1] + 1)
            else:
                groups.append((prefix, 1))
        cells, rules, start = [""], [], 2
        for prefix, width in groups:
            text = prefix[-1]
            cells.append(text if width == 1 else f"\\multicolumn{{{width}}}{{c}}{{{text}}}")
            if width > 1:
                rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join(cells) + " \\\\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(" & ".join(["Method", *(h[-1] for h in headers)]) + " \\\\")
    lines.append("\\midrule")
    lines.extend(" & ".join(row) + " \\\\" for row in rows)
    return lines + ["\\bottomrule", "\\end{tabular}"]


CSV_FIELDS = (
    "method",
    "dataset",
    "fraction",
    "metric",
    "class",
    "status",
    "n",
    "mean",
    "std",
    "seeds",
    "rank",
    "baseline",
    "delta",
    "pairs",
    "p_value",
    "significant",
    "mdd",
    "seeds_needed",
)


def to_csv(table: Table) -> str:
    """One row per method x column; values in percent, empty where undefined.

    ``status`` is ``ok`` (every seed of the table finished), ``partial`` (some did) or why
    there is no value; ``seeds`` lists the finished ones separated by ``;``; ``rank`` is 1
    or 2 for the marked cells; ``delta``/``pairs``/``p_value``/``significant`` compare with
    ``baseline`` (``p_value`` empty when not tested); ``mdd`` is the minimum detectable
    difference at the shared seeds and ``seeds_needed`` the shared seeds that would detect
    the observed paired gap (both empty with fewer than 2 shared seeds; ``seeds_needed``
    also with no gap, or beyond ``MAX_SEEDS``).
    """

    def fixed(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for method, cells in zip(table.methods, table.cells, strict=True):
        for column, cell in zip(table.columns, cells, strict=True):
            compared = table.baseline is not None and method != table.baseline
            writer.writerow(
                [
                    method,
                    column.dataset,
                    f"{column.fraction:g}",
                    column.metric,
                    column.class_name or "",
                    _status(table, cell),
                    cell.n,
                    fixed(cell.mean),
                    fixed(cell.std),
                    ";".join(map(str, cell.seeds)),
                    cell.rank or "",
                    table.baseline or "",
                    fixed(cell.delta) if compared else "",
                    cell.pairs if compared else "",
                    "" if cell.p_value is None else f"{cell.p_value:.4g}",
                    "" if cell.p_value is None else str(cell.significant).lower(),
                    fixed(cell.mdd) if compared else "",
                    cell.seeds_needed if compared and cell.seeds_needed is not None else "",
                ]
            )
    return out.getvalue()


def _status(table: Table, cell: Cell) -> str:
    if cell.mean is None:
        return cell.missing or "not run"
    return "ok" if cell.n >= len(table.seeds) else "partial"


FORMATS: dict[str, Callable[..., str]] = {
    "md": to_markdown,
    "latex": to_latex,
    "csv": to_csv,
    "html": to_html,
    "text": to_text,
}
# .txt is not here: a file named so could be meant as Markdown or as text; --format says
SUFFIXES = {".md": "md", ".tex": "latex", ".csv": "csv", ".html": "html", ".htm": "html"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        from bench.config import ConfigError

        raise ConfigError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def render(table: Table, fmt: str = "md", wide: bool = False, ansi: bool = False) -> str:
    """``table`` in ``fmt``: in blocks (one per dataset, and per metric where wide) unless
    ``wide``; ``ansi`` marks terminal text with ANSI bold and underline (see
    :func:`ansi_for`); CSV is always one row per cell."""
    fmt = check_format(fmt)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "text":
        return to_text(table, wide, ansi)
    return FORMATS[fmt](table, wide)
