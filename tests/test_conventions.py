"""Scoring conventions: re-scoring stored matrices equals scoring the predictions that way
(to the last digit) and scikit-learn; records written before conventions say they cannot be
re-scored; tables put conventions side by side and name them; `bench list` shows them.
tests/datasets/test_rescoring.py does the same after a real fine-tuning (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, f1_score, jaccard_score

import bench.conventions
from bench.cli import main
from bench.config import ConfigError
from bench.conventions import (
    CONVENTIONS,
    NOT_RESCORABLE,
    Convention,
    default_convention,
    register_convention,
    rescore_records,
)
from bench.datasets.isprs import ISPRS_CLASSES
from bench.evaluation import kept_scores
from bench.finetune import keep_per_image_scores
from bench.metrics import (
    ConfusionMatrix,
    SegmentationScores,
    image_confusions,
    image_metrics,
    metrics_from_confusion,
)
from bench.report import render, results_table
from bench.store import RunStore

IGNORE = 255
NAMES = list(ISPRS_CLASSES)
# not registered by the harness: a convention that ignores a class's pixels
IGNORING = Convention(
    name="test-ignore-clutter",
    summary="clutter pixels not scored",
    source="this test",
    datasets=("potsdam",),
    labels="no_boundary",
    ignored=("clutter",),
)


@pytest.fixture
def ignoring():
    register_convention(IGNORING)
    yield IGNORING
    CONVENTIONS.unregister(IGNORING.name)


# ------------------------------------------------------------------ shared with test_rescoring
def separate_scores(predicted, labels, convention: Convention, names: list[str]) -> dict:
    """The scores of ``convention`` computed from ``predicted`` and the ``labels`` of its
    label variant: its ignored classes turned into the ignore index, one ConfusionMatrix
    over every pixel (not the per-image sums the record keeps), the per-image matrices,
    the means over its classes."""
    labels = labels.clone()
    for name in convention.ignored:
        labels[labels == names.index(name)] = IGNORE
    matrix = ConfusionMatrix(len(names), IGNORE)
    matrix.update(predicted, labels)
    averaged = counted_mask(convention, names)
    scores = metrics_from_confusion(matrix.matrix, averaged)
    scores.update(image_metrics(image_confusions(predicted, labels, len(names), IGNORE), averaged))
    if convention.averaging == "image":
        scores["miou"] = scores["image_miou"]
    for index in (names.index(n) for n in convention.ignored):
        scores["per_class_iou"][index] = scores["per_class_f1"][index] = math.nan
    return {**scores, "labels_ignored": labels}


def counted_mask(convention: Convention, names: list[str]) -> torch.Tensor:
    return torch.tensor([n not in (*convention.ignored, *convention.left_out) for n in names])


def same(a, b) -> bool:
    """Equal to the last digit (NaN equal to NaN)."""
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def check_equal_scores(rescored: dict, want: dict, context) -> None:
    keys = ("miou", "kappa", "oa", "mean_f1", "image_miou", "pixels", "per_class_iou",
            "per_class_f1", "per_class_image_iou")  # fmt: skip
    for key in keys:
        assert same(rescored[key], want[key]), (context, key, rescored[key], want[key])


def check_against_scikit_learn(scores, predicted, labels, convention, names) -> None:
    """OA, Kappa, mean F1 (and for dataset-level averaging mIoU) as scikit-learn computes
    them on the scored pixels, the means over the convention's classes present."""
    keep = (labels != IGNORE).numpy().reshape(-1)
    t, p = labels.numpy().reshape(-1)[keep], predicted.numpy().reshape(-1)[keep]
    assert scores["oa"] == pytest.approx((t == p).mean(), abs=1e-12)
    assert scores["kappa"] == pytest.approx(cohen_kappa_score(t, p), abs=1e-12)
    averaged = counted_mask(convention, names)
    counted = [c for c in sorted(set(t) | set(p)) if bool(averaged[c])]
    f1 = f1_score(t, p, labels=counted, average="macro")
    assert scores["mean_f1"] == pytest.approx(f1, abs=1e-12)
    if convention.averaging == "dataset":
        iou = jaccard_score(t, p, labels=counted, average="macro")
        assert scores["miou"] == pytest.approx(iou, abs=1e-12)


