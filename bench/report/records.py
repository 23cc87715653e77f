"""A results folder read once, fast: every run folder's record (and, for the report, its
spec.json), for tables and reports over thousands of runs.

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

from bench.report.settings import SettingsSummary
from bench.store import (
    RECORD,
    SPEC,
    RunStore,
    UnreadableRecord,
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
    it has none yet) and, when asked for, its spec.json's ``SPEC_FIELDS``, the summary of
    every spec (:class:`bench.report.settings.SettingsSummary`) and, in a folder of at most
    ``SPEC_TEXTS_KEPT`` runs, each spec.json's text."""

    records: dict[str, Record | UnreadableRecord | None] = field(default_factory=dict)
    specs: dict[str, Record | UnreadableRecord | None] = field(default_factory=dict)
    spec_texts: dict[str, str] = field(default_factory=dict)
    settings: SettingsSummary = field(default_factory=SettingsSummary)

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


def scan_results(store: RunStore, specs: bool = False) -> Scan:
    """Each run folder's record under ``store.root`` (and with ``specs`` its spec.json)."""
    scan = Scan()
    root = str(store.root)
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except FileNotFoundError:
        return scan
    keep_texts = len(names) <= SPEC_TEXTS_KEPT
    for name in names:
        folder = os.path.join(root, name)
        scan.records[name] = _record(folder, name)
        if specs:
            spec, text = _spec(folder)
            if isinstance(spec, dict):
                scan.settings.add(spec)
                spec = {key: spec[key] for key in SPEC_FIELDS if key in spec}
                if keep_texts:
                    scan.spec_texts[name] = text
            scan.specs[name] = spec
    return scan


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
