"""Planning, the run store and tiny end-to-end sweeps on the real synthetic dataset."""

import json

import pytest
import torch

import bench.checkpoint
import bench.pretrain
from bench import SweepSpec, plan, run_sweep
from bench.config import ConfigError
from bench.report import comparison_table
from bench.store import BACKBONE, CHECKPOINT, LOG, RECORD, SPEC, RunStore


def test_plan_counts_pretrain_once_finetune_per_fraction(tiny_overrides):
    spec = SweepSpec(
        methods=("simclr", "random"),
        fractions=(0.01, 0.1, 1.0),
        seeds=(0, 1),
        overrides=tiny_overrides,
    )
    jobs = plan(spec)
    pretrain = [j for j in jobs if j.kind == "pretrain"]
    finetune = [j for j in jobs if j.kind == "finetune"]
    assert len(pretrain) == 1 * 1 * 2  # simclr only; random has no pretraining
    assert len(finetune) == 2 * 1 * 3 * 2
    assert all(j.pretrain_job is None for j in finetune if j.method == "random")
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == len(ids)
    position = {j.job_id: i for i, j in enumerate(jobs)}
    assert all(position[d] < position[j.job_id] for j in jobs for d in j.depends_on)


def test_ids_are_stable_and_track_hyperparameters(tiny_overrides):
    spec = SweepSpec(methods=("simclr",), overrides=tiny_overrides)
    assert [j.job_id for j in plan(spec)] == [j.job_id for j in plan(spec)]
    changed = plan(
        SweepSpec(methods=("simclr",), overrides=(*tiny_overrides, "simclr.temperature=0.2"))
    )
    assert {j.job_id for j in plan(spec)}.isdisjoint({j.job_id for j in changed})
    # a fine-tuning setting leaves the pretraining id alone
    ft_changed = plan(
        SweepSpec(methods=("simclr",), overrides=(*tiny_overrides, "finetune.steps=4"))
    )
    assert ft_changed[0].job_id == plan(spec)[0].job_id
    assert ft_changed[1].job_id != plan(spec)[1].job_id
    # logging cadence does not change any id
    quiet = plan(
        SweepSpec(methods=("simclr",), overrides=(*tiny_overrides, "pretrain.log_every=1"))
    )
    assert [j.job_id for j in quiet] == [j.job_id for j in plan(spec)]


@pytest.mark.parametrize(
    "spec,match",
    [
        (SweepSpec(methods=("simclr", "nope")), "unknown method 'nope'; valid methods"),
        (SweepSpec(datasets=("nope",)), "unknown dataset 'nope'; valid datasets: synthetic"),
        (SweepSpec(fractions=(0.0,)), "fraction must be in"),
        (SweepSpec(preset="nope"), "valid presets"),
        (SweepSpec(overrides=("nope.x=1",)), "valid sections: data, pretrain, finetune"),
        (SweepSpec(overrides=("simclr.tau=1",)), "valid keys for simclr: simclr.temperature"),
        (SweepSpec(overrides=("synthetic.n_train=x",)), "synthetic.n_train: expected int"),
    ],
)
def test_bad_specs_fail_before_running(spec, match):
    with pytest.raises(ConfigError, match=match):
        plan(spec)


def test_tiny_sweep_writes_records_and_table_then_skips(dirs, tiny_overrides, monkeypatch):
    results, data = dirs
    spec = SweepSpec(methods=("simclr", "random"), fractions=(0.25, 1.0), overrides=tiny_overrides)
    result = run_sweep(spec, results, data)
    assert result.ok and len(result.records) == 5
    store = RunStore(results)
    for job in result.jobs:
        run_dir = store.run_dir(job.job_id)
        assert (run_dir / RECORD).exists() and (run_dir / SPEC).exists()
        assert json.loads((run_dir / SPEC).read_text())["job_id"] == job.job_id
    pretrain = result.jobs[0]
    assert (store.run_dir(pretrain.job_id) / BACKBONE).exists()
    assert (store.run_dir(pretrain.job_id) / CHECKPOINT).exists()
    lines = [json.loads(line) for line in (store.run_dir(pretrain.job_id) / LOG).open()]
    assert [(e["kind"], e["epoch"]) for e in lines] == [  # each epoch, then its health pass
        ("epoch", 1),
        ("health", 1),
        ("epoch", 2),
        ("health", 2),
    ]

    records = result.finetune_records()
    assert len(records) == 4
    for record in records:
        assert 0.0 <= record["miou"] <= 1.0 and -1.0 <= record["kappa"] <= 1.0
        assert len(record["per_class_iou"]) == len(record["class_names"]) == 7
        assert record["protocol"] == "harness" and record["backbone"] == "resnet18"
    simclr_runs = [r for r in records if r["method"] == "simclr"]
    assert all(r["pretrain_id"] == pretrain.job_id for r in simclr_runs)
    assert {r["n_labelled"] for r in records} == {12, 48}

    table = comparison_table(records)
    assert table.splitlines()[0].split("|")[1].strip() == "method"
    assert "25% mIoU" in table and "100% Kappa" in table
    assert table.index("| random") < table.index("| simclr")  # baselines first
    assert "smoke test" in table

    # Second run: nothing executes, the same records come back.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished job ran again")

    monkeypatch.setattr(bench.pretrain, "run_pretraining", must_not_run)
    monkeypatch.setattr("bench.finetune.run_finetuning", must_not_run)
    again = run_sweep(spec, results, data)
    assert [j.job_id for j in again.jobs] == [j.job_id for j in result.jobs]
    assert again.records == result.records
    assert comparison_table(again.finetune_records()) == table


