"""One self-contained HTML page of a results folder, to send to a co-author.

``bench report --results R`` writes it (``write_report``). Everything is inside the file:
the comparison tables of every metric (:func:`bench.report.table.build_table`, rendered by
:func:`bench.report.formats.render`, with Δ, † and what the seeds can resolve), the per-class
IoU of every dataset and fraction, the metric-vs-fraction plots, the pretraining loss
curves and health curves (:mod:`bench.report.plots`, embedded as base64 PNG; a collapsed run
marked, :mod:`bench.health`), the state of every job
(:func:`bench.execution.status.job_statuses`; failed ones with their error and traceback), and the
settings (spec.json) and environment (versions, host, git commit, device) each run recorded.
No scripts, no external styles or images, no links out of the page: it opens offline.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.execution.status import job_statuses
from bench.health import health_note
from bench.report.formats import render
from bench.report.plots import figure_bytes, fraction_figure, health_figure, loss_figure
from bench.report.table import AUTO, METRIC_LABELS, build_table, method_order, per_class_table
from bench.states import JobState, JobStatus, summary
from bench.store import (
    RunStore,
    UnreadableRecord,
    atomic_write_bytes,
    check_output_file,
    read_log,
    read_spec,
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
.table-block p, .note { font-size: 0.85em; color: #444; margin: 0.2em 0; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
img { max-width: 100%; }
"""


def write_report(results: Path | str, output: Path | str | None = None):
    """Write the report of ``results`` to ``output`` (default ``<results>/report.html``);
    return its path and the records left out as unreadable. Bad input (no results folder,
    no runs in it, an output that cannot be written) raises ConfigError before anything is
    written."""
    store = RunStore(results)
    store.check_exists()
    output = Path(output) if output is not None else store.root / REPORT
    check_output_file(output)
    page, unreadable = build_report(store)
    atomic_write_bytes(output, page.encode("utf-8"))
    return output, unreadable


def build_report(store: RunStore) -> tuple[str, list[UnreadableRecord]]:
    """The page's HTML, and the records it had to leave out."""
    run_ids = store.run_ids()
    if not run_ids:
        raise ConfigError(f"results folder {store.root} has no runs (no spec.json or result.json)")
    records, unreadable = store.scan()
    statuses = job_statuses(store, run_ids)
    specs = {job_id: read_spec(store.run_dir(job_id)) for job_id in run_ids}
    unreadable += [spec for spec in specs.values() if isinstance(spec, UnreadableRecord)]
    specs = {job_id: s if isinstance(s, dict) else None for job_id, s in specs.items()}
    metrics = reported_metrics(records)
    logs = {job_id: read_log(store.run_dir(job_id)) for job_id in run_ids}
    sections = [
        ("status", "Jobs", status_section(statuses, unreadable, logs)),
        ("tables", "Comparison tables", tables_section(records, metrics)),
        ("per-class", "Per-class IoU", per_class_section(records)),
        ("plots", "Metrics vs label fraction", plots_section(records, metrics)),
        ("losses", "Pretraining loss", loss_section(store, specs)),
        ("health", "Pretraining health", health_section(specs, logs)),
        ("environment", "Environment", environment_section(records)),
        ("settings", "Settings of every run", settings_section(specs)),
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
        f'<p class="note">{_e(summary(statuses.values()))}; {len(records)} result records'
        f"{_finished_range(records)}.</p>\n<nav><ul>{contents}</ul></nav>\n{body}\n"
        "</body>\n</html>\n"
    )
    return page, unreadable


def _e(text: Any) -> str:
    return html.escape(str(text))


