"""The run store: ``results/<run id>/`` with spec.json, checkpoint, log.jsonl, result.json.

``result.json`` is written atomically (temporary file, then rename) as the last act of a run,
so its presence with ``"status": "ok"`` means the run is done. A failed run writes a record
with ``"status": "failed"``, the error and the traceback; the next sweep retries it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import json
import os
import platform
import re
import socket
import subprocess
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.version import __version__

RECORD = "result.json"
SPEC = "spec.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
# written when a job starts and removed when its record is written: a run folder with it and
# no record belongs to a job that runs, or whose process died (bench.states)
ATTEMPT = "attempt.json"
ATTEMPT_SIZE = 4096  # fixed, so the cause of a failure overwrites it in place on a full disk
BACKBONE = "backbone.pt"
SUBMISSION = "submission.json"
DECODER = "decoder.pt"  # smp DeepLabV3+ decoder weights, for methods that pretrain it
# per-image confusion matrices of each label variant a fine-tuning scored, written before
# the record (bench.conventions re-scores from them)
SCORES = "scores.npz"


def temporary_path(path: Path, suffix: str = "") -> Path:
    """Where ``path`` is written before its atomic rename: a hidden name carrying this
    process's id, so :func:`remove_stale_temporaries` knows an abandoned one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY}{suffix}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one. A failed
    write removes its temporary file (a full disk gets its space back) and raises an
    ``OSError`` that names ``path``."""
    path = Path(path)
    tmp = temporary_path(path)
    with writing_to(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def writing_to(path: Path, temporary: Path | None = None):
    """While writing ``path`` (through ``temporary``): on failure remove ``temporary`` and
    name ``path`` in an ``OSError`` that names no file (a write into an open file)."""
    try:
        yield
    except BaseException as error:
        if temporary is not None:
            _remove_quietly(temporary)
        if isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def _remove_quietly(path: Path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:  # a read-only folder keeps it; the next run's sweep removes it
        pass


TEMPORARY = ".tmp"
_TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)\.tmp(\..*)?$")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers that died (their process id
    is no live process here); returns what was removed. A live writer's files are kept."""
    removed = []
    for path in Path(folder).glob(".*"):
        match = _TEMPORARY_NAME.match(path.name)
        if match and path.is_file() and not process_alive(int(match[1])):
            _remove_quietly(path)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


# ---------------------------------------------------------------------------- storage faults
# errno -> what to do about it; a write that fails with one of these fails for every job of
# the results folder alike (module docstring of bench.jobs)
STORAGE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "free space or raise the quota",
    errno.EROFS: "make the filesystem writable again",
    errno.EACCES: "make the folder writable for this user",
    errno.EPERM: "make the folder writable for this user",
}


