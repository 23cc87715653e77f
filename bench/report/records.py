"""A results folder read once, fast: every run folder's record (and, for the report, its
spec.json and a pretraining's log.jsonl), for tables and reports over thousands of runs;
what did not change since the last scan comes from the folder's index
(:mod:`bench.report.index`), so a study of 10,000 runs reads one file, not 20,000.

:meth:`bench.store.RunStore.scan` reads the same records through pathlib, one glob and a few
``Path`` objects per file; at 10,000 records that overhead is most of the time of ``bench
table``. This reads each folder's files with plain ``open`` and validates them with the
store's own :func:`bench.store.record_problem`; a file that is missing a piece, not JSON, or
not a valid record is read again by :func:`bench.store.read_record_file` (or
:func:`bench.store.read_spec`), so the reasons given are the store's. Results are the same
as ``RunStore.scan`` (valid records and unreadable ones, in the same order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.conventions import RESCORING_INPUTS
from bench.report.index import MISSING, ResultsIndex, signature, trusted
from bench.report.settings import SettingsSummary
from bench.store import (
    LOG,
    RECORD,
    SPEC,
    RunStore,
    UnreadableRecord,
    read_log,
    read_record_file,
    read_spec,
    record_problem,
)

Record = dict[str, Any]
# what the report reads of a spec.json besides its summary (the curves' labels); a scan
# keeps only these of each parsed spec: 10,000 parsed specs would take ~100 MB
SPEC_FIELDS = ("kind", "method", "dataset", "seed")
SPEC_TEXTS_KEPT = 200  # up to this many run folders, the report also shows each spec.json


@dataclass
class Scan:
    """What a results folder holds: per run folder (job id, sorted) its record (None when
    it has none yet; without ``RESCORING_INPUTS`` unless scanned for re-scoring) and, when
    asked for, its spec.json's ``SPEC_FIELDS``, the summary of every spec
    (:class:`bench.report.settings.SettingsSummary`), in a folder of at most
    ``SPEC_TEXTS_KEPT`` runs each spec.json's text, and each pretraining's log.jsonl lines
    (job id -> lines, read once for the loss curves, the health curves and the job list)."""

    records: dict[str, Record | UnreadableRecord | None] = field(default_factory=dict)
    specs: dict[str, Record | UnreadableRecord | None] = field(default_factory=dict)
    spec_texts: dict[str, str] = field(default_factory=dict)
    settings: SettingsSummary = field(default_factory=SettingsSummary)
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    keep_texts: bool = False  # whether spec_texts holds each spec.json (small folders)

    @property
    def valid(self) -> list[Record]:
        return [r for r in self.records.values() if isinstance(r, dict)]

    @property
    def unreadable(self) -> list[UnreadableRecord]:
        return [r for r in self.records.values() if isinstance(r, UnreadableRecord)]

    @property
    def run_ids(self) -> list[str]:
        """Run folders with a spec.json or a result.json (as :meth:`RunStore.run_ids`)."""
        return [
            job_id
            for job_id, record in self.records.items()
            if record is not None or self.specs.get(job_id) is not None
        ]


def scan_results(store: RunStore, specs: bool = False, rescoring: bool = False) -> Scan:
    """Each run folder's record under ``store.root``; with ``specs`` also its spec.json and,
    for a pretraining, its log.jsonl. The folder's index is used and brought up to date;
    the records it keeps lack what only re-scoring reads (``RESCORING_INPUTS``), so a scan
    for re-scoring (``rescoring``) reads every result.json."""
    scan = Scan()
    root = str(store.root)
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except FileNotFoundError:
        return scan
    index = ResultsIndex.load(root)
    if specs:
        scan.settings.known = known_references(index, root, set(names))
    scan.keep_texts = len(names) <= SPEC_TEXTS_KEPT
    for name in names:
        _scan_folder(index, scan, f"{root}{os.sep}{name}", name, specs, rescoring)
    if specs:
        references = [r for r in scan.settings.references() if trusted(r[2][1], index.now_ns)]
        if references or "settings" in index.extra:
            index.extra["settings"] = references
    checked = (() if rescoring else (RECORD,)) + ((SPEC, LOG) if specs else ())
    index.save(names, checked)
    return scan


def _scan_folder(index: ResultsIndex, scan: Scan, folder: str, name: str, specs, rescoring):
    """One run folder's record (and with ``specs`` its spec and pretraining log) into
    ``scan``."""
    scan.records[name] = (
        _record(folder, name) if rescoring else _indexed_record(index, folder, name)
    )
    if specs:
        spec = scan.specs[name] = _indexed_spec(index, scan, folder, name, scan.keep_texts)
        if isinstance(spec, dict) and spec.get("kind") == "pretrain":
            scan.logs[name] = index.read(name, LOG, lambda: read_log(folder), bool)


def known_references(index: ResultsIndex, root: str, names: set[str]) -> dict:
    """The settings references the index kept whose run's spec.json is unchanged."""
    known = {}
    for item in index.extra.get("settings", []):
        try:
            kind, method, (job_id, sig), spec = item
        except (TypeError, ValueError):
            continue
        if job_id in names and signature(os.path.join(root, job_id, SPEC)) == sig:
            known[(kind, method)] = (spec, [job_id, sig])
    return known


