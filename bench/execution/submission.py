"""What submitit runs on a node, and what the results folder remembers of a submission.

:class:`JobSubmission` is the pickled callable of every submitted job: it calls the same
``bench.jobs.execute`` as the in-process executor. It is checkpointable in submitit's sense:
when SLURM signals a preemption or a coming time limit (USR2), the training loop writes its
checkpoint and stops (``bench.preemption``), then submitit's own handler calls
:meth:`JobSubmission.checkpoint` and requeues the job, which resumes from
``<run dir>/checkpoint.pt`` instead of from scratch.

What a submission leaves in the results folder (``submission.json``) is written and read by
:mod:`bench.store`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from bench.execution.submitit_adapter import (
    export_distributed_environment,
    resubmission,
    task_rank,
)
from bench.jobs import Job, execute
from bench.preemption import Preempted

log = logging.getLogger(__name__)

# set by torchrun (or a profile's setup lines); otherwise submitit's environment is exported
TORCH_ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
# How long the other tasks of a data-parallel job wait for task 0 to requeue it.
REQUEUE_GRACE_S = 120


class JobFailed(RuntimeError):
    """The job's record says it failed (the record holds the traceback). Raised on the node
    so that SLURM marks the job FAILED and its dependants never run."""


class JobSubmission:
    """``execute(job, results_root, data_root)`` as a submitit job that can be requeued."""

    def __init__(
        self,
        job: Job,
        results_root: Path | str,
        data_root: Path | str | None,
        processes: int = 1,
    ) -> None:
        self.job = job
        self.results_root = str(results_root)
        self.data_root = None if data_root is None else str(data_root)
        self.processes = processes  # tasks of a data-parallel pretraining (bench.distributed)

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        if self.processes > 1 and not all(name in os.environ for name in TORCH_ENVIRONMENT):
            export_distributed_environment()  # for bench.distributed's env:// start
        try:
            record = execute(self.job, self.results_root, self.data_root, self.processes)
        except Preempted as stop:
            self._hand_over_to_scheduler(stop)
            raise
        if record.get("status") != "ok":
            raise JobFailed(f"{self.job.job_id}: {record.get('error')}")
        return record

    def checkpoint(self) -> Any:
        """Called by submitit on preemption or time-out: the same job again; it resumes from
        the checkpoint the training loop has just written."""
        return resubmission(JobSubmission(*self._args()))

    def _args(self) -> tuple[Job, str, str | None, int]:
        return self.job, self.results_root, self.data_root, self.processes

    def _hand_over_to_scheduler(self, stop: Preempted) -> None:
        """The training loop took the stop signal (to checkpoint first); now give it to the
        handler that was there before, submitit's checkpoint-and-requeue, which exits. With
        no such handler (in-process runs, SIGTERM under SLURM) the job just stops.

        In a job of several tasks only task 0 requeues (submitit's rule); the others wait
        here to be ended by the requeue instead of failing, which would make srun
        (``--kill-on-bad-exit``) kill task 0 before it has requeued the job."""
        if stop.signum is None and self.processes == 1:
            return
        handler = signal.getsignal(stop.signum) if stop.signum is not None else None
        from_submitit = callable(handler) and getattr(handler, "__module__", "").startswith(
            "submitit"
        )
        if self.processes > 1 and task_rank() != 0:
            if from_submitit or stop.signum is None:
                log.info("%s: waiting up to %ds for task 0 to requeue", stop, REQUEUE_GRACE_S)
                time.sleep(REQUEUE_GRACE_S)
            return
        if from_submitit:
            log.info("%s: checkpoint written; asking submitit to requeue", stop)
            handler(stop.signum, None)

    def __repr__(self) -> str:
        return f"JobSubmission({self.job.job_id})"