# ------------------------------------------------------------------ records without training
def fake_predictions(seed: int, n: int = 12, size: int = 16):
    """Predictions and two label variants (the second with class boundaries ignored) of
    ``n`` images, right about 60% of the time; class 4 is never predicted."""
    rng = np.random.default_rng(seed)
    full = rng.integers(0, 6, (n, size, size))
    full = np.kron(full[:, ::4, ::4], np.ones((1, 4, 4), dtype=np.int64)).astype(np.uint8)
    predicted = np.where(rng.random(full.shape) < 0.6, full, rng.integers(0, 6, full.shape))
    predicted[predicted == 4] = 3
    full[:, 0, :3] = IGNORE
    eroded = full.copy()
    eroded[:, :, ::4] = IGNORE  # "boundaries"
    return torch.from_numpy(predicted), {"full": full, "no_boundary": eroded}


def write_run(results, method: str, seed: int, variants=("full", "no_boundary")) -> dict:
    """A finished fine-tuning record and its scores.npz, as ``run_finetuning`` keeps them."""
    predicted, labels = fake_predictions(seed + sum(map(ord, method)))
    scores = {v: SegmentationScores(6) for v in variants}
    for variant, score in scores.items():
        score.add(image_confusions(predicted, torch.from_numpy(labels[variant]), 6, IGNORE))
    kept = kept_scores(scores, "full", [f"img{i}" for i in range(len(predicted))])
    job_id = f"finetune-{method}-potsdam-f0.1-s{seed}-test"
    (results / job_id).mkdir(parents=True)
    keep_per_image_scores(results / job_id, kept)
    record = {"status": "ok", "kind": "finetune", "job_id": job_id, "method": method,
              "dataset": "potsdam", "fraction": 0.1, "seed": seed, "preset": "quick",
              "class_names": NAMES, **kept}  # fmt: skip
    RunStore(results).write_record(job_id, record)
    return record


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    for method in ("random", "simclr"):
        for seed in (0, 1, 2):
            write_run(folder, method, seed)
    return folder


def test_each_convention_equals_scoring_the_predictions_that_way(tmp_path, ignoring):
    record = write_run(tmp_path, "random", 0)
    predicted, labels = fake_predictions(sum(map(ord, "random")))
    potsdam = [c for c in map(CONVENTIONS.get, CONVENTIONS.names()) if c.applies_to("potsdam")]
    assert {c.averaging for c in potsdam} == {"dataset", "image"}
    assert any(c.left_out for c in potsdam) and any(c.ignored for c in potsdam)
    for convention in potsdam:
        (rescored,), notes = rescore_records([record], [convention.name], tmp_path, True)
        assert rescored["status"] == "ok" and not notes
        variant = torch.from_numpy(labels[convention.labels or "full"])
        want = separate_scores(predicted, variant, convention, NAMES)
        check_equal_scores(rescored, want, convention.name)
        check_against_scikit_learn(rescored, predicted, want["labels_ignored"], convention, NAMES)


def test_the_run_keeps_its_own_scores_under_its_own_convention(tmp_path):
    record = write_run(tmp_path, "random", 0)
    for name in ("isprs-6", "all"):
        (rescored,), _ = rescore_records([record], [name], tmp_path, image_level=True)
        check_equal_scores(rescored, record, name)
    (glcnet,), _ = rescore_records([record], ["glcnet"], tmp_path)
    assert glcnet["miou"] == record["image_miou"] and glcnet["kappa"] == record["kappa"]


def test_ignored_and_left_out_classes_differ_as_declared(tmp_path, ignoring):
    record = write_run(tmp_path, "random", 0)
    scored = {
        name: rescore_records([record], [name], tmp_path)[0][0]
        for name in ("isprs-6-noboundary", "isprs-5-noboundary", IGNORING.name)
    }
    six, five, ignoring_clutter = scored.values()
    # left out of the mean: the pixels and the other classes' IoU stay
    assert five["oa"] == six["oa"] and five["per_class_iou"] == six["per_class_iou"]
    assert five["miou"] == pytest.approx(np.nanmean(six["per_class_iou"][:5]), abs=1e-15)
    # ignored: its pixels are not scored
    assert ignoring_clutter["pixels"] < six["pixels"]
    assert math.isnan(ignoring_clutter["per_class_iou"][5])


