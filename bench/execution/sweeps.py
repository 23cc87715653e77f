"""Running a planned sweep: :func:`run_sweep` (every job to its end, with an executor),
:func:`submit_sweep` (to SLURM, returning at once), :func:`rerun_failed` and
:func:`sweep_status`. What a sweep *is* -- its jobs and the checks before any work -- is
planned by :mod:`bench.sweep`, which knows nothing of executors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.execution.cluster import Profile
from bench.execution.executors import SubmitReport, get_executor
from bench.execution.status import job_statuses
from bench.jobs import Job
from bench.states import JobState, JobStatus
from bench.store import RunStore, read_submission
from bench.sweep import SweepSpec, check_data, plan, spec_from_dict, spec_to_dict


@dataclass
class SweepResult:
    jobs: list[Job]
    records: dict[str, dict[str, Any]]  # job id -> record ("skipped" ones have no file)

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r.get("status") == status]

    @property
    def ok(self) -> bool:
        return all(r.get("status") == "ok" for r in self.records.values())

    def finetune_records(self) -> list[dict[str, Any]]:
        return [
            self.records[j.job_id]
            for j in self.jobs
            if j.kind == "finetune" and j.job_id in self.records
        ]


def run_sweep(
    spec: SweepSpec,
    results_dir: Path | str = "results",
    data_root: Path | str | None = None,
    executor: str = "inline",
    profile: Profile | None = None,
    timeout_s: float | None = None,
) -> SweepResult:
    """Plan ``spec`` and run every job not already done, with ``executor`` (a name of
    :data:`bench.execution.executors.EXECUTORS`); wait for all of them and return all
    records."""
    jobs, executor_ = _ready(spec, results_dir, data_root, executor, profile)
    records = executor_.run(jobs, Path(results_dir), data_root, timeout_s=timeout_s)
    return SweepResult(jobs=jobs, records=records)


def _ready(spec: SweepSpec, results_dir, data_root, executor: str, profile):
    """Everything checked before the first job: the plan, the data, the executor's process
    layouts, the results folder. Returns the jobs and the executor."""
    jobs = plan(spec)
    check_data(jobs, data_root)
    executor_ = get_executor(executor, profile, {"sweep": spec_to_dict(spec)})
    executor_.check_layouts(jobs)
    RunStore(results_dir).open_for_writing()
    return jobs, executor_


def submit_sweep(
    spec: SweepSpec,
    results_dir: Path | str = "results",
    data_root: Path | str | None = None,
    profile: Profile | None = None,
) -> tuple[list[Job], SubmitReport]:
    """Plan ``spec`` and submit to SLURM every job that is not queued, running or done;
    return at once (``bench status`` follows them)."""
    jobs, executor = _ready(spec, results_dir, data_root, "slurm", profile)
    return jobs, executor.submit(jobs, Path(results_dir), data_root)


def rerun_failed(
    results_dir: Path | str, profile_overrides: Profile | None = None
) -> tuple[SubmitReport, list[str]]:
    """Submit again, to SLURM, the failed jobs of the SLURM submissions in ``results_dir``
    (their sweep is re-planned from submission.json; their pretraining too if it failed).
    Returns the report and the failed job ids that could not be resubmitted (with why)."""
    store = RunStore(results_dir)
    statuses = job_statuses(store, store.run_ids())
    report, unknown = SubmitReport(), []
    groups: dict[str, tuple[SweepSpec, dict[str, Any], list[str]]] = {}
    for job_id, status in statuses.items():
        if status.state is not JobState.FAILED:
            continue
        submission = read_submission(store, job_id)
        if not submission or "sweep" not in submission:
            unknown.append(f"{job_id}: not from a SLURM submission; rerun its `bench run`")
            continue
        key = json.dumps([submission["sweep"], submission.get("cluster_settings")], sort_keys=True)
        group = groups.setdefault(key, (spec_from_dict(submission["sweep"]), submission, []))
        group[2].append(job_id)
    for spec, submission, failed in groups.values():
        jobs = plan(spec)
        missing = set(failed) - {job.job_id for job in jobs}
        unknown += [
            f"{job_id}: this code no longer plans it (settings changed)" for job_id in missing
        ]
        profile = profile_overrides or Profile(
            submission.get("cluster_profile", "(stored)"), submission.get("cluster_settings", {})
        )
        executor = get_executor("slurm", profile, {"sweep": submission["sweep"]})
        data_root = submission.get("data_root")
        part = executor.submit(jobs, Path(results_dir), data_root, only_failed=True)
        report.submitted.update(part.submitted)
    return report, unknown


def sweep_status(jobs: list[Job], results_dir: Path | str) -> dict[str, JobStatus]:
    """The state of each planned job (:mod:`bench.states`)."""
    return job_statuses(RunStore(results_dir), [job.job_id for job in jobs])
