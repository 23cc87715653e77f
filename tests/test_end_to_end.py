"""Slow end-to-end checks (``pytest -m slow``; CI runs them after the default suite)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import SweepSpec, run_sweep
from bench.datasets import DATASETS
from bench.metrics import ConfusionMatrix

pytestmark = pytest.mark.slow

SMALL = (
    "synthetic.n_train=256",
    "synthetic.n_test=64",
    "pretrain.batch_size=32",
    "pretrain.epochs=4",
    "finetune.steps=20",
)


def _cli(results: Path, data: Path) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--methods",
        "simclr,random",
        "--fractions",
        "0.1,1",
        "--results",
        str(results),
        "--data-root",
        str(data),
    ]
    for item in SMALL:
        args += ["--set", item]
    return args


def test_sigkill_during_pretraining_then_rerun_gives_the_same_table(tmp_path):
    data = tmp_path / "data"
    reference = subprocess.run(
        _cli(tmp_path / "reference", data), capture_output=True, text=True, timeout=900
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(killed_dir, data),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and not list(killed_dir.glob("pretrain-*/checkpoint.pt")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # mid-pretraining, after its first checkpoint
    process.wait()
    assert list(killed_dir.glob("pretrain-*/checkpoint.pt"))
    assert not list(killed_dir.glob("pretrain-*/result.json"))

    rerun = subprocess.run(_cli(killed_dir, data), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from checkpoint after epoch" in rerun.stderr
    record = json.loads(next(killed_dir.glob("pretrain-*/result.json")).read_text())
    assert record["resumed_from_epoch"] >= 1
    table = lambda out: out[out.index("| method") : out.index("jobs in")]  # noqa: E731
    assert table(rerun.stdout) == table(reference.stdout)  # bit-exact on CPU


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
    majority = ConfusionMatrix(7)
    most_common = int(torch.bincount(test.masks.reshape(-1).long()).argmax())
    majority.update(torch.full_like(test.masks, most_common), test.masks)
    majority_miou = majority.compute()["miou"]
    print(
        f"synthetic mIoU: 1% {miou[0.01]:.3f}, 100% {miou[1.0]:.3f}, majority {majority_miou:.3f}"
    )
    assert miou[1.0] > miou[0.01] + 0.03
    assert miou[0.01] > majority_miou + 0.05
