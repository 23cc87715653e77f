"""Executors take planned jobs and run them; every one calls ``bench.jobs.execute``.

One interface (:class:`Executor`): ``run(jobs, results_root, data_root, timeout_s)`` runs every
job to its end and returns every record; ``submit(jobs, results_root, data_root,
only_failed)`` hands them to a scheduler and returns at once (SLURM only).

- ``inline`` (default): in this process, one after another, in plan order.
- ``slurm``: submitit on a SLURM cluster. Pretraining jobs go as one job array; the
  fine-tunings of each pretraining as an array that starts ``afterok`` that pretraining's
  array task; the whole sweep is submitted at once and the command returns (or waits).
- ``local``: submitit's LocalExecutor, jobs as parallel processes on this machine.
- ``debug``: submitit's DebugExecutor, in this process (to debug the submitted code path).

Submitting never duplicates a job that is queued, running or done (:mod:`bench.states`);
submitit itself is called through :mod:`bench.execution.submitit_adapter` only.

Executors are registered by name in :data:`EXECUTORS` like methods and datasets, so a new
scheduler is a class in a file of its own with ``@register_executor("name")``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.execution.cluster import Profile, layout_parameters, load_profile, pretrain_layout
from bench.execution.status import job_statuses
from bench.execution.submission import JobSubmission
from bench.execution.submitit_adapter import make_executor, set_array_parameters
from bench.jobs import Job, execute, job_spec
from bench.registry import Registry
from bench.states import JobState, count_states, is_done, record_status, summary
from bench.store import RunStore, skipped_record, write_submission

log = logging.getLogger(__name__)

Records = dict[str, dict[str, Any]]  # job id -> record


@dataclass
class SubmitReport:
    """What one submission did, by job id."""

    submitted: dict[str, str] = field(default_factory=dict)  # job id -> scheduler job id
    already: dict[str, str] = field(default_factory=dict)  # job id -> done / queued / running
    already_ids: dict[str, str | None] = field(default_factory=dict)  # their scheduler job ids
    held_back: dict[str, str] = field(default_factory=dict)  # job id -> why not submitted

    def summary(self) -> str:
        counts = count_states(self.already.values())
        parts = [f"{len(self.submitted)} submitted"]
        parts += [f"{n} {state} already" for state, n in counts.items()]
        if self.held_back:
            parts.append(f"{len(self.held_back)} held back")
        return ", ".join(parts)


class Executor:
    """Runs planned jobs from a cluster ``profile``; ``context`` (the sweep's spec, ...) is
    kept with each submission."""

    name: str = ""
    # the most processes per node and nodes a pretraining may use here (None: any)
    max_processes: int | None = 1
    max_nodes: int | None = 1

    def __init__(self, profile: Profile | None = None, context: dict[str, Any] | None = None):
        self.profile = profile or load_profile(None)
        self.context = context or {}

    def run(
        self, jobs: list[Job], results_root: Path, data_root=None, timeout_s: float | None = None
    ) -> Records:
        """Run every job not done yet to its end; return every job's record (a job whose
        dependency did not finish gets a ``skipped`` record, not written to disk)."""
        raise NotImplementedError

    def submit(
        self, jobs: list[Job], results_root: Path, data_root=None, only_failed: bool = False
    ) -> SubmitReport:
        raise ConfigError(
            f"the {self.name} executor runs jobs with run(); only slurm submits and returns"
        )

    def check_layouts(self, jobs: list[Job]) -> None:
        """Before anything runs: every pretraining's global batch splits evenly over its
        processes, and no pretraining asks for more processes than run here."""
        for job in jobs:
            per_node, nodes = pretrain_layout(job, self.profile)
            too_many = (self.max_processes is not None and per_node > self.max_processes) or (
                self.max_nodes is not None and nodes > self.max_nodes
            )
            if too_many:
                where = "one process" if self.max_processes == 1 else "one node"
                also = " (or local, one node)" if nodes == 1 else ""
                raise ConfigError(
                    f"the {self.name} executor runs {where}; pretrain.gpus={per_node} x "
                    f"pretrain.nodes={nodes} needs --executor slurm{also}"
                )


EXECUTORS: Registry[type[Executor]] = Registry("executor", base=Executor)
register_executor = EXECUTORS.register


@register_executor("inline")
class InlineExecutor(Executor):
    """Sequential, in-process. Finished jobs are skipped; jobs whose dependency did not
    finish are reported as skipped (never run from the wrong weights). ``timeout_s`` does
    not apply (the jobs run in this process). A storage fault (full, read-only or forbidden
    filesystem) stops the sweep: the remaining jobs are skipped, not each failed in turn."""

    def run(self, jobs, results_root, data_root=None, timeout_s=None) -> Records:
        self.check_layouts(jobs)
        store = RunStore(results_root)
        statuses = {job.job_id: record_status(store, job.job_id) for job in jobs}
        pretraining = sum(job.kind == "pretrain" for job in jobs)
        log.info("%s (%d pretraining, %d fine-tuning); results in %s", summary(statuses.values()),
                 pretraining, len(jobs) - pretraining, results_root)  # fmt: skip
        records: Records = {}
        fault = None  # the job whose storage fault stopped the sweep
        for number, job in enumerate(jobs, start=1):
            prefix = f"[{number}/{len(jobs)}]"
            status = statuses[job.job_id]
            if status.state is JobState.DONE:
                log.info("%s done already: %s (%s)", prefix, job.describe(), job.job_id)
                records[job.job_id] = status.record
                continue
            blocked = [d for d in job.depends_on if records.get(d, {}).get("status") != "ok"]
            if fault is not None or blocked:
                why = (
                    storage_stop(fault)
                    if fault
                    else f"dependency {', '.join(blocked)} did not finish"
                )
                log.warning("%s skipped: %s, because %s", prefix, job.describe(), why)
                records[job.job_id] = skipped_record(job, why)
                continue
            if status.state is not JobState.PLANNED:
                log.info("%s retrying a job that was %s", prefix, status.state)
            log.info("%s %s (%s)", prefix, job.describe(), job.job_id)
            start = time.perf_counter()
            records[job.job_id] = execute(job, results_root, data_root)
            fault = job.job_id if records[job.job_id].get("storage_fault") else None
            log.info("%s %s in %.1fs", prefix, records[job.job_id]["status"],
                     time.perf_counter() - start)  # fmt: skip
        return records


def storage_stop(job_id: str) -> str:
    """Why a job was not started after ``job_id`` hit a storage fault: every job writes to
    the same folders, so each would fail the same way after spending its compute."""
    return f"not started: the sweep stopped at the storage fault of {job_id}"


class SubmititExecutor(Executor):
    """submitit's executor of the same name (the class's registered name): pretraining jobs
    in parallel, then the fine-tunings whose pretraining finished (submitit's local and
    debug executors know no dependencies)."""

    def __init__(self, profile=None, context=None, poll_s: float = 2.0) -> None:
        super().__init__(profile, context)
        self.poll_s = poll_s

    def run(self, jobs, results_root, data_root=None, timeout_s=None) -> Records:
        self.check_layouts(jobs)
        results_root = Path(results_root).resolve()
        store = RunStore(results_root)
        executor = make_executor(self.name, results_root / ".submitit" / "%j", self.profile)
        for kind in ("pretrain", "finetune"):
            stage = [
                job
                for job in jobs
                if job.kind == kind
                and not is_done(store, job.job_id)
                and all(is_done(store, d) for d in job.depends_on)
            ]
            layouts: dict[tuple[int, int], list[Job]] = {}
            for job in stage:
                layouts.setdefault(pretrain_layout(job, self.profile), []).append(job)
            for layout, group in layouts.items():
                faulty = self._run_chunks(executor, group, layout, results_root, data_root, store)
                if faulty is not None:  # as InlineExecutor: stop, skip the rest
                    return collect_records(jobs, store, storage_stop(faulty))
        return collect_records(jobs, store)

    def _run_chunks(self, executor, jobs, layout, results_root, data_root, store) -> str | None:
        """Run ``jobs`` (all of one process layout) ``array_parallelism`` at a time; stop
        after a chunk in which a job hit a storage fault, and return that job's id."""
        parallel = self.profile.settings.get("array_parallelism", 4)
        executor.update_parameters(**layout_parameters(self.profile, *layout))
        data_root = absolute_data_root(data_root)
        for start in range(0, len(jobs), parallel):
            chunk = jobs[start : start + parallel]
            for job in chunk:
                store.prepare_run(job, job_spec(job))
            handles = executor.submit_array(
                [JobSubmission(job, results_root, data_root, layout[0]) for job in chunk]
            )
            for job, handle in zip(chunk, handles, strict=True):
                write_submission(store, job, self.name, handle.job_id, executor.folder,
                                 self.context)  # fmt: skip
            for job, handle in zip(chunk, handles, strict=True):
                try:
                    handle.result()
                    log.info("ok: %s (%s)", job.describe(), job.job_id)
                except Exception as error:  # noqa: BLE001  (the record says what failed)
                    log.warning("failed: %s: %s", job.job_id, str(error).strip()[-300:])
            faulty = [job.job_id for job in chunk if storage_fault_of(store, job.job_id)]
            if faulty:
                return faulty[0]
        return None


