"""A ``Table`` as text: Markdown, LaTeX (booktabs), HTML and CSV.

Markup: the best mean of a column is bold (Markdown ``**``, LaTeX ``\\textbf``, HTML ``<b>``),
the second best underlined (``<u>``, ``\\underline``); Δ columns follow each value column when
the table has a baseline, with † for a significant paired test. Every format but CSV ends
with the caption: what a cell is, the markers, the test, and the footer counting missing
cells and failed or skipped runs. CSV is long (one row per method x column, see ``to_csv``).
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

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


def caption_lines(table: Table, style: Style) -> list[str]:
    """What the cells mean, the markers, the test, and the footer; in ``style``."""
    e = style.escape
    n = len(table.seeds)
    seeds = ", ".join(map(str, table.seeds))
    lines = []
    if table.kind == "per-class":
        column = table.columns[0]
        lines.append(
            e(f"IoU per class on {column.dataset} with {column.fraction_label} of the labels. ")
        )
    elif len(table.datasets) == 1:
        lines.append(e(f"Dataset: {table.datasets[0]}. "))
    else:
        lines.append("")
    lines[0] += (
        e("Rows: methods, baselines first. Cells: mean ")
        + style.pm
        + e(
            f" std over {n} seed{'s' if n != 1 else ''} ({seeds}) in %; std is the sample std "
            "(ddof=1), none for one seed; (n=k): only k of the seeds finished."
        )
    )
    lines.append(
        style.bold(e("Bold"))
        + e(": best mean in its column; ")
        + style.underline(e("underlined"))
        + e(": second best; means compared as shown; tied cells share the mark; no marks in a ")
        + e("column whose means are all equal.")
    )
    if table.baseline is not None:
        lines.append(baseline_test_line(table.baseline, style))
    lines.extend(power_lines(table, style))
    missing = table.missing_counts()
    total = sum(missing.values())
    footer = f"Missing cells: {total} of {table.n_cells}"
    if total:
        footer += " (" + ", ".join(f"{missing[k]} {k}" for k in MISSING_ORDER if k in missing)
        footer += ")"
    footer += (
        f"; cells with fewer seeds: {table.partial_cells}; failed runs: {table.failed_runs}; "
        f"skipped runs: {table.skipped_runs}"
        + (
            f"; unreadable records left out: {table.unreadable_records}."
            if table.unreadable_records
            else "."
        )
    )
    lines.append(e(footer))
    if table.kind == "comparison":
        scope = "Metrics from one dataset-level confusion matrix over the test split"
        scope += " unless a scoring convention below says otherwise." if table.conventions else "."
        lines.append(e(scope))
        if any(column.metric == "image_miou" for column in table.columns):
            lines.append(e(IMAGE_MIOU_NOTE))
    lines.extend(e(f"Note: {caption}.") for caption in table.captions)
    return lines


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


def to_markdown(table: Table) -> str:
    from tabulate import tabulate

    headers, rows = _layout(table, MARKDOWN)
    text = tabulate(
        rows,
        headers=["method", *(" ".join(h) for h in headers)],
        tablefmt="pipe",
        disable_numparse=True,
    )
    return "\n".join([text, "", *caption_lines(table, MARKDOWN)])


def to_html(table: Table) -> str:
    headers, rows = _layout(table, HTML)
    lines = ["<table>", "<thead>", "<tr><th>method</th>"]
    lines[-1] += "".join(f"<th>{' '.join(h)}</th>" for h in headers) + "</tr>"
    lines += ["</thead>", "<tbody>"]
    for row in rows:
        lines.append(f"<tr><th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>")
    lines += ["</tbody>", "</table>"]
    lines += [f"<p>{line}</p>" for line in caption_lines(table, HTML)]
    return "\n".join(lines)


def to_latex(table: Table, label: str = "tab:bench") -> str:
    """A booktabs ``table`` environment; grouped header rows with ``\\cmidrule``s."""
    headers, rows = _layout(table, LATEX)
    depth = len(headers[0])
    lines = [
        "% generated by `python -m bench table`; needs \\usepackage{booktabs}",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\caption{" + " ".join(caption_lines(table, LATEX)) + "}",
        f"\\label{{{label}}}",
        "\\begin{tabular}{l" + "r" * len(headers) + "}",
        "\\toprule",
    ]
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
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)


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


FORMATS: dict[str, Callable[[Table], str]] = {
    "md": to_markdown,
    "latex": to_latex,
    "csv": to_csv,
    "html": to_html,
}
SUFFIXES = {".md": "md", ".tex": "latex", ".csv": "csv", ".html": "html", ".htm": "html"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        from bench.config import ConfigError

        raise ConfigError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def render(table: Table, fmt: str = "md") -> str:
    return FORMATS[check_format(fmt)](table)
