"""One rule from a job's record, submission and SLURM state to the words every command shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import ConfigError
from bench.execution.executors import get_executor
from bench.states import JobState, derive_status, summary
from bench.store import UnreadableRecord

OK = {"status": "ok", "kind": "pretrain", "job_id": "j", "method": "m", "dataset": "d", "seed": 0}
FAILED = {**OK, "status": "failed", "error": "E", "traceback": "Traceback\n  ...\nValueError: x\n"}
SLURM = {"executor": "slurm", "scheduler_job_id": "42_1"}
BAD = UnreadableRecord(Path("r/j/result.json"), "is not valid JSON")


@pytest.mark.parametrize(
    "record,submission,slurm_state,state,detail",
    [
        (None, None, "", JobState.PLANNED, ""),
        (OK, SLURM, "COMPLETED", JobState.DONE, ""),
        (OK, SLURM, "RUNNING", JobState.DONE, ""),  # the record is what counts
        (FAILED, None, "", JobState.FAILED, "ValueError: x"),
        (FAILED, SLURM, "PENDING", JobState.QUEUED, "PENDING"),  # being retried
        (BAD, SLURM, "RUNNING", JobState.RUNNING, "RUNNING"),
        (BAD, None, "", JobState.CORRUPT, "r/j/result.json: is not valid JSON; a rerun"),
        (None, SLURM, "CANCELLED by 0", JobState.FAILED, "SLURM state CANCELLED by 0"),
        (None, SLURM, "", JobState.QUEUED, "SLURM does not list it yet"),
        (None, {"executor": "local", "scheduler_job_id": "7"}, "", JobState.PLANNED, ""),
    ],
)
def test_derive_status(record, submission, slurm_state, state, detail):
    status = derive_status(record, submission, slurm_state)
    assert status.state is state and detail in status.detail
    assert status.scheduler_job_id == (submission or {}).get("scheduler_job_id")
    assert (status.record is not None) == isinstance(record, dict)


def test_summary_counts_in_the_order_of_the_states():
    states = [JobState.FAILED, JobState.DONE, JobState.PLANNED, JobState.DONE]
    assert summary(states) == "4 jobs: 1 planned, 2 done, 1 failed"
    many = [JobState.DONE] * 9899 + [JobState.FAILED] * 101
    assert summary(many) == "10,000 jobs: 9,899 done, 101 failed"  # as the record count


@pytest.mark.parametrize("name", ["inline", "local", "debug"])
def test_only_slurm_submits(name, tmp_path):
    with pytest.raises(ConfigError, match=f"the {name} executor runs jobs with run"):
        get_executor(name).submit([], tmp_path)
