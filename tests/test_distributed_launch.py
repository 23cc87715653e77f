"""Launching data-parallel pretraining: real processes through submitit's LocalExecutor, and
the SLURM parameters of a multi-node pretraining array (rendered by submitit, not submitted).

The maths of a distributed step is tested in tests/test_distributed.py; here it is the
launch path: executor -> submitit tasks -> process group -> one record by rank 0.
"""

import json
import shutil
import socket
from pathlib import Path

import pytest

from bench import SweepSpec, run_sweep
from bench.config import ConfigError
from bench.execution.cluster import load_profile, pretrain_layout
from bench.execution.submitit_adapter import (
    make_executor,
    rendered_sbatch,
    sbatch_script,
    set_array_parameters,
)
from bench.store import LOG, RunStore, read_submission
from bench.sweep import plan

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "example-ddp-pretrain.sbatch"
needs_srun = pytest.mark.skipif(
    shutil.which("srun") is None, reason="submitit's SLURM executor needs srun"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_local_executor_launches_two_pretraining_processes(dirs, tiny_overrides, monkeypatch):
    """``pretrain.gpus=2`` with ``--executor local``: submitit starts two tasks of one
    pretraining job, they join a gloo group, train on 2 x 8 images of every global batch of
    16, and rank 0 alone writes; the fine-tuning then runs (one process) from that backbone.
    A MASTER_PORT in the environment (e.g. a profile's setup line) chooses the port."""
    results, data = dirs
    port = _free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    spec = SweepSpec(
        methods=("simclr",), fractions=(1.0,), overrides=(*tiny_overrides, "pretrain.gpus=2")
    )
    swept = run_sweep(spec, results, data, executor="local", timeout_s=120)
    assert swept.ok, swept.records
    pretrain = next(job for job in swept.jobs if job.kind == "pretrain")
    finetune = next(job for job in swept.jobs if job.kind == "finetune")
    record = swept.records[pretrain.job_id]
    assert record["status"] == "ok" and record["world_size"] == 2
    assert record["steps"] == 2 * (48 // 16)  # global batches: the world size changes none
    store = RunStore(results)
    lines = [json.loads(x) for x in (store.run_dir(pretrain.job_id) / LOG).read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2]  # written once
    tuned = swept.records[finetune.job_id]
    assert tuned["status"] == "ok" and tuned["pretrain_id"] == pretrain.job_id
    assert tuned["init"] == f"pretrained backbone of {pretrain.job_id}"

    # submitit ran the pretraining as one job of two tasks, the fine-tuning as one task
    folder = results / ".submitit"
    pretrain_id = read_submission(store, pretrain.job_id)["scheduler_job_id"]
    finetune_id = read_submission(store, finetune.job_id)["scheduler_job_id"]
    assert sorted(p.name for p in (folder / pretrain_id).glob("*_log.out")) == [
        f"{pretrain_id}_0_log.out",
        f"{pretrain_id}_1_log.out",
    ]
    assert len(list((folder / finetune_id).glob("*_log.out"))) == 1
    task_logs = [(folder / pretrain_id / f"{pretrain_id}_{r}_log.err").read_text() for r in (0, 1)]
    assert [
        f"process {r} of 2 (local rank {r}) joined the gloo group at " in text
        for r, text in enumerate(task_logs)
    ] == [True, True]
    assert all(f":{port}\n" in text for text in task_logs)


def _jobs(*overrides, methods=("simclr", "moco")):
    return plan(SweepSpec(methods=methods, fractions=(0.1, 1.0), overrides=overrides))


@needs_srun
def test_example_ddp_profile_renders_the_golden_pretraining_array():
    """slurm/example-ddp.yaml: every pretraining job is 2 nodes x 4 tasks, one GPU each; the
    array of both methods' pretrainings as submitit writes it. Update on purpose only."""
    profile = load_profile(ROOT / "slurm" / "example-ddp.yaml", {"python": "python"})
    jobs = _jobs()
    layouts = {job.job_id: pretrain_layout(job, profile) for job in jobs}
    assert {layouts[j.job_id] for j in jobs if j.kind == "pretrain"} == {(4, 2)}
    assert {layouts[j.job_id] for j in jobs if j.kind == "finetune"} == {(1, 1)}
    script = sbatch_script(
        profile, "/results/.submitit/%j", array_size=2, name="bench-pretrain", layout=(4, 2)
    )
    assert script == GOLDEN.read_text()
    # --set pretrain.gpus / pretrain.nodes win over the profile
    (pretrain, *_) = _jobs("pretrain.gpus=2", methods=("simclr",))
    assert pretrain_layout(pretrain, profile) == (2, 2)


def _sbatch_lines(script: str) -> set[str]:
    return {line.removeprefix("#SBATCH ") for line in script.splitlines()}


@needs_srun
def test_pretraining_and_finetuning_arrays_get_their_own_layouts(tmp_path):
    """example.yaml (one GPU per job) with --set pretrain.gpus=4 --set pretrain.nodes=2,
    arrays set up one after another on one executor as the SLURM executor does: the
    pretraining asks for 2 nodes x 4 tasks x 4 GPUs and srun kills all tasks when one fails;
    the fine-tuning array after it is back to 1 node, 1 task, the profile's GPU."""
    profile = load_profile(ROOT / "slurm" / "example.yaml", {"python": "python"})
    jobs = _jobs("pretrain.gpus=4", "pretrain.nodes=2")
    pretrain = next(job for job in jobs if job.kind == "pretrain")
    finetune = next(job for job in jobs if job.kind == "finetune")
    executor = make_executor("slurm", tmp_path / "%j", profile)

    set_array_parameters(executor, profile, "bench-pretrain", pretrain_layout(pretrain, profile))
    script = rendered_sbatch(executor, array_size=2)
    lines = _sbatch_lines(script)
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"} <= lines
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert " --kill-on-bad-exit=1 " in srun
    assert not any(line.startswith("--dependency") for line in lines)

    set_array_parameters(
        executor, profile, "bench-finetune", pretrain_layout(finetune, profile), after="41_0"
    )
    script = rendered_sbatch(executor, array_size=2)
    lines = _sbatch_lines(script)
    assert {"--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"} <= lines
    assert "--dependency=afterok:41_0" in lines
    assert "--kill-on-bad-exit" not in script

    # a profile without GPUs: CPU processes, no GPU request
    cpu = load_profile(ROOT / "slurm" / "local.yaml", {"python": "python"})
    lines = _sbatch_lines(sbatch_script(cpu, tmp_path / "%j", name="p", layout=(2, 1)))
    assert "--ntasks-per-node=2" in lines and not any("--gpus" in line for line in lines)


def test_layouts_that_cannot_run_fail_before_anything_runs(dirs, tiny_overrides):
    results, data = dirs
    several = (*tiny_overrides, "pretrain.gpus=2")
    spec = SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=several)
    with pytest.raises(ConfigError, match="the inline executor runs one process"):
        run_sweep(spec, results, data)
    with pytest.raises(ConfigError, match="the debug executor runs one process"):
        run_sweep(spec, results, data, executor="debug")
    two_nodes = SweepSpec(
        methods=("simclr",), fractions=(1.0,), overrides=(*several, "pretrain.nodes=2")
    )
    with pytest.raises(ConfigError, match="the local executor runs one node"):
        run_sweep(two_nodes, results, data, executor="local")
    (job, _) = _jobs(*tiny_overrides, "pretrain.gpus=3", methods=("simclr",))[:2]
    with pytest.raises(ConfigError, match="batch_size=16 .* does not split evenly over 3"):
        pretrain_layout(job, load_profile(None))
    assert not list(results.glob("pretrain-*/result.json"))  # nothing ran