def test_records_without_matrices_say_they_cannot_be_rescored(results, tmp_path):
    store = RunStore(results)
    for record in store.records():
        if record["method"] == "random":  # as written before this change
            old = {k: v for k, v in record.items() if k not in ("confusion", "label_variant")}
            store.write_record(old["job_id"], old)
    (rescored,), notes = rescore_records([old], ["isprs-5"], results)
    assert rescored["status"] == NOT_RESCORABLE and rescored["miou"] is None
    assert "written before records kept their confusion matrices" in notes[0]
    table, _ = results_table(results, conventions=["isprs-5"])
    text = render(table)
    assert "not re-scorable" in text and "cannot be re-scored under isprs-5" in text
    # a convention on labels the run did not score, and per-image scores that are gone
    only_full = write_run(tmp_path / "other", "random", 0, variants=("full",))
    (rescored,), notes = rescore_records([only_full], ["isprs-5-noboundary"], tmp_path / "other")
    assert rescored["status"] == NOT_RESCORABLE and "scored no no_boundary labels" in notes[0]
    (tmp_path / "other" / only_full["job_id"] / "scores.npz").unlink()
    (rescored,), notes = rescore_records([only_full], ["glcnet"], tmp_path / "other")
    assert rescored["miou"] == only_full["image_miou"] and not notes  # the record suffices
    per_image_ignoring = Convention("x", "x", "x", ignored=("clutter",), averaging="image")
    rescored = bench.conventions.rescored(only_full, per_image_ignoring, None)
    assert "per-image scores (scores.npz" in rescored["rescore_problem"]


def test_table_under_several_conventions_side_by_side(results, capsys):
    table, _ = results_table(results, ("miou",), conventions=["isprs-6", "isprs-5-noboundary"])
    assert table.datasets == ("potsdam [isprs-5-noboundary]", "potsdam [isprs-6]")
    assert table.methods == ("random", "simclr")
    captions = " ".join(table.captions)
    assert "scored under convention isprs-6" in captions and "UNetFormer" in captions
    records = RunStore(results).records()
    simclr = [r for r in records if r["method"] == "simclr"]
    six = rescore_records(simclr, ["isprs-6"], results)[0]
    cell = table.cell("simclr", table.columns[1])
    assert cell.mean == pytest.approx(np.mean([100 * r["miou"] for r in six]), abs=1e-12)
    code = main(["table", "--results", str(results), "--convention", "isprs-6,isprs-5"])
    out = capsys.readouterr().out
    assert code == 0 and "potsdam [isprs-5]" in out and "convention isprs-5:" in out
    assert main(["table", "--results", str(results), "--convention", "isprs-7"]) == 2
    assert "unknown convention 'isprs-7'" in capsys.readouterr().err
    assert main(["table", "--results", str(results), "--convention", "loveda"]) == 2
    assert "convention loveda is for loveda_urban" in capsys.readouterr().err
    code = main(["table", "--results", str(results), "--per-class", "--convention", "isprs-5"])
    assert code == 0 and "clutter" in capsys.readouterr().out


def test_csv_and_report_rescore(results, tmp_path, capsys):
    out = tmp_path / "t.csv"
    main(["table", "--results", str(results), "--output", str(out), "--convention", "glcnet"])
    rows = [line.split(",") for line in out.read_text().splitlines()]
    glcnet = rescore_records(RunStore(results).records(), ["glcnet"], results)[0]
    want = np.mean([100 * r["miou"] for r in glcnet if r["method"] == "random"])
    random_miou = next(r for r in rows if r[0] == "random" and r[3] == "miou")
    assert float(random_miou[7]) == pytest.approx(want, abs=1e-4)
    page = tmp_path / "report.html"
    args = ["report", "--results", str(results), "--output", str(page)]
    assert main([*args, "--convention", "isprs-5,isprs-6"]) == 0
    assert "potsdam [isprs-5]" in page.read_text()


def test_conventions_are_listed_and_a_plugin_can_declare_its_own(capsys):
    assert default_convention("potsdam").name == "isprs-6"
    assert default_convention("loveda_rural").name == "loveda"
    assert default_convention("synthetic").name == "all"
    mine = Convention("mine", "scene classes", "a plugin", datasets=("synthetic",))
    register_convention(mine)
    try:
        assert default_convention("synthetic") is mine
        assert main(["list"]) == 0
        out = capsys.readouterr().out
        assert "scoring conventions" in out and "isprs-5-noboundary" in out
        assert "for potsdam*, vaihingen*" in out and "mine" in out and "synthetic*" in out
    finally:
        CONVENTIONS.unregister("mine")
    with pytest.raises(ConfigError, match="convention glcnet is given twice"):
        rescore_records([], ["glcnet", "glcnet"], ".")


def test_record_grows_by_the_dataset_level_matrices_only(results):
    record = RunStore(results).records()[0]
    matrices = json.dumps(record["confusion"], indent=2)
    assert len(matrices) < 2 * 1024 and "per_image_confusions" not in record