def storage_fault(error: BaseException | None) -> OSError | None:
    """The ``OSError`` of a full, read-only or forbidden filesystem behind ``error`` (its
    causes and contexts searched too), or None when ``error`` is something else."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def describe_storage_fault(fault: OSError) -> str:
    """One line: the cause, the path and what to do, e.g. ``no space left on device
    (ENOSPC) writing results/x/checkpoint.pt: free space on that filesystem``."""
    name = errno.errorcode.get(fault.errno, str(fault.errno))
    cause = (fault.strerror or os.strerror(fault.errno)).lower()
    where = f" writing {fault.filename}" if fault.filename else ""
    return f"{cause} ({name}){where}: {STORAGE_ERRNOS[fault.errno]}"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def check_output_file(path: Path) -> None:
    """Before any work: a file can be written at ``path`` (its folder exists and is writable,
    and ``path`` is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output {path} is a folder; give a file name")
    _check_writable_folder(path.parent, f"cannot write {path}")


def check_output_dir(path: Path) -> None:
    """Before any work: ``path`` is a writable folder, or can be made in an existing one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is a file, not a folder")
    _check_writable_folder(path if path.exists() else path.parent, f"cannot write into {path}")


def _check_writable_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"{what}: {folder} {state}")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{what}: {folder} is not writable")


def _fixed_size(marker: dict[str, Any]) -> bytes:
    """``marker`` as JSON padded with spaces to :data:`ATTEMPT_SIZE` bytes (a long error is
    cut to fit)."""
    marker = dict(marker)
    while True:
        data = json.dumps(marker, sort_keys=True).encode()
        if len(data) < ATTEMPT_SIZE or not marker.get("error"):
            return data[: ATTEMPT_SIZE - 1].ljust(ATTEMPT_SIZE - 1) + b"\n"
        marker["error"] = marker["error"][: len(marker["error"]) // 2] + "..."


STORE_VERSION = 1  # layout of results folders; bump when old records cannot be read
MARKER = "bench-store.json"


class RunStore:
    """One folder per run under ``root``; ``bench-store.json`` names the layout version."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def open_for_writing(self) -> None:
        """Check the folder is writable and of this layout version (ConfigError if not), and
        mark it as a results folder."""
        marker = self.root / MARKER
        if marker.exists():
            try:
                version = json.loads(marker.read_text()).get("store_version")
            except (OSError, json.JSONDecodeError, AttributeError):
                version = None
            if version != STORE_VERSION:
                raise ConfigError(
                    f"results folder {self.root} has layout version {version!r}, this harness "
                    f"reads version {STORE_VERSION}; use another --results folder"
                )
            if not os.access(self.root, os.W_OK):
                raise ConfigError(f"results folder {self.root} is not writable")
            return
        try:
            atomic_write_json(marker, {"store_version": STORE_VERSION})
        except OSError as error:
            raise ConfigError(
                f"results folder {self.root} is not writable ({error.strerror})"
            ) from None

    def check_exists(self) -> None:
        """For commands that read a results folder: it must be one (ConfigError if not)."""
        if not self.root.is_dir():
            state = "is not a folder" if self.root.exists() else "does not exist"
            raise ConfigError(f"results folder {self.root} {state}")

    def run_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def prepare_run(self, job: Any, spec: dict[str, Any]) -> Path:
        """The job's folder with its spec.json, and without the temporary files of an
        earlier attempt that died."""
        run_dir = self.run_dir(job.job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        atomic_write_json(run_dir / SPEC, spec)
        return run_dir

    # -- attempts: which process runs a job, and why it failed when no record could say so
    def begin_attempt(self, job_id: str) -> None:
        """Mark ``job_id`` as run by this process (before the job's big writes)."""
        marker = {"job_id": job_id, "pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": now_iso()}  # fmt: skip
        atomic_write_bytes(self.run_dir(job_id) / ATTEMPT, _fixed_size(marker))

    def fail_attempt(self, job_id: str, error: str) -> bool:
        """Write ``error`` into the job's attempt marker in place (no new space is needed, so
        this works on a full disk); False when even that failed (a read-only folder)."""
        marker = self.read_attempt(job_id) or {"job_id": job_id}
        data = _fixed_size({**marker, "error": error, "finished_at": now_iso()})
        try:
            with open(self.run_dir(job_id) / ATTEMPT, "r+b") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            return False
        return True

    def end_attempt(self, job_id: str) -> None:
        _remove_quietly(self.run_dir(job_id) / ATTEMPT)

    def read_attempt(self, job_id: str) -> dict[str, Any] | None:
        return json_object_or_none(os.path.join(self.root, job_id, ATTEMPT))

    def read(self, job_id: str) -> dict[str, Any] | UnreadableRecord | None:
        """The record of ``job_id``; None when there is none; :class:`UnreadableRecord` when
        the file is not a valid record (say why; never silently dropped)."""
        return read_record_file(self.run_dir(job_id) / RECORD)

    def read_record(self, job_id: str) -> dict[str, Any] | None:
        """The valid record of ``job_id``, else None: a missing or unreadable record means
        the job is not done, and a rerun redoes it."""
        record = self.read(job_id)
        return record if isinstance(record, dict) else None

    def write_record(self, job_id: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir(job_id) / RECORD, record)

    def run_ids(self) -> list[str]:
        """Every run directory's job id (those with a spec.json or a result.json), sorted."""
        if not self.root.is_dir():
            return []
        runs = {path.parent.name for name in (SPEC, RECORD) for path in self.root.glob(f"*/{name}")}
        return sorted(runs)

    def records(self) -> list[dict[str, Any]]:
        """Every valid record under the root (:meth:`scan` also says which are unreadable)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[dict[str, Any]], list[UnreadableRecord]]:
        """Every record under the root in a stable order: the valid ones, and the unreadable
        ones with why."""
        records, unreadable = [], []
        paths = sorted(self.root.glob(f"*/{RECORD}")) if self.root.is_dir() else []
        for path in paths:
            record = read_record_file(path)
            (records if isinstance(record, dict) else unreadable).append(record)
        return records, unreadable


# ---------------------------------------------------------------------------- validity
@dataclass(frozen=True)
class UnreadableRecord:
    """A result.json (or spec.json) that is not a valid record (spec): where, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


_NUMBER = (int, float)
# field -> JSON types every record has; then what a finished fine-tuning record adds
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "kind": (str,),
    "job_id": (str,),
    "method": (str,),
    "dataset": (str,),
    "seed": (int,),
}
FINETUNE_FIELDS: dict[str, tuple[type, ...]] = {
    "fraction": _NUMBER,
    "miou": _NUMBER,
    "kappa": _NUMBER,
    "oa": _NUMBER,
    "mean_f1": _NUMBER,
    "per_class_iou": (list,),
    "class_names": (list,),
}


def read_record_file(path: Path) -> dict[str, Any] | UnreadableRecord | None:
    """The record at ``path``, None if there is no file, or why it is not a valid record."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        return UnreadableRecord(Path(path), f"cannot be read ({error})")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return UnreadableRecord(Path(path), f"is not valid JSON ({error})")
    problem = record_problem(record, Path(path).parent.name)
    return UnreadableRecord(Path(path), problem) if problem else record


def record_problem(record: Any, job_id: str | None = None) -> str | None:
    """Why ``record`` is not a valid result record (None when it is)."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a record (a JSON object)"
    finished = record.get("kind") == "finetune" and record.get("status") == "ok"
    for wanted in (RECORD_FIELDS, FINETUNE_FIELDS) if finished else (RECORD_FIELDS,):
        for name, kinds in wanted.items():
            if name not in record:
                return f"has no field {name!r}"
            value = record[name]
            if value is True or value is False or not isinstance(value, kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                return f"field {name!r} is {value!r}, expected {expected}"
    if record["status"] not in ("ok", "failed") or record["kind"] not in ("pretrain", "finetune"):
        return f"has status {record['status']!r} and kind {record['kind']!r}"
    if job_id is not None and record["job_id"] != job_id:
        return f"belongs to job {record['job_id']}, not to the folder it is in"
    if record["kind"] == "finetune" and "fraction" in record:
        fraction = record["fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, _NUMBER) or not 0 < fraction <= 1:
            return f"field 'fraction' is {fraction!r}, expected a number in (0, 1]"
    return None


def append_log(run_dir: Path, entry: dict[str, Any]) -> None:
    """One JSON line of metrics (DINO habit); the file belongs to one run only."""
    with open(Path(run_dir) / LOG, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run's log.jsonl that are JSON objects, in order; none when there is no
    file. A line being written by a running job (cut short) is left out."""
    try:
        text = (Path(run_dir) / LOG).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def write_scores(run_dir: Path, arrays: dict[str, Any]) -> None:
    """``scores.npz`` in ``run_dir``: named arrays, compressed, written atomically (before
    the record, whose presence means the run is done)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(Path(run_dir) / SCORES, buffer.getvalue())


def read_scores(run_dir: Path, names: Iterable[str] | None = None) -> dict[str, Any] | None:
    """The arrays ``names`` (default: all) of ``run_dir``'s ``scores.npz``, those it has;
    None when there is none or it cannot be read (the caller says what cannot be scored
    without it)."""
    import numpy as np

    try:
        with np.load(Path(run_dir) / SCORES, allow_pickle=False) as archive:
            wanted = archive.files if names is None else [n for n in names if n in archive.files]
            return {name: archive[name] for name in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def read_spec(run_dir: Path) -> dict[str, Any] | UnreadableRecord | None:
    """A run's spec.json (every setting of its job); None when there is none;
    :class:`UnreadableRecord` saying why when it is not a JSON object."""
    path = Path(run_dir) / SPEC
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        return UnreadableRecord(path, f"cannot be read ({error})")
    except json.JSONDecodeError as error:
        return UnreadableRecord(path, f"is not valid JSON ({error})")
    if not isinstance(spec, dict):
        return UnreadableRecord(path, f"holds a JSON {type(spec).__name__}, not an object")
    return spec


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Versions, host and git commit, for every record."""
    import segmentation_models_pytorch as smp
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "bench_version": __version__,
        "torch_version": torch.__version__,
        "smp_version": smp.__version__,
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "git_commit": commit or None,
    }


def job_fields(job: Any) -> dict[str, Any]:
    """What every record says about its job."""
    return {
        "kind": job.kind,
        "job_id": job.job_id,
        "method": job.method,
        "dataset": job.dataset,
        "seed": job.seed,
        "fraction": getattr(job, "fraction", None),
    }


def failed_record(job: Any, error: BaseException, trace: str) -> dict[str, Any]:
    """The record of a job that raised ``error``; a storage fault behind it is named in
    ``storage_fault`` (one line: cause, path, what to do)."""
    fault = storage_fault(error)
    return {
        "status": "failed",
        **job_fields(job),
        "error": f"{type(error).__name__}: {error}",
        "storage_fault": describe_storage_fault(fault) if fault is not None else None,
        "traceback": trace,
        "finished_at": now_iso(),
        **provenance(),
    }


def skipped_record(job: Any, reason: str) -> dict[str, Any]:
    """Not written to disk: the job did not run because ``reason``."""
    return {"status": "skipped", **job_fields(job), "error": reason}


# ---------------------------------------------------------------------------- submissions
def write_submission(
    store: RunStore, job: Any, executor: str, scheduler_id: str, folder: Path, context: dict
) -> None:
    """``submission.json``: the scheduler job id, the sweep the job came from and the
    cluster settings, so ``bench status`` can ask SLURM about the job (:mod:`bench.states`)
    and ``--rerun-failed`` can submit it again."""
    atomic_write_json(
        store.run_dir(job.job_id) / SUBMISSION,
        {
            "executor": executor,
            "scheduler_job_id": scheduler_id,
            "submitit_folder": str(folder),
            "submitted_at": now_iso(),
            **context,
        },
    )


def read_submission(store: RunStore, job_id: str) -> dict[str, Any] | None:
    return json_object_or_none(os.path.join(store.root, job_id, SUBMISSION))


def json_object_or_none(path: str) -> dict[str, Any] | None:
    """The JSON object in the file ``path``; None when it is missing, unreadable or not a
    JSON object (a marker or submission file is optional; without pathlib: ``status`` and
    ``report`` read two of them per run folder, 20,000 at 10,000 runs)."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
