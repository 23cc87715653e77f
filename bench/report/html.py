"""One self-contained HTML page of a results folder, to send to a co-author.

``bench report --results R`` writes it (``write_report``). It leads with the answer: a
headline (datasets, methods, seeds, presets and protocols, how many jobs finished), the
metric-vs-fraction figure and the comparison table of the main metric (the first the
records have: mIoU). Then the other metrics (table and figure each), the per-class IoU of
every dataset and fraction, the pretraining loss and health curves (a collapsed run marked,
:mod:`bench.health`), the environment (versions, host, git commit, device) and the settings
(spec.json) of every run, and last, folded, the state of every job
(:func:`bench.execution.status.job_statuses`; failed ones with error and traceback).
Tables are :func:`bench.report.table.build_table`'s (one table of every metric, shown a
metric at a time) rendered by :func:`bench.report.formats.render`; what cells, marks and
tests mean is said once per section, each table keeps its own MDD and footer lines. Figures
are :mod:`bench.report.svg`'s (the figures of ``bench plot``, drawn without matplotlib),
embedded as base64 SVG images. Each file of the results folder is
read once (:mod:`bench.report.records`). No scripts, no external styles or images, no links
out of the page: it opens offline.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.collapse import health_note
from bench.config import ConfigError
from bench.conventions import check_conventions, rescore_records
from bench.execution.status import job_statuses
from bench.report.columns import RecordColumns, record_columns
from bench.report.formats import DETAILS, HTML, LEGEND, caption_lines, to_html
from bench.report.records import Scan, ScannedStore, scan_results
from bench.report.svg import fraction_svg, health_svg, loss_svg
from bench.report.table import (
    AUTO,
    METRIC_LABELS,
    Table,
    build_table,
    method_order,
    per_class_tables,
)
from bench.states import JobState, JobStatus, summary
from bench.store import (
    RunStore,
    UnreadableRecord,
    atomic_write_bytes,
    check_output_file,
)

NO_FINISHED_RUNS = '<p class="note">no finished fine-tuning runs yet</p>'
REPORT = "report.html"  # in the results folder unless --output says otherwise
# what a record says about where and with what it ran (bench.store.provenance, + device)
ENVIRONMENT = (
    "bench_version",
    "torch_version",
    "smp_version",
    "python_version",
    "host",
    "git_commit",
    "device",
)
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td.text { text-align: left; }
tr.failed td, tr.corrupt td { background: #fde8e8; }
tr.collapsed td { background: #fff1d6; font-weight: bold; }
.table-block { overflow-x: auto; margin-bottom: 1.5em; }
.table-block p, .note, .legend p { font-size: 0.85em; color: #444; margin: 0.2em 0; }
.headline { font-size: 1.05em; margin: 0.3em 0 0.8em; }
caption { text-align: left; font-weight: bold; padding: 0.2em 0; }
nav ul { list-style: none; padding: 0; margin: 0 0 1em; }
nav li { display: inline; margin-right: 1.2em; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
img { max-width: 100%; }
"""


def write_report(
    results: Path | str, output: Path | str | None = None, conventions: Iterable[str] = ()
):
    """Write the report of ``results`` to ``output`` (default ``<results>/report.html``);
    return its path and the records left out as unreadable. Bad input (no results folder,
    no runs in it, an output that cannot be written) raises ConfigError before anything is
    written. With ``conventions`` its tables and plots score the records under each
    (:mod:`bench.conventions`)."""
    store = RunStore(results)
    store.check_exists()
    conventions = tuple(conventions)
    check_conventions(conventions)
    output = Path(output) if output is not None else store.root / REPORT
    check_output_file(output)
    page, unreadable = build_report(store, conventions)
    atomic_write_bytes(output, page.encode("utf-8"))
    return output, unreadable


