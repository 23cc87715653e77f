"""The SLURM executor on a real SLURM cluster (slurm/local-cluster.sh start), through submitit.

Skipped, with the reason, when ``sinfo`` does not answer. Every wait has a deadline, so a
broken cluster fails these tests instead of hanging CI.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench import SweepSpec, run_sweep
from bench.cli import main
from bench.execution.cluster import load_profile, slurm_available
from bench.execution.status import job_statuses
from bench.execution.sweeps import submit_sweep
from bench.report import comparison_table
from bench.store import CHECKPOINT, LOG, SUBMISSION, RunStore

ROOT = Path(__file__).resolve().parents[1]
WHY_NOT = slurm_available()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no SLURM cluster: {WHY_NOT}"),
]
DEADLINE_S = 240


@pytest.fixture
def cluster(monkeypatch):
    """The local cluster's profile; jobs start in the repository root, so that they import
    this checkout's ``bench``."""
    monkeypatch.chdir(ROOT)
    return load_profile(ROOT / "slurm" / "local.yaml")


def _wait_for(what, predicate, timeout_s=DEADLINE_S, every_s=0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _preempt_and_restart(scheduler_id):
    """USR2 as before a time limit: submitit's handler asks SLURM to requeue the job (same
    job id, Restarts=1). SLURM holds a requeued job ~2 min before it may start again; let
    it start now (test speed only)."""
    subprocess.run(["scancel", "--signal=USR2", scheduler_id], check=True, timeout=30)
    _wait_for(
        "the requeued job to be pending",
        lambda: (
            _job_field(scheduler_id, "Restarts") == "1"
            and _job_field(scheduler_id, "JobState") == "PENDING"
        ),
    )
    subprocess.run(
        ["scontrol", "update", f"JobId={scheduler_id}", "StartTime=now"], check=True, timeout=30
    )


def _states(results, jobs):
    statuses = job_statuses(RunStore(results), [job.job_id for job in jobs])
    return {job_id: status.state for job_id, status in statuses.items()}


def _submission(results, job):
    return json.loads((RunStore(results).run_dir(job.job_id) / SUBMISSION).read_text())


def _sbatch_text(results, scheduler_id):
    main_id = scheduler_id.split("_")[0]
    return (results / ".submitit" / main_id / f"{main_id}_submission.sh").read_text()


def test_sweep_as_arrays_with_dependencies_gives_the_inline_table(
    dirs, tiny_overrides, cluster, capsys
):
    results, data = dirs
    spec = SweepSpec(methods=("simclr", "random"), fractions=(0.25, 0.5), overrides=tiny_overrides)
    started = time.perf_counter()
    inline = run_sweep(spec, results / "inline", data)
    inline_s = time.perf_counter() - started
    started = time.perf_counter()
    slurm = run_sweep(spec, results / "slurm", data, "slurm", cluster, timeout_s=DEADLINE_S)
    slurm_s = time.perf_counter() - started
    print(f"tiny sweep (5 jobs): inline {inline_s:.1f}s, local SLURM cluster {slurm_s:.1f}s")
    assert slurm.ok, slurm.records
    assert comparison_table(slurm.finetune_records()) == comparison_table(inline.finetune_records())

    jobs = {job.job_id: job for job in slurm.jobs}
    pretrain = next(j for j in jobs.values() if j.kind == "pretrain")
    pretrain_id = _submission(results / "slurm", pretrain)["scheduler_job_id"]
    simclr_tunes = [j for j in jobs.values() if j.method == "simclr" and j.kind == "finetune"]
    random_tunes = [j for j in jobs.values() if j.method == "random"]
    tune_ids = sorted(_submission(results / "slurm", j)["scheduler_job_id"] for j in simclr_tunes)
    array = tune_ids[0].split("_")[0]
    assert tune_ids == [f"{array}_0", f"{array}_1"]  # one array for the two fractions...
    assert f"--dependency=afterok:{pretrain_id}\n" in _sbatch_text(results / "slurm", tune_ids[0])
    random_ids = [_submission(results / "slurm", j)["scheduler_job_id"] for j in random_tunes]
    assert "--dependency" not in _sbatch_text(results / "slurm", random_ids[0])  # ...no wait

    # Submitting the finished sweep again submits nothing; status says done for all.
    _, report = submit_sweep(spec, results / "slurm", data, cluster)
    assert report.submitted == {} and set(report.already.values()) == {"done"}
    assert main(["status", "--results", str(results / "slurm")]) == 0
    assert "5 jobs: 5 done" in capsys.readouterr().out


# A method whose step raises: every setting passes the checks before submission (bad input
# is refused there now), so only the job itself can fail. Workers import it as a plugin.
FAILING = """
from bench.methods import register_method
from bench.methods.simclr import SimCLR

@register_method("failing")
class Failing(SimCLR):
    summary = "SimCLR whose training step raises, for the failed-job test"

    def training_step(self, images, ctx):
        raise RuntimeError("failing: this method raises when its job runs")
"""


@pytest.fixture
def failing_plugin(tmp_path, monkeypatch, registries):
    """The module above on this process's path and, through PYTHONPATH (sbatch exports the
    submitting environment), on the SLURM job's."""
    import os

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "failing_method.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(folder))
    path = os.pathsep.join(filter(None, (str(folder), os.environ.get("PYTHONPATH"))))
    monkeypatch.setenv("PYTHONPATH", path)
    return "failing_method"


def test_a_failing_job_is_reported_failed_while_the_rest_completes(
    dirs, tiny_overrides, cluster, failing_plugin, capsys
):
    results, data = dirs
    spec = SweepSpec(
        methods=("simclr", "failing"),
        fractions=(0.5,),
        overrides=tiny_overrides,
        plugins=(failing_plugin,),
    )
    swept = run_sweep(spec, results, data, "slurm", cluster, timeout_s=DEADLINE_S)
    states = _states(results, swept.jobs)
    by_name = {(job.method, job.kind): job.job_id for job in swept.jobs}
    assert states[by_name[("simclr", "pretrain")]] == "done"
    assert states[by_name[("simclr", "finetune")]] == "done"
    assert states[by_name[("failing", "pretrain")]] == "failed"
    assert states[by_name[("failing", "finetune")]] == "failed"  # cancelled: dependency failed
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "RuntimeError: failing: this method raises when its job runs" in out
    assert "SLURM state CANCELLED" in out


def _long_pretraining(tiny_overrides, epochs):
    return SweepSpec(
        methods=("simclr",),
        fractions=(0.5,),
        overrides=(*tiny_overrides, f"pretrain.epochs={epochs}"),
    )


def test_scancel_mid_run_is_failed_and_rerun_failed_completes_it(
    dirs, tiny_overrides, cluster, capsys
):
    results, data = dirs
    spec = _long_pretraining(tiny_overrides, epochs=8)
    jobs, report = submit_sweep(spec, results, data, cluster)
    assert len(report.submitted) == 2
    pretrain, finetune = jobs
    run_dir = RunStore(results).run_dir(pretrain.job_id)
    _wait_for("a pretraining checkpoint", lambda: (run_dir / CHECKPOINT).exists())
    subprocess.run(["scancel", report.submitted[pretrain.job_id]], check=True, timeout=30)
    _wait_for(
        "both jobs to be failed",
        lambda: set(_states(results, jobs).values()) == {"failed"},
    )
    assert RunStore(results).read_record(pretrain.job_id) is None  # killed, not finished

    assert main(["status", "--results", str(results), "--rerun-failed"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs: 2 failed" in out and "resubmitted 2 failed job(s)" in out
    _wait_for("the rerun to finish", lambda: set(_states(results, jobs).values()) == {"done"})
    record = RunStore(results).read_record(pretrain.job_id)
    assert record["resumed_from_epoch"] > 0 or record["resumed_from_batch"] > 0
    assert RunStore(results).read_record(finetune.job_id)["status"] == "ok"


def test_usr2_checkpoints_requeues_and_resumes_and_resubmission_adds_nothing(
    dirs, tiny_overrides, cluster
):
    results, data = dirs
    spec = _long_pretraining(tiny_overrides, epochs=8)
    jobs, report = submit_sweep(spec, results, data, cluster)
    pretrain = jobs[0]
    scheduler_id = report.submitted[pretrain.job_id]
    run_dir = RunStore(results).run_dir(pretrain.job_id)
    _wait_for("a pretraining checkpoint", lambda: (run_dir / CHECKPOINT).exists())

    # While it runs, submitting the same sweep again submits nothing new.
    _, again = submit_sweep(spec, results, data, cluster)
    assert again.submitted == {}
    assert again.already == {pretrain.job_id: "running", jobs[1].job_id: "queued"}

    _preempt_and_restart(scheduler_id)
    _wait_for("the sweep to finish", lambda: set(_states(results, jobs).values()) == {"done"})
    record = RunStore(results).read_record(pretrain.job_id)
    assert record["resumed_from_epoch"] > 0 or record["resumed_from_batch"] > 0
    lines = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    epochs = [line["epoch"] for line in lines if line.get("kind") == "epoch"]
    assert epochs == sorted(set(epochs)) and len(epochs) == 8  # resumed, not started over


def _job_field(scheduler_id, name):
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", scheduler_id], capture_output=True, text=True, timeout=30
    ).stdout
    fields = dict(part.split("=", 1) for part in shown.split() if "=" in part)
    return fields.get(name)


def test_two_process_pretraining_runs_as_two_tasks_of_one_job(
    dirs, tiny_overrides, cluster, capsys
):
    """``--set pretrain.gpus=2`` on the local cluster (1 node, 2 CPUs): the pretraining job
    is 2 tasks of 1 CPU in one gloo group, rank 0 writes; its fine-tuning then runs."""
    results, data = dirs
    spec = SweepSpec(
        methods=("simclr",), fractions=(1.0,), overrides=(*tiny_overrides, "pretrain.gpus=2")
    )
    swept = run_sweep(spec, results, data, "slurm", cluster, timeout_s=DEADLINE_S)
    assert swept.ok, swept.records
    pretrain, finetune = swept.jobs
    record = swept.records[pretrain.job_id]
    assert record["world_size"] == 2 and record["steps"] == 2 * (48 // 16)
    assert swept.records[finetune.job_id]["pretrain_id"] == pretrain.job_id

    scheduler_id = _submission(results, pretrain)["scheduler_job_id"]
    script = _sbatch_text(results, scheduler_id)
    assert "#SBATCH --ntasks-per-node=2\n" in script and "#SBATCH --nodes=1\n" in script
    assert " --kill-on-bad-exit=1 " in script
    logs = sorted(p.name for p in (results / ".submitit" / scheduler_id).glob("*_log.err"))
    assert logs == [f"{scheduler_id}_0_log.err", f"{scheduler_id}_1_log.err"]
    tune_script = _sbatch_text(results, _submission(results, finetune)["scheduler_job_id"])
    assert "#SBATCH --ntasks-per-node=1\n" in tune_script
    assert "--kill-on-bad-exit" not in tune_script

    assert main(["status", "--results", str(results)]) == 0
    assert "2 jobs: 2 done" in capsys.readouterr().out


@pytest.mark.slow  # 87 s of two-process training on 2 cores; the one-process requeue test
# and tests/test_distributed.py's two-process resume stay in the default suite
def test_usr2_requeues_a_two_process_pretraining_that_resumes(dirs, tiny_overrides, cluster):
    """Both tasks get USR2 and stop at the same step, rank 0 checkpoints and submitit
    requeues the job (rank 0's handler); both tasks resume from that checkpoint."""
    results, data = dirs
    spec = SweepSpec(
        methods=("simclr",),
        fractions=(1.0,),
        overrides=(*tiny_overrides, "pretrain.epochs=6", "pretrain.gpus=2"),
    )
    jobs, report = submit_sweep(spec, results, data, cluster)
    pretrain = jobs[0]
    scheduler_id = report.submitted[pretrain.job_id]
    run_dir = RunStore(results).run_dir(pretrain.job_id)
    _wait_for("a pretraining checkpoint", lambda: (run_dir / CHECKPOINT).exists())
    _preempt_and_restart(scheduler_id)
    _wait_for("the sweep to finish", lambda: set(_states(results, jobs).values()) == {"done"})
    record = RunStore(results).read_record(pretrain.job_id)
    assert record["world_size"] == 2
    assert record["resumed_from_epoch"] > 0 or record["resumed_from_batch"] > 0
    lines = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    assert [line["epoch"] for line in lines if line.get("kind") == "epoch"] == [1, 2, 3, 4, 5, 6]
    for rank in (0, 1):  # both tasks ran again after the requeue
        text = (results / ".submitit" / scheduler_id / f"{scheduler_id}_{rank}_log.err").read_text()
        assert text.count(f"process {rank} of 2 (local rank {rank}) joined") == 2
