"""Live curves: TensorBoard event files of real tiny runs (health passes included), read back
with tensorboard's own reader; a resumed run read once per step; W&B (offline) and MLflow
(file store) when installed; settings that change no job id; a logger asked for and not
installed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import TINY

import bench.finetune
from bench import SweepSpec, plan, run_sweep
from bench.cli import main
from bench.config import ConfigError
from bench.store import LOG, RunStore
from bench.tracking import TENSORBOARD_DIR

SPEC = SweepSpec(methods=("false", "random"), fractions=(0.5,), overrides=TINY)
STEPS_PER_EPOCH = 3  # 48 training patches, batches of 16


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard folder: (step, value) pairs in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    reader.Reload()
    return {
        tag: [(event.step, event.value) for event in reader.Scalars(tag)]
        for tag in reader.Tags()["scalars"]
    }


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny real sweep: FALSE (which logs its own scalars every step) and random."""
    root = tmp_path_factory.mktemp("tracking")
    result = run_sweep(SPEC, root / "results", root / "data")
    assert result.ok
    return RunStore(root / "results"), result


def test_pretraining_events_hold_every_step_and_epoch_scalar(sweep):
    store, result = sweep
    job = next(j for j in result.jobs if j.kind == "pretrain")
    run_dir = store.run_dir(job.job_id)
    tags = scalars(run_dir)
    lines = log_lines(run_dir)
    steps = [line for line in lines if line["kind"] == "step"]
    epochs = [line for line in lines if line["kind"] == "epoch"]
    assert [s for s, _ in tags["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for name in ("loss", "fnsd_pairs", "fnsd_sentinel"):
        logged = [(line["step"], line[name]) for line in steps]
        assert tags[f"train/{name}"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged]
    assert [s for s, _ in tags["epoch/loss"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for tag, key in (
        ("epoch/loss", "loss"),
        ("epoch/lr", "lr"),
        ("epoch/fnsd_pairs", "mean_fnsd_pairs"),
    ):
        logged = [(line["step"], line[key]) for line in epochs]
        assert tags[tag] == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged]
    lrs = dict(tags["train/lr"])
    assert lrs[STEPS_PER_EPOCH] == pytest.approx(epochs[0]["lr"], rel=1e-6)
    passes = [line for line in lines if line["kind"] == "health"]  # one per epoch's end
    for name in ("embedding_std", "effective_rank", "alignment", "uniformity", "knn_accuracy"):
        logged = [(line["step"], line[name]) for line in passes]
        assert tags[f"health/{name}"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in logged]
        assert [s for s, _ in logged] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_finetuning_events_hold_the_loss_and_the_final_scores(sweep):
    store, result = sweep
    for record in result.finetune_records():
        tags = scalars(store.run_dir(record["job_id"]))
        steps = record["steps"]
        assert [s for s, _ in tags["train/loss"]] == list(range(1, steps + 1))
        for metric in ("miou", "kappa", "oa", "mean_f1", "image_miou"):
            assert tags[f"test/{metric}"] == [(steps, pytest.approx(record[metric], rel=1e-6))]
        ious = [tags[f"test_iou/{name}"][0][1] for name in record["class_names"]]
        assert ious == pytest.approx(record["per_class_iou"], rel=1e-6, nan_ok=True)


def test_a_resumed_run_is_read_once_per_step(dirs):
    """Killed after step 3 with a checkpoint at step 2: the rerun logs steps 3-6 again, into a
    new event file; the reader sees each step once, with the values of the run that went on."""
    results, data = dirs
    overrides = (*TINY, "finetune.steps=6", "finetune.checkpoint_every=2")
    spec = SweepSpec(methods=("random",), fractions=(0.5,), overrides=overrides)
    real, calls = bench.finetune.random_dihedral, {"n": 0}

    def crash_on_fourth(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.finetune, "random_dihedral", crash_on_fourth)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, results, data)
    record = run_sweep(spec, results, data).finetune_records()[0]
    assert record["resumed_from_step"] == 2
    run_dir = RunStore(results).run_dir(record["job_id"])
    assert len(list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2
    tags = scalars(run_dir)
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert tags["test/miou"] == [(6, pytest.approx(record["miou"], rel=1e-6))]


def test_tensorboard_can_be_turned_off_and_logging_settings_keep_job_ids(dirs):
    results, data = dirs
    off = ("pretrain.tensorboard=false", "finetune.tensorboard=false")
    spec = SweepSpec(methods=("random",), fractions=(0.5,), overrides=(*TINY, *off))
    record = run_sweep(spec, results, data).finetune_records()[0]
    assert not (RunStore(results).run_dir(record["job_id"]) / TENSORBOARD_DIR).exists()
    default = [job.job_id for job in plan(SweepSpec(overrides=TINY))]
    assert [job.job_id for job in plan(SweepSpec(overrides=(*TINY, *off)))] == default


def test_a_logger_that_is_not_installed_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="finetune.wandb=true needs the wandb package"):
        plan(SweepSpec(methods=("random",), overrides=("finetune.wandb=true",)))
    results = tmp_path / "results"
    args = ["run", "--methods", "random", "--wandb", "--results", str(results)]
    assert main(args) == 2
    assert "needs the wandb package, which is not installed" in capsys.readouterr().err
    assert not results.exists()


# ----------------------------------------------------------------------------------------
# W&B offline and MLflow's file store
# ----------------------------------------------------------------------------------------
def wandb_history(run_file: Path) -> list[tuple[int, dict[str, float]]]:
    """The (step, scalars) rows of an offline W&B run file: LevelDB-log records (32 KiB
    blocks, a 7-byte header per chunk) of wandb's protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data, block, rows = run_file.read_bytes(), 32768, []
    position, payload = 7, b""  # after the file header (":W&B", magic, version)
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room for a header: padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        payload = chunk if kind in (1, 2) else payload + chunk  # full/first, middle/last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "history":
                items = {_key(i): json.loads(i.value_json) for i in record.history.item}
                rows.append((record.history.step.num, items))
    return rows


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _finetune_with(logger: str, dirs) -> tuple[dict, Path]:
    results, data = dirs
    overrides = (*TINY, f"finetune.{logger}=true")
    result = run_sweep(
        SweepSpec(methods=("random",), fractions=(0.5,), overrides=overrides), results, data
    )
    record = result.finetune_records()[0]
    assert record["status"] == "ok", record.get("error")
    return record, RunStore(results).run_dir(record["job_id"])


def test_wandb_offline_run_in_the_run_folder(dirs, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    record, run_dir = _finetune_with("wandb", dirs)
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # offline: nothing sent
    rows = wandb_history(run_file)
    losses = {step: items["train/loss"] for step, items in rows if "train/loss" in items}
    assert sorted(losses) == list(range(1, record["steps"] + 1))
    final = {k: v for step, items in rows if step == record["steps"] for k, v in items.items()}
    assert final["test/miou"] == pytest.approx(record["miou"], rel=1e-9)


def test_mlflow_file_store_under_the_results_folder(dirs, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    record, run_dir = _finetune_with("mlflow", dirs)
    client = MlflowClient(tracking_uri=(run_dir.parent / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("rs-sscl-bench").experiment_id])
    assert run.info.run_name == record["job_id"] and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, record["steps"] + 1))
    (miou,) = client.get_metric_history(run.info.run_id, "test/miou")
    assert (miou.step, miou.value) == (record["steps"], pytest.approx(record["miou"], rel=1e-9))
    assert run.data.params["finetune.steps"] == "3"