def build_report(
    store: RunStore, conventions: tuple[str, ...] = ()
) -> tuple[str, list[UnreadableRecord]]:
    """The page's HTML, and the records it had to leave out."""
    scan = scan_results(store, specs=True, rescoring=bool(conventions))
    run_ids = scan.run_ids
    if not run_ids:
        raise ConfigError(f"results folder {store.root} has no runs (no spec.json or result.json)")
    records, unreadable = scan.valid, scan.unreadable
    statuses = job_statuses(ScannedStore(store.root, scan), run_ids)
    unreadable += [spec for spec in scan.specs.values() if isinstance(spec, UnreadableRecord)]
    specs = {job_id: s if isinstance(s, dict) else None for job_id, s in scan.specs.items()}
    notes: list[str] = []
    if conventions:
        records, notes = rescore_records(records, conventions, store.root, image_level=True)
    finetuned = record_columns(records)
    metrics = reported_metrics(records)
    table = build_table(finetuned, metrics, AUTO) if metrics else None
    logs = scan.logs
    sections = [
        ("results", "Results", _notes(notes) + results_section(table)),
        ("metrics", "Other metrics", metrics_section(table)),
        ("per-class", "Per-class IoU", per_class_section(finetuned)),
        ("losses", "Pretraining loss", loss_section(store, specs, logs)),
        ("health", "Pretraining health", health_section(specs, logs)),
        ("environment", "Environment", environment_section(records)),
        ("settings", "Settings", settings_section(scan)),
        ("jobs", "Jobs", status_section(statuses, unreadable, logs)),
    ]
    contents = "".join(f'<li><a href="#{key}">{title}</a></li>' for key, title, _ in sections)
    body = "\n".join(
        f'<section id="{key}">\n<h2>{title}</h2>\n{text}\n</section>'
        for key, title, text in sections
    )
    title = f"rs-sscl-bench report: {store.root}"
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<link rel="icon" href="data:,">\n<title>{_e(title)}</title>\n<style>{STYLE}</style>\n'
        f"</head>\n<body>\n<h1>{_e(title)}</h1>\n"
        f"{headline(finetuned, table, statuses, records)}\n<nav><ul>{contents}</ul></nav>\n"
        f"{body}\n</body>\n</html>\n"
    )
    return page, unreadable


def headline(
    finetuned: RecordColumns,
    table: Table | None,
    statuses: dict[str, JobStatus],
    records: list[dict[str, Any]],
) -> str:
    """What the sweep is, in two sentences: its datasets, methods, seeds, presets and
    protocols; how many jobs are in each state and how many records there are."""
    jobs = f"{_e(summary(statuses.values()))}; {len(records):,} result records"
    jobs += f"{_e(_finished_range(records))}."
    if table is None:
        return f'<p class="headline">{jobs}</p>'
    datasets, methods = list(table.datasets), list(table.methods)
    fractions = sorted({c.fraction_label for c in table.columns}, key=lambda f: float(f[:-1]))
    finished = zip(finetuned["protocol"], finetuned["status"], strict=True)
    protocols = sorted({p for p, status in finished if status == "ok" and isinstance(p, str)})
    facts = [
        f"{len(datasets)} dataset{'s' * (len(datasets) != 1)} ({', '.join(datasets)})",
        f"{len(methods)} method{'s' * (len(methods) != 1)} ({', '.join(methods)})",
        f"label fractions {', '.join(fractions)}",
        f"{_seed_text(table.seeds)}",
        f"preset {', '.join(table.presets) or 'not recorded'}",
        f"protocol {', '.join(protocols) or 'not recorded'}",
    ]
    return f'<p class="headline"><b>{_e("; ".join(facts))}.</b> {jobs}</p>'


def _seed_text(seeds: tuple[int, ...]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
    return f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))})"


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{_e(note)}</p>\n' for note in notes)


def _e(text: Any) -> str:
    text = str(text)  # most cells (ids, numbers) have nothing to escape: checked first
    return html.escape(text) if _HTML_SPECIAL.search(text) else text


_HTML_SPECIAL = re.compile(r"[&<>\"']")  # the characters html.escape replaces


def _finished_range(records: list[dict[str, Any]]) -> str:
    times = sorted(str(r["finished_at"]) for r in records if r.get("finished_at"))
    return f", finished {times[0]} to {times[-1]}" if times else ""


