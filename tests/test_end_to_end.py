"""Slow end-to-end checks (``pytest -m slow``; CI runs them after the default suite)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

from bench import SweepSpec, run_sweep
from bench.datasets import DATASETS
from bench.metrics import ConfusionMatrix

pytestmark = pytest.mark.slow

SMALL = (
    "synthetic.n_train=256",
    "synthetic.n_test=64",
    "pretrain.batch_size=32",
    "pretrain.epochs=4",
    "pretrain.checkpoint_minutes=0",  # a checkpoint each epoch: the kill below waits for one
    "finetune.steps=20",
)


def _cli(
    results: Path,
    data: Path,
    methods: str = "simclr,random",
    fractions: str = "0.1,1",
    settings: tuple[str, ...] = SMALL,
) -> list[str]:
    """``python -m bench run`` with the given sweep and ``--set`` settings."""
    args = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--methods",
        methods,
        "--fractions",
        fractions,
        "--results",
        str(results),
        "--data-root",
        str(data),
    ]
    for item in settings:
        args += ["--set", item]
    return args


def _table(output: str) -> str:
    return output[output.index("| method") : output.index("jobs in")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its table and wall time."""
    root = tmp_path_factory.mktemp("reference")
    start = time.time()
    done = subprocess.run(
        _cli(root / "results", root / "data"), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return _table(done.stdout), time.time() - start, root / "data"


def test_sigkill_at_random_moments_then_rerun_gives_the_same_table(tmp_path, reference):
    table, duration, data = reference
    results = tmp_path / "killed"
    rng = random.Random(2026)
    kill_times = sorted(rng.uniform(4.0, 0.8 * duration) for _ in range(3))
    seen = []
    for when in kill_times:
        process = subprocess.Popen(
            _cli(results, data),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        time.sleep(when)
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        progress = [
            line for line in output.splitlines() if "pretrain " in line or "finetune " in line
        ]
        seen.append((round(when, 1), progress[-1][9:80] if progress else "starting up"))
        for record in results.glob("*/result.json"):  # finished records are whole JSON
            assert json.loads(record.read_text())["status"] == "ok"
    print("kill points:", *seen, sep="\n  ")
    rerun = subprocess.run(_cli(results, data), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _table(rerun.stdout) == table  # bit-exact on CPU
    assert len(list(results.glob("*/result.json"))) == 5  # one record per job, no duplicate


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes(tmp_path, reference):
    table, _, data = reference
    results = tmp_path / "stopped"
    process = subprocess.Popen(
        _cli(results, data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list(results.glob("pretrain-*/checkpoint.pt")):
        time.sleep(0.2)
    time.sleep(1.0)  # into the second epoch
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 143, err[-2000:]
    assert "preempted: SIGTERM received; checkpoint written" in err
    rerun = subprocess.run(_cli(results, data), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from checkpoint" in rerun.stderr
    assert _table(rerun.stdout) == table


def test_synthetic_is_a_real_segmentation_task(tmp_path):
    """All labels clearly beat 1% of them, and both beat the majority-class baseline."""
    spec = SweepSpec(
        methods=("random",),
        fractions=(0.01, 1.0),
        overrides=("finetune.steps=300", "synthetic.n_train=1024", "synthetic.n_test=256"),
    )
    result = run_sweep(spec, tmp_path / "results", tmp_path / "data")
    assert result.ok
    miou = {r["fraction"]: r["miou"] for r in result.finetune_records()}
    job = result.jobs[0]
    test = DATASETS.get("synthetic")(job.dataset_params, job.data, tmp_path / "data").load_split(
        "test"
    )
    majority, test_masks = ConfusionMatrix(7), test[:][1]
    most_common = int(torch.bincount(test_masks.reshape(-1).long()).argmax())
    majority.update(torch.full_like(test_masks, most_common), test_masks)
    majority_miou = majority.compute()["miou"]
    print(
        f"synthetic mIoU: 1% {miou[0.01]:.3f}, 100% {miou[1.0]:.3f}, majority {majority_miou:.3f}"
    )
    assert miou[1.0] > miou[0.01] + 0.03
    assert miou[0.01] > majority_miou + 0.05


def test_a_diverging_pretraining_fails_alone_and_the_sweep_reports_it(tmp_path):
    results = tmp_path / "results"
    done = subprocess.run(
        _cli(results, tmp_path / "data", "random,simclr", "0.5", (*TINY, "pretrain.lr=1e30")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    assert "FAILED  pretrain-simclr" in done.stdout and "NonFiniteLossError" in done.stdout
    assert "SKIPPED finetune-simclr" in done.stdout
    records = {
        json.loads(p.read_text())["job_id"].split("-")[1]: json.loads(p.read_text())
        for p in results.glob("*/result.json")
    }
    assert records["simclr"]["status"] == "failed" and "Traceback" in records["simclr"]["traceback"]
    assert records["random"]["status"] == "ok"  # the job that does not depend on it ran


def test_concurrent_sweeps_into_one_results_folder_lose_nothing(tmp_path):
    results, data = tmp_path / "results", tmp_path / "data"
    # MoCo's data-sized queue would not exceed the batch on 48 images (refused): set one
    extra = {"moco": ("moco.queue_size=32",)}
    logs = {
        methods: tmp_path / f"{methods}.err" for methods in ("random", "simclr", "moco", "byol")
    }
    streams = {methods: log.open("w") for methods, log in logs.items()}
    runs = {  # they also render the synthetic data and write subset lists at the same time
        methods: subprocess.Popen(
            _cli(results, data, methods, "0.5", (*TINY, *extra.get(methods, ()))),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        for methods, stderr in streams.items()
    }
    codes = {methods: run.wait(timeout=900) for methods, run in runs.items()}
    for stderr in streams.values():
        stderr.close()
    failed = {m: logs[m].read_text()[-2000:] for m, code in codes.items() if code != 0}
    assert not failed, failed
    records = [json.loads(p.read_text()) for p in results.glob("*/result.json")]
    assert len(records) == 7 and all(r["status"] == "ok" for r in records)
    table = subprocess.run(
        [sys.executable, "-m", "bench", "table", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert all(f"| {m}" in table for m in ("random", "simclr", "moco", "byol"))
    assert "n/a" not in table


def test_glcnet_sweep_saves_its_decoder_and_records_the_load_mode(dirs):
    from bench.store import DECODER, RunStore

    results, data = dirs
    result = run_sweep(
        SweepSpec(methods=("glcnet", "simclr"), fractions=(1.0,), overrides=TINY), results, data
    )
    assert result.ok
    records = {r["method"]: r for r in result.finetune_records()}
    assert (records["glcnet"]["load"], records["glcnet"]["loaded"]) == ("backbone+aspp",) * 2
    assert (records["simclr"]["load"], records["simclr"]["loaded"]) == ("backbone+aspp", "backbone")
    store = RunStore(results)
    assert (store.run_dir(records["glcnet"]["pretrain_id"]) / DECODER).exists()
    assert not (store.run_dir(records["simclr"]["pretrain_id"]) / DECODER).exists()


def test_compiled_sweep_gives_the_same_scores(tmp_path):
    """pretrain.compile / finetune.compile with the real inductor backend on CPU: the sweep
    completes and scores as the uncompiled one (compiled kernels may round differently)."""
    common = dict(methods=("simclr",), fractions=(0.5,), overrides=TINY)
    plain = run_sweep(SweepSpec(**common), tmp_path / "plain", tmp_path / "data")
    compiled_spec = SweepSpec(
        **{**common, "overrides": (*TINY, "pretrain.compile=true", "finetune.compile=true")}
    )
    compiled = run_sweep(compiled_spec, tmp_path / "compiled", tmp_path / "data")
    assert plain.ok and compiled.ok
    assert [j.job_id for j in plain.jobs] == [j.job_id for j in compiled.jobs]
    (a,), (b,) = plain.finetune_records(), compiled.finetune_records()
    assert b["miou"] == pytest.approx(a["miou"], abs=0.02)
