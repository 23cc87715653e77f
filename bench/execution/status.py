"""Job states with what the scheduler says: :func:`job_statuses` reads each job's record,
attempt marker and ``submission.json`` (:mod:`bench.store`) and asks SLURM's accounting
about the submitted ones; the rule from those facts to a state is :mod:`bench.states`."""

from __future__ import annotations

from collections.abc import Iterable

from bench.execution.submitit_adapter import scheduler_states
from bench.states import JobStatus, derive_status, record_status
from bench.store import RunStore, read_submission


def job_statuses(
    store: RunStore, job_ids: Iterable[str], ask_scheduler: bool = True
) -> dict[str, JobStatus]:
    """The status of each job id from its record and (with ``ask_scheduler``) its
    submission.json and SLURM's accounting."""
    job_ids = list(job_ids)
    if not ask_scheduler:
        return {job_id: record_status(store, job_id) for job_id in job_ids}
    submissions = {job_id: read_submission(store, job_id) for job_id in job_ids}
    slurm_ids = [
        s["scheduler_job_id"] for s in submissions.values() if s and s.get("executor") == "slurm"
    ]
    slurm = scheduler_states(slurm_ids)
    statuses = {}
    for job_id, submission in submissions.items():
        scheduler_id = submission.get("scheduler_job_id") if submission else None
        scheduler_state = slurm.get(scheduler_id, "") if scheduler_id else ""
        record = store.read(job_id)  # the attempt marker counts only for a job without one
        attempt = store.read_attempt(job_id) if record is None else None
        statuses[job_id] = derive_status(record, submission, scheduler_state, attempt)
    return statuses