@register_executor("slurm")
class SlurmExecutor(SubmititExecutor):
    """submitit on SLURM: the whole sweep submitted at once as job arrays with
    dependencies; ``run`` submits and waits, ``submit`` returns at once."""

    max_processes = max_nodes = None  # any processes on any nodes

    def run(self, jobs, results_root, data_root=None, timeout_s=None) -> Records:
        results_root = Path(results_root).resolve()
        self.submit(jobs, results_root, data_root)
        self.wait(jobs, results_root, timeout_s, progress=_log_progress)
        return collect_records(jobs, RunStore(results_root))

    def submit(self, jobs, results_root, data_root=None, only_failed=False) -> SubmitReport:
        """Submit every job that is not queued, running or done (with ``only_failed``, only
        those that failed) and return at once."""
        self.check_layouts(jobs)
        results_root = Path(results_root).resolve()
        store = RunStore(results_root)
        report, wanted = self._sort_out(jobs, store, only_failed)
        folder = results_root / ".submitit" / "%j"
        executor = make_executor("slurm", folder, self.profile)
        data_root = absolute_data_root(data_root)
        submit = SlurmArrays(self, executor, store, data_root, report)
        layouts: dict[tuple[int, int], list[Job]] = {}  # one array per process layout
        for job in wanted:
            if job.kind == "pretrain":
                layouts.setdefault(pretrain_layout(job, self.profile), []).append(job)
        for layout, pretraining in layouts.items():
            submit.array("bench-pretrain", pretraining, None, layout)
        submit.finetunings([job for job in wanted if job.kind == "finetune"])
        log.info("%s; submitit files in %s", report.summary(), folder.parent)
        return report

    def _sort_out(self, jobs, store, only_failed) -> tuple[SubmitReport, list[Job]]:
        """Which jobs to submit; the others are already queued/running/done or held back."""
        statuses = job_statuses(store, [job.job_id for job in jobs])
        report, wanted = SubmitReport(), []
        for job in jobs:
            status = statuses[job.job_id]
            if status.state in (JobState.DONE, JobState.QUEUED, JobState.RUNNING):
                report.already[job.job_id] = str(status.state)
                report.already_ids[job.job_id] = status.scheduler_job_id
            elif only_failed and status.state is not JobState.FAILED:
                report.held_back[job.job_id] = f"{status.state}, not failed"
            else:
                wanted.append(job)
        return report, wanted

    def wait(
        self,
        jobs: list[Job],
        results_root: Path,
        timeout_s: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until no job is queued or running; return the status of each job.
        Raises TimeoutError after ``timeout_s``."""
        store = RunStore(Path(results_root).resolve())
        ids = [job.job_id for job in jobs]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            statuses = job_statuses(store, ids)
            counts = count_states(statuses.values())
            if counts != last and progress is not None:
                progress(summary(statuses.values()))
            last = counts
            if not counts.get(JobState.QUEUED) and not counts.get(JobState.RUNNING):
                return statuses
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued or running after {timeout_s:.0f}s: {counts}")
            time.sleep(self.poll_s)


@register_executor("local")
class LocalExecutor(SubmititExecutor):
    """submitit's LocalExecutor: jobs as parallel processes on this one node."""

    max_processes = None


@register_executor("debug")
class DebugExecutor(SubmititExecutor):
    """submitit's DebugExecutor: the submitted code path, in this process."""


@dataclass
class SlurmArrays:
    """Submits the job arrays of one submission and records them."""

    executor_: SlurmExecutor
    executor: Any  # submitit's, from bench.submitit_adapter.make_executor
    store: RunStore
    data_root: str
    report: SubmitReport

    def array(self, name: str, jobs: list[Job], after: str | None, layout=(1, 1)) -> None:
        if not jobs:
            return
        set_array_parameters(self.executor, self.executor_.profile, name, layout, after)
        for job in jobs:
            self.store.prepare_run(job, job_spec(job))
        processes = layout[0] * layout[1]
        handles = self.executor.submit_array(
            [JobSubmission(job, self.store.root, self.data_root, processes) for job in jobs]
        )
        context = {**self.executor_.context, **self._cluster_context()}
        for job, handle in zip(jobs, handles, strict=True):
            write_submission(self.store, job, "slurm", handle.job_id, self.executor.folder,
                             context)  # fmt: skip
            self.report.submitted[job.job_id] = handle.job_id

    def finetunings(self, jobs: list[Job]) -> None:
        """One array per pretraining, ``afterok`` it unless it is done; a fine-tuning whose
        pretraining is neither done nor submitted is held back."""
        report = self.report
        pending = {**report.already_ids, **report.submitted}
        groups: dict[str | None, list[Job]] = {}
        for job in jobs:
            parent = job.depends_on[0] if job.depends_on else None
            if parent is not None and not is_done(self.store, parent) and not pending.get(parent):
                report.held_back[job.job_id] = f"its pretraining {parent} is not submitted"
                continue
            groups.setdefault(parent, []).append(job)
        for parent, group in groups.items():
            after = pending.get(parent) if parent and not is_done(self.store, parent) else None
            self.array("bench-finetune", group, after)

    def _cluster_context(self) -> dict[str, Any]:
        profile = self.executor_.profile
        return {
            "data_root": self.data_root,
            "cluster_profile": profile.source,
            "cluster_settings": profile.settings,
        }


def collect_records(jobs: list[Job], store: RunStore, stopped: str | None = None) -> Records:
    """Every job's record after a run; a job without one is ``skipped`` (its dependency did
    not finish, it was cancelled or killed, or the run ``stopped`` before it, saying why),
    or ``failed`` when its attempt marker holds the storage fault that kept its record."""
    records = {}
    for job in jobs:
        record = store.read_record(job.job_id)
        fault = storage_fault_of(store, job.job_id) if record is None else None
        if fault is not None:
            record = {**skipped_record(job, fault), "status": "failed", "storage_fault": fault}
        elif record is None:
            blocked = [d for d in job.depends_on if not is_done(store, d)]
            reason = (
                f"dependency {', '.join(blocked)} did not finish"
                if blocked
                else stopped or "the job ended without a result record (cancelled or killed)"
            )
            record = skipped_record(job, reason)
        records[job.job_id] = record
    return records


def storage_fault_of(store: RunStore, job_id: str) -> str | None:
    """The storage fault that failed ``job_id`` in another process: from its record, or
    from its attempt marker when the record could not be written."""
    record = store.read_record(job_id)
    if record is not None:
        return record.get("storage_fault")
    attempt = store.read_attempt(job_id) or {}
    return attempt.get("error")


def absolute_data_root(data_root) -> str:
    from bench.datasets.base import default_data_root

    return str(Path(data_root if data_root is not None else default_data_root()).resolve())


def _log_progress(line: str) -> None:
    log.info("%s", line)


def get_executor(
    name: str, profile: Profile | None = None, context: dict[str, Any] | None = None
) -> Executor:
    """The executor registered as ``name`` set up from a cluster ``profile``
    (UnknownNameError, a ConfigError, listing the valid names)."""
    return EXECUTORS.get(name)(profile, context)