def _indexed_record(index: ResultsIndex, folder: str, job_id: str):
    """The folder's record (:func:`_record`), from the index when its file is unchanged and
    it is still a valid record."""
    record = index.read(job_id, RECORD, lambda: _kept_record(folder, job_id), _is_record)
    if isinstance(record, dict) and record_problem(record, job_id) is not None:
        return read_record_file(Path(folder) / RECORD)  # the rules changed: the store's reason
    return record


def _kept_record(folder: str, job_id: str) -> Record | UnreadableRecord | None:
    """The folder's record (:func:`_record`) without ``RESCORING_INPUTS``."""
    record = _record(folder, job_id)
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in RESCORING_INPUTS}


def _is_record(value: Any) -> bool:
    return isinstance(value, dict)


def _indexed_spec(index: ResultsIndex, scan: Scan, folder: str, job_id: str, keep_text: bool):
    """The folder's spec.json ``SPEC_FIELDS`` (or why it is unreadable, or None), counted in
    ``scan.settings``: from the index when its file is unchanged and the differences kept
    are against its group's reference, else read (its text kept when ``keep_text``)."""
    sig = signature(f"{folder}{os.sep}{SPEC}")
    entry = MISSING if keep_text else index.lookup(job_id, SPEC, sig)
    if entry is not MISSING and scan.settings.add_known(
        tuple(entry["group"]), entry["differences"], entry["reference"]
    ):
        return entry["fields"]
    spec, text = _spec(folder)
    if not isinstance(spec, dict):
        return spec
    group, found, reference = scan.settings.add(spec, [job_id, sig] if sig else None)
    fields = {key: spec[key] for key in SPEC_FIELDS if key in spec}
    if keep_text:
        scan.spec_texts[job_id] = text
    if sig is not None and reference is not None:
        value = {"fields": fields, "group": list(group), "differences": found}
        index.remember(job_id, SPEC, sig, value | {"reference": reference})
    return fields


def _record(folder: str, job_id: str) -> Record | UnreadableRecord | None:
    """The folder's record, None without one; the store says why one is unreadable."""
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as handle:
            record = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: the store's reason
        return read_record_file(Path(folder) / RECORD)
    if record_problem(record, job_id) is not None:
        return read_record_file(Path(folder) / RECORD)
    return record


def _spec(folder: str) -> tuple[Record | UnreadableRecord | None, str | None]:
    """The folder's spec.json and its text; (None, None) without one; why it is unreadable
    (the store's reason) and None."""
    try:
        with open(os.path.join(folder, SPEC), encoding="utf-8") as handle:
            text = handle.read()
        spec = json.loads(text)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return read_spec(Path(folder)), None
    if not isinstance(spec, dict):
        return read_spec(Path(folder)), None
    return spec, text


class ScannedStore(RunStore):
    """A run store that answers :meth:`read` from a :class:`Scan` instead of the disk, so
    code that asks for records one by one (:func:`bench.execution.status.job_statuses`)
    does not read each file again."""

    def __init__(self, root: Path | str, scan: Scan) -> None:
        super().__init__(root)
        self.scan_result = scan

    def read(self, job_id: str) -> Record | UnreadableRecord | None:
        if job_id in self.scan_result.records:
            return self.scan_result.records[job_id]
        return super().read(job_id)
