"""The run store: ``results/<run id>/`` with spec.json, checkpoint, log.jsonl, result.json.

``result.json`` is written atomically (temporary file, then rename) as the last act of a run,
so its presence with ``"status": "ok"`` means the run is done. A failed run writes a record
with ``"status": "failed"``, the error and the traceback; the next sweep retries it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

RECORD = "result.json"
SPEC = "spec.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
DECODER = "decoder.pt"  # smp DeepLabV3+ decoder weights, for methods that pretrain it


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


STORE_VERSION = 1  # layout of results folders; bump when old records cannot be read
MARKER = "bench-store.json"


class RunStore:
    """One folder per run under ``root``; ``bench-store.json`` names the layout version."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def open_for_writing(self) -> None:
        """Check the folder is writable and of this layout version (ConfigError if not), and
        mark it as a results folder."""
        from bench.config import ConfigError

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

    def run_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def prepare_run(self, job: Any, spec: dict[str, Any]) -> Path:
        run_dir = self.run_dir(job.job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / SPEC, spec)
        return run_dir

    def read_record(self, job_id: str) -> dict[str, Any] | None:
        path = self.run_dir(job_id) / RECORD
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # an unreadable record counts as not done

    def is_done(self, job_id: str) -> bool:
        record = self.read_record(job_id)
        return record is not None and record.get("status") == "ok"

    def write_record(self, job_id: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir(job_id) / RECORD, record)

    def run_ids(self) -> list[str]:
        """Every run directory's job id (those with a spec.json), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(path.parent.name for path in self.root.glob(f"*/{SPEC}"))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record under the root, in a stable order."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                yield json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue


def append_log(run_dir: Path, entry: dict[str, Any]) -> None:
    """One JSON line of metrics (DINO habit); the file belongs to one run only."""
    with open(Path(run_dir) / LOG, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Versions, host and git commit, for every record."""
    import segmentation_models_pytorch as smp
    import torch

    from bench import __version__

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
    return {
        "status": "failed",
        **job_fields(job),
        "error": f"{type(error).__name__}: {error}",
        "traceback": trace,
        "finished_at": now_iso(),
        **provenance(),
    }


def skipped_record(job: Any, reason: str) -> dict[str, Any]:
    """Not written to disk: the job did not run because ``reason``."""
    return {"status": "skipped", **job_fields(job), "error": reason}
