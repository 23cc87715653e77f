"""Executors take planned jobs and run them; every one calls ``bench.jobs.execute``.

- ``inline`` (default): in this process, one after another, in plan order.
- ``slurm``: submitit on a SLURM cluster. Pretraining jobs go as one job array; the
  fine-tunings of each pretraining as an array that starts ``afterok`` that pretraining's
  array task; the whole sweep is submitted at once and the command returns (or waits).
- ``local``: submitit's LocalExecutor, jobs as parallel processes on this machine.
- ``debug``: submitit's DebugExecutor, in this process (to debug the submitted code path).

Submitting never duplicates a job that is queued, running or done (``bench.submission``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster import (
    Profile,
    layout_parameters,
    load_profile,
    make_executor,
    pretrain_layout,
    set_array_parameters,
)
from bench.config import ConfigError
from bench.jobs import Job, execute, job_spec
from bench.store import RunStore, skipped_record
from bench.submission import JobSubmission, job_status, write_submission

log = logging.getLogger(__name__)


class InlineExecutor:
    """Sequential, in-process. Finished jobs are skipped; jobs whose dependency did not
    finish are reported as skipped (never run from the wrong weights)."""

    name = "inline"

    def run(self, jobs: list[Job], results_root: Path, data_root=None) -> dict[str, dict[str, Any]]:
        many = [job.job_id for job in jobs if pretrain_layout(job, load_profile(None)) != (1, 1)]
        if many:
            raise ConfigError(
                f"{len(many)} pretraining job(s) ask for several processes (pretrain.gpus / "
                "pretrain.nodes); the inline executor runs one process: use --executor slurm "
                "(or local, one node)"
            )
        store = RunStore(results_root)
        records: dict[str, dict[str, Any]] = {}
        total = len(jobs)
        done = sum(store.is_done(job.job_id) for job in jobs)
        pretraining = sum(job.kind == "pretrain" for job in jobs)
        log.info(
            "%d jobs (%d pretraining, %d fine-tuning), %d done already; results in %s",
            total,
            pretraining,
            total - pretraining,
            done,
            results_root,
        )
        for number, job in enumerate(jobs, start=1):
            prefix = f"[{number}/{total}]"
            record = store.read_record(job.job_id)
            if record is not None and record.get("status") == "ok":
                log.info("%s done already: %s (%s)", prefix, job.describe(), job.job_id)
                records[job.job_id] = record
                continue
            blocked = [d for d in job.depends_on if records.get(d, {}).get("status") != "ok"]
            if blocked:
                log.warning(
                    "%s skipped: %s, because %s did not finish",
                    prefix,
                    job.describe(),
                    ", ".join(blocked),
                )
                records[job.job_id] = skipped_record(
                    job, f"dependency {', '.join(blocked)} did not finish"
                )
                continue
            if record is not None:
                log.info("%s retrying a previously failed job", prefix)
            log.info("%s %s (%s)", prefix, job.describe(), job.job_id)
            start = time.perf_counter()
            records[job.job_id] = execute(job, results_root, data_root)
            log.info(
                "%s %s in %.1fs", prefix, records[job.job_id]["status"], time.perf_counter() - start
            )
        return records


@dataclass
class SubmitReport:
    """What one submission did, by job id."""

    submitted: dict[str, str] = field(default_factory=dict)  # job id -> scheduler job id
    already: dict[str, str] = field(default_factory=dict)  # job id -> done / queued / running
    held_back: dict[str, str] = field(default_factory=dict)  # job id -> why not submitted

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for state in self.already.values():
            counts[state] = counts.get(state, 0) + 1
        parts = [f"{len(self.submitted)} submitted"]
        parts += [f"{n} {state} already" for state, n in sorted(counts.items())]
        if self.held_back:
            parts.append(f"{len(self.held_back)} held back")
        return ", ".join(parts)


class SubmititExecutor:
    """Runs jobs through submitit (``cluster``: slurm, local or debug)."""

    def __init__(
        self,
        cluster: str,
        profile: Profile | None = None,
        context: dict[str, Any] | None = None,
        poll_s: float = 2.0,
    ) -> None:
        self.name = cluster
        self.cluster = cluster
        self.profile = profile or load_profile(None)
        self.context = context or {}  # sweep spec etc., kept in submission.json
        self.poll_s = poll_s

    # ------------------------------------------------------------------ submission
    def submit(
        self,
        jobs: list[Job],
        results_root: Path,
        data_root: Path | str | None = None,
        only_failed: bool = False,
    ) -> SubmitReport:
        """Submit every job that is not queued, running or done (with ``only_failed``, only
        those that failed) and return at once. SLURM only: local and debug jobs need
        :meth:`run`, which waits for pretraining before fine-tuning."""
        if self.cluster != "slurm":
            raise ConfigError(f"the {self.cluster} executor runs jobs with run(), not submit()")
        results_root = Path(results_root).resolve()
        data_root = _absolute_data_root(data_root)
        store = RunStore(results_root)
        status = job_status(store, [job.job_id for job in jobs])
        report = SubmitReport()
        wanted = []
        for job in jobs:
            state = status[job.job_id]["state"]
            if state in ("done", "queued", "running"):
                report.already[job.job_id] = state
            elif only_failed and state != "failed":
                report.held_back[job.job_id] = f"{state}, not failed"
            else:
                wanted.append(job)
        # a fine-tuning waits for its pretraining: a job submitted now or one already queued
        pending_ids = {
            job_id: status[job_id]["scheduler_job_id"]
            for job_id, state in report.already.items()
            if state in ("queued", "running")
        }
        folder = results_root / ".submitit" / "%j"
        executor = make_executor("slurm", folder, self.profile)

        layouts: dict[tuple[int, int], list[Job]] = {}  # one array per process layout
        for job in wanted:
            if job.kind == "pretrain":
                layouts.setdefault(pretrain_layout(job, self.profile), []).append(job)
        for layout, pretraining in layouts.items():
            self._submit_array(
                executor, "bench-pretrain", pretraining, None, store, data_root, report, layout
            )
        pending_ids.update(report.submitted)

        groups: dict[str | None, list[Job]] = {}
        for job in wanted:
            if job.kind != "finetune":
                continue
            parent = job.depends_on[0] if job.depends_on else None
            if parent is not None and not store.is_done(parent):
                if parent not in pending_ids:
                    report.held_back[job.job_id] = f"its pretraining {parent} is not submitted"
                    continue
            groups.setdefault(parent, []).append(job)
        for parent, group in groups.items():
            after = pending_ids.get(parent) if parent and not store.is_done(parent) else None
            self._submit_array(executor, "bench-finetune", group, after, store, data_root, report)
        log.info("%s; submitit files in %s", report.summary(), folder.parent)
        return report

    def _submit_array(
        self, executor, name, jobs, after, store, data_root, report: SubmitReport, layout=(1, 1)
    ) -> None:
        if not jobs:
            return
        set_array_parameters(executor, self.profile, name, layout, after)
        for job in jobs:
            store.prepare_run(job, job_spec(job))
        processes = layout[0] * layout[1]
        submitted = executor.submit_array(
            [JobSubmission(job, store.root, data_root, processes) for job in jobs]
        )
        for job, handle in zip(jobs, submitted, strict=True):
            write_submission(
                store, job, self.cluster, handle.job_id, executor.folder, self._context(data_root)
            )
            report.submitted[job.job_id] = handle.job_id

    def _context(self, data_root) -> dict[str, Any]:
        return {
            **self.context,
            "data_root": data_root,
            "cluster_profile": self.profile.source,
            "cluster_settings": self.profile.settings,
        }

    # ------------------------------------------------------------------ waiting
    def wait(
        self,
        jobs: list[Job],
        results_root: Path,
        timeout_s: float | None = None,
        progress: Callable[[dict[str, int]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until no job is queued or running; return the status of each job.
        Raises TimeoutError after ``timeout_s``."""
        store = RunStore(Path(results_root).resolve())
        ids = [job.job_id for job in jobs]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            status = job_status(store, ids)
            counts: dict[str, int] = {}
            for entry in status.values():
                counts[entry["state"]] = counts.get(entry["state"], 0) + 1
            if counts != last and progress is not None:
                progress(counts)
            last = counts
            if not counts.get("queued") and not counts.get("running"):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued or running after {timeout_s:.0f}s: {counts}")
            time.sleep(self.poll_s)

    # ------------------------------------------------------------------ run = submit + wait
    def run(
        self,
        jobs: list[Job],
        results_root: Path,
        data_root=None,
        timeout_s: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run every job to its end and return the records (like the inline executor)."""
        results_root = Path(results_root).resolve()
        store = RunStore(results_root)
        if self.cluster == "slurm":
            self.submit(jobs, results_root, data_root)
            self.wait(jobs, results_root, timeout_s, progress=_log_progress)
        else:
            self._run_in_stages(jobs, results_root, _absolute_data_root(data_root), store)
        records = {}
        for job in jobs:
            record = store.read_record(job.job_id)
            if record is None:
                blocked = [d for d in job.depends_on if not store.is_done(d)]
                reason = (
                    f"dependency {', '.join(blocked)} did not finish"
                    if blocked
                    else "the job ended without a result record (cancelled or killed)"
                )
                record = skipped_record(job, reason)
            records[job.job_id] = record
        return records

    def _run_in_stages(self, jobs, results_root: Path, data_root, store: RunStore) -> None:
        """local/debug: pretraining jobs in parallel, then the fine-tunings whose
        pretraining finished (submitit's local executors know no dependencies)."""
        folder = results_root / ".submitit" / "%j"
        executor = make_executor(self.cluster, folder, self.profile)
        parallel = self.profile.settings.get("array_parallelism", 4)
        for kind in ("pretrain", "finetune"):
            stage = [
                job
                for job in jobs
                if job.kind == kind
                and not store.is_done(job.job_id)
                and all(store.is_done(d) for d in job.depends_on)
            ]
            layouts: dict[tuple[int, int], list[Job]] = {}
            for job in stage:
                layouts.setdefault(pretrain_layout(job, self.profile), []).append(job)
            for layout, group in layouts.items():
                self._run_chunks(executor, group, layout, parallel, results_root, data_root, store)

    def _run_chunks(self, executor, jobs, layout, parallel, results_root, data_root, store):
        """Run ``jobs`` (all of one process layout) ``parallel`` at a time and wait."""
        per_node, nodes = layout
        if nodes > 1 or (per_node > 1 and self.cluster == "debug"):
            where = "one process" if self.cluster == "debug" else "one node"
            raise ConfigError(
                f"the {self.cluster} executor runs {where}; pretrain.gpus={per_node} x "
                f"pretrain.nodes={nodes} needs --executor slurm"
            )
        executor.update_parameters(**layout_parameters(self.profile, per_node, nodes))
        for start in range(0, len(jobs), parallel):
            chunk = jobs[start : start + parallel]
            for job in chunk:
                store.prepare_run(job, job_spec(job))
            handles = executor.submit_array(
                [JobSubmission(job, results_root, data_root, per_node) for job in chunk]
            )
            for job, handle in zip(chunk, handles, strict=True):
                write_submission(
                    store, job, self.cluster, handle.job_id, executor.folder, self.context
                )
            for job, handle in zip(chunk, handles, strict=True):
                try:
                    handle.result()
                    log.info("ok: %s (%s)", job.describe(), job.job_id)
                except Exception as error:  # noqa: BLE001  (the record says what failed)
                    log.warning("failed: %s: %s", job.job_id, str(error).strip()[-300:])


def _absolute_data_root(data_root) -> str:
    from bench.datasets.base import default_data_root

    return str(Path(data_root if data_root is not None else default_data_root()).resolve())


def _log_progress(counts: dict[str, int]) -> None:
    log.info("jobs: %s", ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


EXECUTORS = ("inline", "slurm", "local", "debug")


def get_executor(
    name: str, profile: Profile | None = None, context: dict[str, Any] | None = None
) -> InlineExecutor | SubmititExecutor:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    if name == "inline":
        return InlineExecutor()
    return SubmititExecutor(name, profile, context)
