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