def _image(svg: str, alt: str) -> str:
    """An SVG figure as an image inside the page (a data URI: no file, no script)."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<p><img src="data:image/svg+xml;base64,{data}" alt="{_e(alt)}"></p>'


def _block(table_html: str) -> str:
    return f'<div class="table-block">\n{table_html}\n</div>'


# ----------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------
STATUS_COLUMNS = ("job", "state", "method", "dataset", "fraction", "seed", "detail", "health")


def status_section(
    statuses: dict[str, JobStatus],
    unreadable: list[UnreadableRecord],
    logs: dict[str, list[dict[str, Any]]],
) -> str:
    """Every job's state (as ``bench status``), folded under the count of each state;
    failed ones with error and traceback; a
    pretraining's health (:func:`bench.collapse.health_note` of its log.jsonl ``logs``), a
    collapsed one's row marked."""
    rows = []
    for job_id, status in statuses.items():
        record = status.record or {}
        health = health_note(logs.get(job_id, []))
        cells = [job_id, status.state, record.get("method", ""), record.get("dataset", "")]
        cells += [_fraction(record.get("fraction")), record.get("seed", ""), status.detail, health]
        text = "".join(f'<td class="text">{_e(c)}</td>' for c in cells)
        marks = status.state.value + (" collapsed" if health.startswith("COLLAPSED") else "")
        rows.append(f'<tr class="{marks}">{text}</tr>')
    header = "".join(f"<th>{name}</th>" for name in STATUS_COLUMNS)
    table = f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n"
    folded = _block(table + "\n".join(rows) + "\n</tbody>\n</table>")
    parts = [
        f"<details><summary>{_e(summary(statuses.values()))}: every job</summary>\n"
        f"{folded}\n</details>"
    ]
    for job_id, status in statuses.items():
        if status.state is JobState.FAILED and status.record is not None:
            error = status.record.get("error", "")
            trace = status.record.get("traceback", "")
            parts.append(
                f"<details><summary>{_e(job_id)}: {_e(error)}</summary>"
                f"<pre>{_e(trace)}</pre></details>"
            )
    parts += [f'<p class="note">left out, not a valid record: {_e(bad)}</p>' for bad in unreadable]
    return "\n".join(parts)


