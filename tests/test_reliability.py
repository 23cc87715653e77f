"""Reliability: stop signals checkpoint and resume exactly; bad input fails cleanly."""

import json
import os
import signal

import pytest
import torch

import bench.checkpoint
import bench.methods.simclr
from bench import SweepSpec, plan, run_sweep
from bench.cli import main
from bench.jobs import execute
from bench.preemption import Preempted
from bench.store import BACKBONE, MARKER, RECORD, RunStore


def _signal_at(monkeypatch, target, attribute, signum, at_call):
    """Make the ``at_call``-th call of ``target.attribute`` send ``signum`` to this process."""
    real = getattr(target, attribute)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), signum)  # a real signal, handled by the running job
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, wrapper)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_stop_signal_in_pretraining_checkpoints_mid_epoch_and_resumes_exactly(
    dirs, tiny_overrides, monkeypatch, signum
):
    results, data = dirs
    spec = SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=tiny_overrides)
    job = plan(spec)[0]
    reference = run_sweep(spec, results / "reference", data)
    expected = torch.load(
        RunStore(results / "reference").run_dir(job.job_id) / BACKBONE, weights_only=True
    )

    # 3 batches per epoch, 2 epochs: the signal arrives during the 5th step (epoch 2).
    _signal_at(monkeypatch, bench.methods.simclr.SimCLR, "training_step", signum, at_call=5)
    with pytest.raises(Preempted, match=f"{signal.Signals(signum).name} received"):
        run_sweep(spec, results / "stopped", data)
    store = RunStore(results / "stopped")
    assert store.read_record(job.job_id) is None  # not a failure, not done
    monkeypatch.undo()

    resumed = run_sweep(spec, results / "stopped", data)
    record = resumed.records[job.job_id]
    assert (record["resumed_from_epoch"], record["resumed_from_batch"]) == (1, 2)
    weights = torch.load(store.run_dir(job.job_id) / BACKBONE, weights_only=True)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert resumed.finetune_records()[0]["miou"] == reference.finetune_records()[0]["miou"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_stop_signal_in_finetuning_resumes_to_the_same_scores(dirs, tiny_overrides, monkeypatch):
    results, data = dirs
    overrides = (*tiny_overrides, "finetune.steps=6", "finetune.checkpoint_every=0")
    spec = SweepSpec(methods=("random",), fractions=(0.5,), overrides=overrides)
    reference = run_sweep(spec, results / "reference", data).finetune_records()[0]

    import bench.finetune

    _signal_at(monkeypatch, bench.finetune, "random_dihedral", signal.SIGTERM, at_call=4)
    with pytest.raises(Preempted, match="fine-tuning step 4"):
        run_sweep(spec, results / "stopped", data)
    monkeypatch.undo()
    record = run_sweep(spec, results / "stopped", data).finetune_records()[0]
    assert record["resumed_from_step"] == 4
    for key in ("miou", "kappa", "oa", "per_class_iou"):
        assert record[key] == reference[key]


def test_periodic_finetune_checkpoints_survive_a_crash(dirs, tiny_overrides, monkeypatch):
    results, data = dirs
    overrides = (*tiny_overrides, "finetune.steps=6", "finetune.checkpoint_every=2")
    spec = SweepSpec(methods=("random",), fractions=(0.5,), overrides=overrides)
    reference = run_sweep(spec, results / "reference", data).finetune_records()[0]

    import bench.finetune

    real = bench.finetune.random_dihedral
    calls = {"n": 0}

    def crash_on_fifth(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    monkeypatch.setattr(bench.finetune, "random_dihedral", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, results / "crashed", data)
    monkeypatch.undo()
    record = run_sweep(spec, results / "crashed", data).finetune_records()[0]
    assert record["resumed_from_step"] == 4  # the checkpoint after step 4
    assert record["miou"] == reference["miou"]


def _pretraining_with_checkpoint_minutes(tiny_overrides, minutes: str | None):
    """The simclr pretraining job of a 3-epoch tiny sweep (3 steps an epoch) with
    ``pretrain.checkpoint_minutes`` at ``minutes`` (None: the default)."""
    kept = [o for o in tiny_overrides if not o.startswith("pretrain.checkpoint_minutes=")]
    chosen = [f"pretrain.checkpoint_minutes={minutes}"] if minutes is not None else []
    overrides = (*kept, "pretrain.epochs=3", *chosen)
    return plan(SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=overrides))[0]


def _positions_saved(monkeypatch, die_at: int | None = None) -> list[tuple[int, int]]:
    """The (epoch, batch) of each checkpoint written from now on; the ``die_at``-th
    write is the last: a kill right after it."""
    real = bench.checkpoint.save
    saved: list[tuple[int, int]] = []

    def save(path, state):
        real(path, state)
        saved.append((state["epoch"], state["batch"]))
        if len(saved) == die_at:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(bench.checkpoint, "save", save)
    return saved


def test_pretraining_checkpoints_by_time_mid_epoch_and_resumes_exactly(
    dirs, tiny_overrides, monkeypatch
):
    results, data = dirs
    job = _pretraining_with_checkpoint_minutes(tiny_overrides, None)
    saved = _positions_saved(monkeypatch)
    assert execute(job, results / "default", data)["status"] == "ok"
    assert saved == []  # three short epochs: no 10 minutes passed, the weights follow
    expected = torch.load(results / "default" / job.job_id / BACKBONE, weights_only=True)

    # an interval that has passed after every step: a checkpoint after each step but the
    # run's last (mid-epoch), and at each epoch's end but the last (after its health pass)
    due = _pretraining_with_checkpoint_minutes(tiny_overrides, "1e-9")
    assert due.job_id == job.job_id  # an execution choice, not part of the id
    assert execute(due, results / "every-step", data)["status"] == "ok"
    assert saved == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2)]

    monkeypatch.undo()
    _positions_saved(monkeypatch, die_at=5)  # killed after the checkpoint at epoch 2, batch 1
    with pytest.raises(KeyboardInterrupt):
        execute(due, results / "killed", data)
    monkeypatch.undo()
    record = execute(due, results / "killed", data)
    assert (record["resumed_from_epoch"], record["resumed_from_batch"]) == (1, 1)
    weights = torch.load(results / "killed" / job.job_id / BACKBONE, weights_only=True)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "simclr,nope"], "unknown method 'nope'; valid methods:"),
        (["--methods", ""], "no methods given; valid methods:"),
        (["--datasets", "potsdamm"], "unknown dataset 'potsdamm'; valid datasets: synthetic"),
        (["--datasets", ""], "no datasets given"),
        (["--preset", "huge"], "valid presets: quick, cpu, paper"),
        (["--set", "pretrain.epoch=3"], "unknown setting pretrain.epoch; valid keys"),
        (["--fractions", "0"], "label fraction must be in (0, 1]"),
        (["--fractions", "1.5"], "label fraction must be in (0, 1]"),
        (["--fractions", ""], "no label fractions given"),
        (["--seeds", ""], "no seeds given"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    assert main(["run", "--results", str(results), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not results.exists()


def test_unwritable_or_incompatible_results_folder(tmp_path, capsys, tiny_overrides):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["run", "--methods", "random", "--results", str(a_file / "results")]) == 2
    assert "is not writable" in capsys.readouterr().err

    old = tmp_path / "old"
    old.mkdir()
    (old / MARKER).write_text(json.dumps({"store_version": 0}))
    assert main(["run", "--methods", "random", "--results", str(old)]) == 2
    assert "layout version 0" in capsys.readouterr().err
    assert sorted(p.name for p in old.iterdir()) == [MARKER]  # nothing written


def test_leftover_temporary_files_are_not_records(tmp_path):
    store = RunStore(tmp_path)
    run = store.run_dir("job-a")
    run.mkdir(parents=True)
    (run / f".{RECORD}.123.tmp").write_text('{"status": "ok", "half": ')  # killed mid-write
    assert store.read_record("job-a") is None and list(store.records()) == []
    store.write_record(
        "job-a",
        {
            "status": "ok",
            "kind": "pretrain",
            "job_id": "job-a",
            "method": "m",
            "dataset": "d",
            "seed": 0,
        },
    )
    assert [r["status"] for r in store.records()] == ["ok"]