def test_killed_pretraining_resumes_from_checkpoint_bit_exact(dirs, tiny_overrides, monkeypatch):
    results, data = dirs
    overrides = (*tiny_overrides, "pretrain.epochs=3")
    spec = SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=overrides)
    job = plan(spec)[0]

    # Uninterrupted reference run in its own folder.
    reference = run_sweep(spec, results / "reference", data)
    assert reference.ok
    expected = torch.load(
        RunStore(results / "reference").run_dir(job.job_id) / BACKBONE, weights_only=True
    )

    # A run that dies right after writing the checkpoint of epoch 2.
    real_save = bench.checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(bench.checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, results / "killed", data)
    store = RunStore(results / "killed")
    assert not (store.run_dir(job.job_id) / RECORD).exists()
    monkeypatch.setattr(bench.checkpoint, "save", real_save)

    resumed = run_sweep(spec, results / "killed", data)
    assert resumed.ok
    record = resumed.records[job.job_id]
    assert record["resumed_from_epoch"] == 2
    weights = torch.load(store.run_dir(job.job_id) / BACKBONE, weights_only=True)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    log_lines = (store.run_dir(job.job_id) / LOG).read_text().splitlines()
    epochs = [json.loads(line) for line in log_lines]
    assert [e["epoch"] for e in epochs if e["kind"] == "epoch"] == [1, 2, 3]


def test_failed_pretraining_writes_record_and_skips_its_finetunes(
    dirs, tiny_overrides, monkeypatch
):
    results, data = dirs

    def explode(self, images, ctx):
        return torch.tensor(float("nan"), requires_grad=True), {}

    monkeypatch.setattr("bench.methods.simclr.SimCLR.training_step", explode)
    spec = SweepSpec(methods=("simclr", "random"), fractions=(1.0,), overrides=tiny_overrides)
    result = run_sweep(spec, results, data)
    assert not result.ok
    failed = result.by_status("failed")
    assert len(failed) == 1 and "NonFiniteLossError" in failed[0]["error"]
    assert "Traceback" in failed[0]["traceback"]
    on_disk = RunStore(results).read_record(failed[0]["job_id"])
    assert on_disk["status"] == "failed"
    skipped = result.by_status("skipped")
    assert [r["method"] for r in skipped] == ["simclr"]
    assert [r["method"] for r in result.by_status("ok")] == ["random"]
    table = comparison_table(result.finetune_records())
    simclr_row = next(line for line in table.splitlines() if line.startswith("| simclr"))
    assert simclr_row.count("skipped") == 2 and "n/a" in simclr_row  # never a number
    assert "Missing cells: 2 of 4 (2 skipped)" in table and "skipped runs: 1" in table


def test_imagenet_needs_its_file_when_named_and_is_left_out_of_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("BENCH_IMAGENET_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match="method 'imagenet' cannot run here: no ImageNet weights"):
        plan(SweepSpec(methods=("imagenet",)))
    default_methods = {j.method for j in plan(SweepSpec())}
    assert "imagenet" not in default_methods and {"random", "simclr"} <= default_methods
    weights = tmp_path / "r18.pth"
    weights.write_bytes(b"")
    monkeypatch.setenv("BENCH_IMAGENET_WEIGHTS", str(weights))
    assert "imagenet" in {j.method for j in plan(SweepSpec())}