def _fraction(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else ""


def reported_metrics(records: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The table metrics that some finished fine-tuning record has."""
    finished = [r for r in records if r.get("kind") == "finetune" and r.get("status") == "ok"]
    return tuple(m for m in METRIC_LABELS if any(isinstance(r.get(m), float) for r in finished))


def _legend(table: Table) -> str:
    """What a section's tables share (cells, marks, the test, notes), said once."""
    lines = "".join(f"<p>{line}</p>" for line in caption_lines(table, HTML, (LEGEND,)))
    return f'<div class="legend">{lines}</div>'


def _metric_block(table: Table, metric: str) -> str:
    """The figure and the table (with its own MDD and footer lines) of one metric."""
    part = table.select(c for c in table.columns if c.metric == metric)
    label = METRIC_LABELS[metric]
    figure = _image(fraction_svg(part), f"{label} vs the labelled fraction")
    return f"<h3>{_e(label)}</h3>\n{figure}\n{_block(to_html(part, parts=(DETAILS,)))}"


def results_section(table: Table | None) -> str:
    """The answer: the main metric (the table's first) vs the label fraction, and its
    comparison table (Δ and tests against ``random`` when it ran)."""
    if table is None:
        return NO_FINISHED_RUNS
    return _metric_block(table, table.columns[0].metric) + "\n" + _legend(table)


def metrics_section(table: Table | None) -> str:
    """The figure and the table of every other metric the records have."""
    if table is None:
        return NO_FINISHED_RUNS
    metrics = list(dict.fromkeys(c.metric for c in table.columns))[1:]
    if not metrics:
        return '<p class="note">the records have one metric</p>'
    return "\n".join(_metric_block(table, m) for m in metrics) + "\n" + _legend(table)


def per_class_section(finetuned: RecordColumns) -> str:
    """The per-class IoU table of every (dataset, fraction) with finished runs (the
    legend once, under the last)."""
    tables = per_class_tables(finetuned, AUTO)
    if not tables:
        return NO_FINISHED_RUNS
    parts = []
    for table in tables:
        column = table.columns[0]
        heading = f"{column.dataset}, {column.fraction_label} of the labels"
        parts.append(f"<h3>{_e(heading)}</h3>\n{_block(to_html(table, parts=(DETAILS,)))}")
    return "\n".join(parts) + "\n" + _legend(tables[-1])


def loss_curves(
    specs: dict[str, dict | None], logs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
    """method -> dataset -> the (epoch, mean loss) points of each of its pretraining runs
    (``specs``: job id -> its spec.json), from the epoch lines of its log.jsonl (a running
    one: the epochs so far)."""
    curves: dict[str, dict[str, list]] = {}
    for job_id, lines in logs.items():
        spec = specs.get(job_id) or {}
        points = [
            (entry["epoch"], entry["loss"])
            for entry in lines
            if entry.get("kind") == "epoch" and isinstance(entry.get("loss"), (int, float))
        ]
        if points:
            runs = curves.setdefault(str(spec.get("method")), {})
            runs.setdefault(str(spec.get("dataset")), []).append(points)
    return curves


def loss_section(
    store: RunStore, specs: dict[str, dict | None], logs: dict[str, list[dict[str, Any]]]
) -> str:
    curves = loss_curves(specs, logs)
    curves = {method: curves[method] for method in method_order(curves)}  # as in the tables
    if not curves:
        return '<p class="note">no pretraining epoch has finished yet</p>'
    note = (
        '<p class="note">Mean training loss of each epoch (log.jsonl), one panel per method '
        "on its own scale, a line per dataset: the mean over its runs (seeds), shaded from "
        "the lowest to the highest run; per step in TensorBoard: <code>tensorboard --logdir "
        f"{_e(store.root)}</code>.</p>"
    )
    return note + "\n" + _image(loss_svg(curves), "loss curves")


def health_section(specs: dict[str, dict | None], logs: dict[str, list[dict[str, Any]]]) -> str:
    """The health curves of every pretraining (:mod:`bench.health`): a line per method and
    dataset over its runs, and each collapsed run on its own, marked."""
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for job_id, spec in specs.items():
        passes = [e for e in logs.get(job_id, []) if e.get("kind") == "health"]
        if not passes or (spec or {}).get("kind") != "pretrain":
            continue
        label = f"{spec.get('method')} {spec.get('dataset')}"
        if any(p.get("collapsed") for p in passes):
            label = f"{label} seed {spec.get('seed')} (collapsed)"
        groups.setdefault(label, []).append(passes)
    if not groups:
        return '<p class="note">no health pass has run yet</p>'
    note = (
        '<p class="note">Signals of a fixed batch of pretraining images at each epoch\'s end '
        "(log.jsonl): the embeddings' std in units of 1/sqrt(d) (0: collapsed to one point), "
        "their effective rank, the two views' alignment, uniformity, and a k-NN probe of each "
        "image's main class. A line per method and dataset: the mean over its runs (seeds), "
        "shaded from the lowest to the highest; a run that collapsed is drawn on its own, "
        "dashed, a red cross at each collapsed epoch (std below "
        "<code>pretrain.collapse_std</code>).</p>"
    )
    return note + "\n" + _image(health_svg(groups), "health")


def environment_section(records: list[dict[str, Any]]) -> str:
    """Each distinct environment the records ran in, and how many runs ran in it."""
    counts: dict[tuple, int] = {}
    for record in records:
        key = tuple(str(record.get(field, "")) for field in ENVIRONMENT)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return '<p class="note">no records yet</p>'
    header = "".join(f"<th>{_e(name)}</th>" for name in (*ENVIRONMENT, "runs"))
    rows = [
        "<tr>" + "".join(f'<td class="text">{_e(v)}</td>' for v in key) + f"<td>{n}</td></tr>"
        for key, n in sorted(counts.items())
    ]
    return _block(f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def settings_section(scan: Scan) -> str:
    """Per kind and method, the settings its runs share and what varies between them
    (:mod:`bench.report.settings`); in a small folder, also each run's spec.json, folded."""
    summary = scan.settings.html() or '<p class="note">no readable spec.json</p>'
    if not scan.spec_texts:
        note = "Each run's full settings are in its folder's spec.json."
        return f'<p class="note">{note}</p>\n{summary}'
    every = "\n".join(
        f"<details><summary>{_e(job_id)}</summary><pre>{_e(text)}</pre></details>"
        for job_id, text in scan.spec_texts.items()
    )
    return f"{summary}\n<h3>Each run's spec.json</h3>\n{every}"
