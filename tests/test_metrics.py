import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, jaccard_score

from bench.metrics import ConfusionMatrix, metrics_from_confusion


def _scores(pred, true, k=6, ignore=255):
    cm = ConfusionMatrix(k, ignore)
    # two updates: the matrix accumulates over the dataset
    half = len(pred) // 2
    cm.update(torch.from_numpy(pred[:half]), torch.from_numpy(true[:half]))
    cm.update(torch.from_numpy(pred[half:]), torch.from_numpy(true[half:]))
    return cm


@pytest.mark.parametrize("seed", range(4))
def test_against_scikit_learn_random_labels(seed):
    rng = np.random.default_rng(seed)
    k = 6
    true = rng.integers(0, k, size=5000)
    pred = np.where(rng.random(5000) < 0.6, true, rng.integers(0, k, size=5000))
    # class 5 absent from predictions, class 4 absent from targets, class 3 from both
    pred[pred == 5] = 0
    true[true == 4] = 1
    pred[pred == 3] = 2
    true[true == 3] = 2
    true[rng.random(5000) < 0.1] = 255  # ignored pixels
    cm = _scores(pred, true, k)
    keep = true != 255
    t, p = true[keep], pred[keep]
    assert cm.matrix.numpy().tolist() == confusion_matrix(t, p, labels=range(k)).tolist()
    got = cm.compute()
    assert got["miou"] == pytest.approx(jaccard_score(t, p, average="macro"), abs=1e-12)
    assert got["kappa"] == pytest.approx(cohen_kappa_score(t, p), abs=1e-12)
    assert got["oa"] == pytest.approx((t == p).mean(), abs=1e-12)
    assert got["mean_f1"] == pytest.approx(f1_score(t, p, average="macro"), abs=1e-12)
    assert np.isnan(got["per_class_iou"][3])
    assert got["per_class_iou"][5] == 0.0 and got["per_class_iou"][4] == 0.0
    assert got["pixels"] == keep.sum()


def test_perfect_prediction_and_dtype():
    true = torch.randint(0, 4, (2, 8, 8))
    cm = ConfusionMatrix(4)
    cm.update(true.clone(), true)
    assert cm.matrix.dtype == torch.int64
    scores = cm.compute()
    assert scores["miou"] == 1.0 and scores["oa"] == 1.0 and scores["kappa"] == 1.0


def test_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="target labels"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="empty"):
        metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("ignore_index", [255, 200, None, 0])
def test_uint8_fast_path_equals_the_general_path_and_scikit_learn(ignore_index):
    """8-bit masks take a one-pass path (bins over every target value); it must count the
    same as int64 targets and as scikit-learn, for any ignore value (or none)."""
    rng = np.random.default_rng(7)
    k = 5
    true = rng.integers(0, k, size=20000).astype(np.uint8)
    pred = rng.integers(0, k, size=20000)
    if ignore_index is not None:
        true[rng.random(20000) < 0.1] = ignore_index
    fast, general = ConfusionMatrix(k, ignore_index), ConfusionMatrix(k, ignore_index)
    fast.update(torch.from_numpy(pred), torch.from_numpy(true))
    general.update(torch.from_numpy(pred), torch.from_numpy(true.astype(np.int64)))
    keep = true != ignore_index if ignore_index is not None else np.ones_like(true, bool)
    expected = confusion_matrix(true[keep], pred[keep], labels=range(k))
    assert fast.matrix.numpy().tolist() == expected.tolist()
    assert torch.equal(fast.matrix, general.matrix)


def test_uint8_targets_outside_the_classes_are_rejected():
    cm = ConfusionMatrix(3)
    for bad in (3, 254):
        with pytest.raises(ValueError, match="target labels"):
            cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, bad], dtype=torch.uint8))
    with pytest.raises(ValueError, match="predicted labels"):
        cm.update(torch.tensor([0, 3]), torch.zeros(2, dtype=torch.uint8))
    assert int(cm.matrix.sum()) == 0  # nothing was counted from rejected batches
    cm.update(torch.tensor([1, 2]), torch.tensor([1, 255], dtype=torch.uint8))
    assert int(cm.matrix.sum()) == 1 and int(cm.matrix[1, 1]) == 1
