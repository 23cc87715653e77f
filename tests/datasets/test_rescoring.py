"""Score once, report under every convention: one fine-tuning on a fake Potsdam release
with its _noBoundary labels, then each convention's numbers from the stored matrices equal
those of a separate evaluation of the same model configured that way (to the last digit),
and OA / Kappa / F1 / mIoU equal scikit-learn on the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from fake_raw import write_potsdam
from test_conventions import (
    IGNORING,
    check_against_scikit_learn,
    check_equal_scores,
    separate_scores,
)

import bench.finetune
from bench import SweepSpec, run_sweep
from bench.conventions import CONVENTIONS, register_convention, rescore_records
from bench.datasets import prepare_dataset
from bench.evaluation import predict
from bench.store import RECORD, SCORES, RunStore

TRAINING = [item for item in TINY if not item.startswith("synthetic.")]
pytestmark = pytest.mark.slow  # one fine-tuning: about 20 s on a free CPU core


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """One fine-tuning of the random baseline on a prepared fake Potsdam with both label
    variants; the model it scored, captured."""
    root = tmp_path_factory.mktemp("rescoring")
    raw, data, results = root / "raw", root / "data", root / "results"
    write_potsdam(raw, size=40, no_boundary=True)  # 4 patches of 32 px per tile
    prepare_dataset("potsdam", raw, data, {"patch_size": 32}, seeds=(0,), fractions=(0.1,))
    seen = {}
    real = bench.finetune.evaluate_job

    def capture(job, model, data, device):
        seen.update(model=model, data=data, device=device, job=job)
        return real(job, model, data, device)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.finetune, "evaluate_job", capture)
        overrides = (*TRAINING, "potsdam.patch_size=32", "finetune.eval_batch_size=16")
        spec = SweepSpec(
            methods=("random",), datasets=("potsdam",), fractions=(0.1,), seeds=(0,),
            overrides=overrides,
        )  # fmt: skip
        assert run_sweep(spec, results, data).ok
    record = RunStore(results).records()[0]
    return record, results, seen


def predictions_and_labels(seen, variant: str):
    """The captured model's predictions on the test patches (one second pass over the
    test split, as a separate evaluation runs), and the labels of ``variant``."""
    model, data, device = seen["model"], seen["data"], seen["device"]
    patches = data.dataset.test_label_variants()[variant]
    if "predicted" not in seen:
        batch = seen["job"].finetune.eval_batch_size
        predicted = []
        for start in range(0, len(patches), batch):
            images, _ = patches[start : start + batch]
            with torch.no_grad():
                logits = predict(model.eval(), images, data.normalize, device, False)
            predicted.append(logits.argmax(1).cpu())
        seen["predicted"] = torch.cat(predicted)
    return seen["predicted"], torch.from_numpy(patches.read_masks(slice(None)))


def test_the_record_keeps_every_label_variant_and_stays_small(one_run):
    record, results, _ = one_run
    assert record["label_variant"] == "full"
    assert set(record["confusion"]) == {"full", "no_boundary"}
    full = np.array(record["confusion"]["full"])
    eroded = np.array(record["confusion"]["no_boundary"])
    assert full.shape == (6, 6) and full.sum() == record["pixels"]
    assert eroded.sum() < full.sum()  # boundary pixels are not scored
    with np.load(results / record["job_id"] / SCORES) as scores:
        assert scores["confusions_full"].shape == (record["n_test"], 6, 6)
        assert scores["confusions_full"].dtype == np.int64
        assert (scores["confusions_no_boundary"].sum(0) == eroded).all()
        assert len(scores["image_ids"]) == record["n_test"]
    path = results / record["job_id"] / RECORD
    without = {k: v for k, v in json.loads(path.read_text()).items() if k != "confusion"}
    grown = path.stat().st_size - len(json.dumps(without, indent=2, sort_keys=True)) - 1
    assert grown < 3 * 1024  # two 6 x 6 matrices


def test_every_convention_equals_a_separate_evaluation_and_scikit_learn(one_run):
    record, results, seen = one_run
    register_convention(IGNORING)  # one that ignores a class's pixels, too
    try:
        chosen = [n for n in CONVENTIONS.names() if CONVENTIONS.get(n).applies_to("potsdam")]
        assert {"isprs-6", "isprs-5", "isprs-5-noboundary", "glcnet", IGNORING.name} <= set(chosen)
        for name in chosen:
            check_convention(record, results, seen, name)
    finally:
        CONVENTIONS.unregister(IGNORING.name)
    # the run's own scores are those of the convention of its labels and classes
    (native,), _ = rescore_records([record], ["isprs-6"], results, image_level=True)
    check_equal_scores(native, record, "isprs-6")


def check_convention(record, results, seen, name: str) -> None:
    convention = CONVENTIONS.get(name)
    (rescored,), notes = rescore_records([record], [name], results, image_level=True)
    assert rescored["status"] == "ok" and not notes, (name, notes)
    predicted, labels = predictions_and_labels(seen, convention.labels or "full")
    want = separate_scores(predicted, labels, convention, list(record["class_names"]))
    check_equal_scores(rescored, want, name)
    names = list(record["class_names"])
    check_against_scikit_learn(rescored, predicted, want["labels_ignored"], convention, names)


def test_the_effect_of_the_convention_on_one_method(one_run, capsys):
    """The numbers the issue asks for: one method under isprs-6, isprs-5 and
    isprs-5-noboundary (printed with -s)."""
    record, results, _ = one_run
    names = ["isprs-6", "isprs-5", "isprs-5-noboundary"]
    rescored, _ = rescore_records([record], names, results)
    mious = {r["convention"]: 100 * r["miou"] for r in rescored}
    with capsys.disabled():
        print("\nrandom, potsdam 10%: " + ", ".join(f"{n} {v:.2f}" for n, v in mious.items()))
    assert len(set(mious.values())) == 3  # three ways of scoring, three numbers
