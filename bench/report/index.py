"""The index of a results folder: what the last ``table`` or ``report`` read of each run
folder's files, so the next one reads one file instead of 20,000.

A study of 10,000 runs is 10,000 result.json and as many spec.json files; opening and
parsing each is most of the time of ``bench report`` (1.6 s of 4.5 s at 10,000 runs). The
index (``.bench-index.marshal`` in the results folder) keeps, per run folder and file, the
file's signature (modification time in ns, size, inode) and what was read from it: the
record, the parts of the spec the report uses (:mod:`bench.report.records`) and a
pretraining's log.jsonl lines. A scan stats every file (cheap) and reads again only those
whose signature changed; a file written in the last ``RACY_SECONDS`` is never kept, since
a second write within the same clock tick could leave its signature unchanged (git's
"racily clean" entries). Records taken from the index are validated again with
:func:`bench.store.record_problem`, so a change of the validity rules needs no new index.

The index is a cache: it is rebuilt when missing, unreadable or of another
``INDEX_VERSION``, and a scan that cannot write it (a read-only or full disk) goes on without
it, saying so at debug level only. On a network file system a scan may see a file's old
signature for the attribute-cache time (seconds), and with it the old content.

It is written with :mod:`marshal`, the format of Python's own ``.pyc`` files: plain data
(dicts, lists, strings, numbers, NaN kept bit for bit), nothing run on reading, and at
10,000 runs (20 MB as JSON) 2.3x faster to read and 10x faster to write than JSON (0.12 vs
0.28 s, 0.03 vs 0.39 s). Its documentation warns that it is not made for untrusted data:
the index is read only from the results folder the user's runs write, and whoever can
write there can change the results themselves. A Python whose marshal cannot read it
(another version) rebuilds it, as for any unreadable index.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import marshal
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.store import atomic_write_bytes, remove_stale_temporaries

log = logging.getLogger(__name__)

INDEX = ".bench-index.marshal"
INDEX_VERSION = 2  # bump when what an entry holds changes
FORMER_INDEXES = (".bench-index.json",)  # the JSON index of version 1, removed on saving
RACY_SECONDS = 2.0

Signature = list[int]  # [st_mtime_ns, st_size, st_ino]
MISSING = object()  # no usable entry


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the block (as it was after). Loaded records
    and index entries are trees, freed by reference counting; while millions of objects
    are made, the collector runs again and again over all that are alive: half the time of
    loading the index of 10,000 runs (measured when it was JSON)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def signature(path: str) -> Signature | None:
    """The file's [mtime in ns, size, inode]; None when there is no such file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size, stat.st_ino]


def trusted(sig: Signature, now_ns: int | None = None) -> bool:
    """Whether a file of signature ``sig`` was last written long enough ago
    (``RACY_SECONDS``) that a rewrite would change its signature."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return now_ns - sig[0] >= RACY_SECONDS * 1e9


class ResultsIndex:
    """The entries read from the index file (``old``) and those this scan confirmed or read
    afresh (``new``): run folder name -> file name -> [signature, value]; plus ``extra``,
    named top-level values (the settings' reference specs)."""

    def __init__(self, root: str, old: dict[str, Any] | None = None, extra=None) -> None:
        self.root = root
        self.old: dict[str, dict[str, list]] = old or {}
        self.new: dict[str, dict[str, list]] = {}
        self.extra: dict[str, Any] = extra or {}
        self.old_extra = dict(self.extra)
        self.changed = False  # an entry was read afresh
        self.now_ns = time.time_ns()

    @classmethod
    def load(cls, root: str) -> ResultsIndex:
        """The folder's index; an empty one when it has none usable."""
        try:
            with open(os.path.join(root, INDEX), "rb") as handle, paused_gc():
                data = marshal.loads(handle.read())
        except (OSError, ValueError, EOFError, TypeError):  # marshal's errors for bad data
            return cls(root)
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            return cls(root)
        runs, extra = data.get("runs"), data.get("extra")
        if not isinstance(runs, dict) or not isinstance(extra, dict):
            return cls(root)
        return cls(root, runs, extra)

    def read(self, run: str, name: str, read: Callable[[], Any], keep: Callable[[Any], bool]):
        """The value of file ``name`` of run folder ``run``: from the index when the file's
        signature is the one kept, else ``read()`` (kept when ``keep(value)``)."""
        path = f"{self.root}{os.sep}{run}{os.sep}{name}"  # os.path.join, 4x faster
        sig = signature(path)  # before reading: a file replaced meanwhile is read next time
        cached = self.lookup(run, name, sig)
        if cached is not MISSING:
            return cached
        value = read()
        if sig is not None and keep(value):
            self.remember(run, name, sig, value)
        return value

    def lookup(self, run: str, name: str, sig: Signature | None) -> Any:
        """The value kept for this signature (and kept again), or ``MISSING``."""
        entry = self.old.get(run, {}).get(name)
        if sig is None or not isinstance(entry, list) or len(entry) != 2 or entry[0] != sig:
            return MISSING
        self.new.setdefault(run, {})[name] = entry
        return entry[1]

    def remember(self, run: str, name: str, sig: Signature, value: Any) -> None:
        """Keep ``value`` under ``sig``, unless the file is too recent to trust."""
        if not trusted(sig, self.now_ns):
            return
        self.new.setdefault(run, {})[name] = [sig, value]
        self.changed = True

    def save(self, runs: Iterable[str], files: Iterable[str]) -> None:
        """Write the index when it changed: the entries of this scan, and the old entries
        of ``runs`` for files other than ``files`` (those this scan did not look at)."""
        files, runs = set(files), list(runs)
        if not runs and not self.old:
            return  # no run folders: nothing to keep
        if not self.changed and self.extra == self.old_extra and self._confirmed(runs, files):
            return
        entries = {}
        for run in runs:
            kept = {k: v for k, v in self.old.get(run, {}).items() if k not in files}
            kept.update(self.new.get(run, {}))
            if kept:
                entries[run] = kept
        data = {"version": INDEX_VERSION, "runs": entries, "extra": self.extra}
        try:
            remove_stale_temporaries(Path(self.root))  # an index a killed reading left half
            atomic_write_bytes(os.path.join(self.root, INDEX), marshal.dumps(data))
            for former in FORMER_INDEXES:
                Path(self.root, former).unlink(missing_ok=True)
        except OSError as error:
            log.debug("the results index was not written: %s", error)

    def _confirmed(self, runs: list[str], files: set[str]) -> bool:
        """Whether the index to write is the one read: this scan read nothing afresh, every
        run folder of the old index is among ``runs`` and every old entry of ``files`` was
        found unchanged (``runs`` the scan's run folders, each once)."""
        looked_at = kept_runs = 0
        for run in runs:
            old = self.old.get(run)
            if old is not None:
                kept_runs += 1
                looked_at += sum(name in files for name in old)
        return kept_runs == len(self.old) and looked_at == sum(map(len, self.new.values()))