def _finished_range(records: list[dict[str, Any]]) -> str:
    times = sorted(str(r["finished_at"]) for r in records if r.get("finished_at"))
    return f", finished {times[0]} to {times[-1]}" if times else ""


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></p>'


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
    """Every job's state (as ``bench status``), failed ones with error and traceback; a
    pretraining's health (:func:`bench.health.health_note` of its log.jsonl ``logs``), a
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
    parts = [_block(table + "\n".join(rows) + "\n</tbody>\n</table>")]
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


def tables_section(records: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    """One comparison table per reported metric (Δ and tests against ``random`` when it ran)."""
    if not metrics:
        return NO_FINISHED_RUNS
    parts = []
    for metric in metrics:
        table = build_table(records, (metric,), AUTO)
        parts.append(f"<h3>{_e(METRIC_LABELS[metric])}</h3>\n{_block(render(table, 'html'))}")
    return "\n".join(parts)


def per_class_section(records: list[dict[str, Any]]) -> str:
    """The per-class IoU table of every (dataset, fraction) with finished runs."""
    finished = {
        (r["dataset"], r["fraction"])
        for r in records
        if r.get("kind") == "finetune" and r.get("status") == "ok"
    }
    if not finished:
        return NO_FINISHED_RUNS
    parts = []
    for dataset, fraction in sorted(finished):
        table = per_class_table(records, dataset, fraction, AUTO)
        heading = f"{dataset}, {100 * fraction:g}% of the labels"
        parts.append(f"<h3>{_e(heading)}</h3>\n{_block(render(table, 'html'))}")
    return "\n".join(parts)


def plots_section(records: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    if not metrics:
        return NO_FINISHED_RUNS
    parts = []
    for metric in metrics:
        png = figure_bytes(fraction_figure(records, metric), "png", dpi=100)
        parts.append(_image(png, f"{METRIC_LABELS[metric]} vs the labelled fraction"))
    return "\n".join(parts)


def loss_curves(store: RunStore, specs: dict[str, dict | None]) -> dict[str, dict[str, list]]:
    """method -> "dataset seed s" -> (epoch, mean loss) of every pretraining run (``specs``:
    job id -> its spec.json), from the epoch lines of its log.jsonl (a running one: the
    epochs so far)."""
    curves: dict[str, dict[str, list]] = {}
    for job_id, spec in specs.items():
        spec = spec or {}
        if spec.get("kind") != "pretrain":
            continue
        points = [
            (entry["epoch"], entry["loss"])
            for entry in read_log(store.run_dir(job_id))
            if entry.get("kind") == "epoch" and isinstance(entry.get("loss"), (int, float))
        ]
        if points:
            label = f"{spec.get('dataset')} seed {spec.get('seed')}"
            curves.setdefault(str(spec.get("method")), {})[label] = points
    return curves


def loss_section(store: RunStore, specs: dict[str, dict | None]) -> str:
    curves = loss_curves(store, specs)
    curves = {method: curves[method] for method in method_order(curves)}  # as in the tables
    if not curves:
        return '<p class="note">no pretraining epoch has finished yet</p>'
    note = (
        '<p class="note">Mean training loss of each epoch (log.jsonl), one panel per method '
        "on its own scale; per step in TensorBoard: <code>tensorboard --logdir "
        f"{_e(store.root)}</code>.</p>"
    )
    return note + "\n" + _image(figure_bytes(loss_figure(curves), "png", dpi=100), "loss curves")


def health_section(specs: dict[str, dict | None], logs: dict[str, list[dict[str, Any]]]) -> str:
    """The health curves of every pretraining (:mod:`bench.health`), collapsed runs marked."""
    runs = {}
    for job_id, spec in specs.items():
        passes = [e for e in logs.get(job_id, []) if e.get("kind") == "health"]
        if (spec or {}).get("kind") == "pretrain" and passes:
            runs[f"{spec.get('method')} {spec.get('dataset')} seed {spec.get('seed')}"] = passes
    if not runs:
        return '<p class="note">no health pass has run yet</p>'
    note = (
        '<p class="note">Signals of a fixed batch of pretraining images at each epoch\'s end '
        "(log.jsonl): the embeddings' std in units of 1/sqrt(d) (0: collapsed to one point), "
        "their effective rank, the two views' alignment, uniformity, and a k-NN probe of each "
        "image's main class. A red cross marks a collapsed epoch (std below "
        "<code>pretrain.collapse_std</code>); a collapsed run's line is dashed.</p>"
    )
    return note + "\n" + _image(figure_bytes(health_figure(runs), "png", dpi=100), "health")


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


def settings_section(specs: dict[str, dict | None]) -> str:
    """Each run's spec.json (every setting of its job), folded."""
    parts = []
    for job_id, spec in specs.items():
        text = json.dumps(spec, indent=1, sort_keys=True) if spec else "no readable spec.json"
        parts.append(f"<details><summary>{_e(job_id)}</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)
