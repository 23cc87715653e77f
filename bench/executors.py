"""Executors take planned jobs and run them. ``local`` runs them in this process, one after
another, in plan order. (The submitit executor for SLURM builds on the same ``execute``.)"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench.config import ConfigError
from bench.jobs import Job, execute
from bench.store import RunStore, skipped_record

log = logging.getLogger(__name__)


class LocalExecutor:
    """Sequential, in-process. Finished jobs are skipped; jobs whose dependency did not
    finish are reported as skipped (never run from the wrong weights)."""

    def run(self, jobs: list[Job], results_root: Path, data_root=None) -> dict[str, dict[str, Any]]:
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


EXECUTORS = {"local": LocalExecutor}


def get_executor(name: str) -> LocalExecutor:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    return EXECUTORS[name]()
