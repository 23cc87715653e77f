"""A job's state, worked out in one place from its result record, its submission and what
the scheduler says; every command (``plan``, ``status``, ``run``, the executors) shows these
words.

- ``planned``: nothing ran or was submitted yet;
- ``queued`` / ``running``: SLURM lists the job as waiting or running (a job being retried
  wins over its older failed or unreadable record); or, without a record, its attempt
  marker names a live process (:meth:`bench.store.RunStore.begin_attempt`);
- ``done``: its record says ``ok``;
- ``failed``: its record says ``failed`` (the detail is the error), or SLURM ended it
  without a record (cancelled, killed, out of time), or its attempt marker says why it
  failed when no record could be written (a full disk), or names a process of this machine
  that is gone (killed, or its folder stopped taking writes);
- ``corrupt``: its result.json is not a valid record (the detail says why); a rerun of its
  sweep redoes the job;
- ``skipped``: in a sweep's result only, a job whose dependency did not finish.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bench.store import RunStore, UnreadableRecord, process_alive


class JobState(str, Enum):
    PLANNED = "planned"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CORRUPT = "corrupt"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class JobStatus:
    """A job's state, why (error's last line, SLURM state, ...), its SLURM job id if it was
    submitted, and its valid record if it has one."""

    state: JobState
    detail: str = ""
    scheduler_job_id: str | None = None
    record: dict[str, Any] | None = None


def derive_status(
    record: dict[str, Any] | UnreadableRecord | None,
    submission: dict[str, Any] | None = None,
    scheduler_state: str = "",
    attempt: dict[str, Any] | None = None,
) -> JobStatus:
    """The one rule from what is known of a job to its state (module docstring)."""
    scheduler_id = submission.get("scheduler_job_id") if submission else None
    kind = state_kind(scheduler_state) if scheduler_state else ""
    valid = record if isinstance(record, dict) else None
    if valid is not None and valid["status"] == "ok":
        return JobStatus(JobState.DONE, "", scheduler_id, valid)
    if kind in ("queued", "running"):
        return JobStatus(JobState(kind), scheduler_state, scheduler_id, valid)
    if isinstance(record, UnreadableRecord):
        why = f"{record}; a rerun of its sweep redoes the job"
        return JobStatus(JobState.CORRUPT, why, scheduler_id)
    if valid is not None:
        detail = (
            valid.get("storage_fault")
            or last_line(valid.get("traceback"))
            or str(valid.get("error", ""))
        )
        return JobStatus(JobState.FAILED, detail, scheduler_id, valid)
    if scheduler_state:
        why = f"SLURM state {scheduler_state}, no result record"
        return JobStatus(JobState.FAILED, why, scheduler_id)
    if attempt is not None:
        state, why = attempt_state(attempt)
        return JobStatus(state, why, scheduler_id)
    if submission is not None and submission.get("executor") == "slurm":
        why = "submitted; SLURM does not list it yet"
        return JobStatus(JobState.QUEUED, why, scheduler_id)
    return JobStatus(JobState.PLANNED, "", scheduler_id)


def attempt_state(attempt: dict[str, Any]) -> tuple[JobState, str]:
    """What a job's attempt marker says when it has no record: failed with the cause it
    holds, running while its process lives, failed when that process is gone."""
    pid, host = attempt.get("pid"), attempt.get("host")
    if attempt.get("error"):
        return JobState.FAILED, f"{attempt['error']} (no result record could be written)"
    if host != socket.gethostname() or not isinstance(pid, int):
        return JobState.RUNNING, f"started by process {pid} on {host} (not checked from here)"
    if process_alive(pid):
        return JobState.RUNNING, f"process {pid} on {host}"
    return JobState.FAILED, (
        f"its process {pid} on {host} ended without a result record (killed, or its folder "
        "stopped taking writes); a rerun of its sweep redoes the job"
    )


def record_status(store: RunStore, job_id: str) -> JobStatus:
    """The status from the record and attempt marker (no scheduler): planned, running, done,
    failed or corrupt."""
    record = store.read(job_id)  # the attempt marker counts only for a job without one
    return derive_status(record, attempt=store.read_attempt(job_id) if record is None else None)


def is_done(store: RunStore, job_id: str) -> bool:
    return record_status(store, job_id).state is JobState.DONE


def count_states(states: Iterable[JobState | JobStatus]) -> dict[JobState, int]:
    """How many jobs are in each state, in the order of :class:`JobState`."""
    found = [s.state if isinstance(s, JobStatus) else JobState(s) for s in states]
    return {state: found.count(state) for state in JobState if state in found}


def summary(states: Iterable[JobState | JobStatus]) -> str:
    """``5 jobs: 3 done, 2 planned`` (``10,000 jobs: 9,899 done, 101 failed``)."""
    counts = count_states(states)
    total = sum(counts.values())
    return f"{total:,} jobs: " + ", ".join(f"{n:,} {state}" for state, n in counts.items())


def last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


# ---------------------------------------------------------------------------- SLURM's words
ACTIVE_STATES = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_HOLD": "queued",
    "REQUEUE_FED": "queued",
    "CONFIGURING": "queued",
    "SUSPENDED": "queued",
    "RESIZING": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "STAGE_OUT": "running",
    "SIGNALING": "running",
}


def state_kind(slurm_state: str) -> str:
    """queued, running or finished (for any other state)."""
    return ACTIVE_STATES.get(slurm_state.split()[0] if slurm_state else "", "finished")
