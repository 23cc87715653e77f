"""Segmentation metrics from one dataset-level int64 confusion matrix.

Rows are targets, columns predictions. Pixels whose target is the ignore index are left out.
mIoU and mean F1 are macro means over the classes present in the targets or the
predictions (a class absent from both has no defined IoU and is skipped, as scikit-learn's
``jaccard_score(average="macro")`` does without ``labels``). Kappa is Cohen's kappa of the
pixel labels, OA the pixel accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

METRIC_NOTE = (
    "dataset-level confusion matrix over all test pixels; ignore index excluded; "
    "mIoU and mean F1 are macro means over classes present in targets or predictions; "
    "image_miou is GLCNet's per-image IoU averaged over the scored images"
)


class ConfusionMatrix:
    """Accumulates an int64 ``[K, K]`` confusion matrix on the predictions' device."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device=None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Add integer ``predictions`` and ``targets`` of the same shape."""
        if predictions.shape != targets.shape:
            raise ValueError(
                f"shape mismatch: {tuple(predictions.shape)} vs {tuple(targets.shape)}"
            )
        k = self.num_classes
        pred = predictions.reshape(-1).to(self.matrix.device)
        true = targets.reshape(-1).to(self.matrix.device)
        if true.is_floating_point() or pred.is_floating_point():
            raise ValueError("predictions and targets must be integer class indices")
        if pred.numel():
            low, high = torch.aminmax(pred)
            if int(low) < 0 or int(high) >= k:
                raise ValueError(f"predicted labels must be in 0..{k - 1}")
        ignore = self.ignore_index
        if true.dtype == torch.uint8 and (ignore is None or k <= ignore <= 255):
            counts = self._counts_of_uint8_targets(true, pred)
        else:
            counts = self._counts_any_targets(true, pred)
        self.matrix += counts.view(k, k)

    def _counts_of_uint8_targets(self, true: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """One pass, nothing compacted (8-bit masks, the harness's case): bin ``t * k + p``
        over every target value 0..255; with predictions checked to be in 0..k-1 each bin
        is one (target, prediction) pair, so bins past ``k * k`` hold ignored pixels (the
        ignore value's bins) or invalid targets (any other bin: an error)."""
        k = self.num_classes
        counts = torch.bincount(true.to(torch.int32) * k + pred.to(torch.int32), minlength=k * k)
        beyond = counts[k * k :]
        if self.ignore_index is not None:
            first = (self.ignore_index - k) * k
            beyond = torch.cat([beyond[:first], beyond[first + k :]])
        if bool(beyond.any()):
            raise ValueError(f"target labels must be in 0..{k - 1} or the ignore index")
        return counts[: k * k]

    def _counts_any_targets(self, true: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        k = self.num_classes
        ignored = true == self.ignore_index if self.ignore_index is not None else None
        bad_true = true >= k if ignored is None else (true >= k) & ~ignored
        if bool(bad_true.any()) or (true.numel() and int(true.min()) < 0):
            raise ValueError(f"target labels must be in 0..{k - 1} or the ignore index")
        index = true.to(torch.int64) * k + pred.to(torch.int64)
        if ignored is not None:
            index.masked_fill_(ignored, k * k)  # an extra bin instead of compacting
        return torch.bincount(index, minlength=k * k + 1)[: k * k]

    def compute(self) -> dict:
        return metrics_from_confusion(self.matrix)


def image_confusions(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """One int64 ``[K, K]`` confusion matrix per image of ``[N, H, W]`` class maps (rows
    targets, columns predictions; ignored target pixels left out)."""
    if predictions.shape != targets.shape or predictions.ndim != 3:
        raise ValueError(
            f"expected two [N, H, W] maps, got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}"
        )
    k, n = num_classes, predictions.shape[0]
    pred = predictions.reshape(n, -1).long()
    true = targets.reshape(n, -1).long().to(pred.device)
    keep = true != ignore_index if ignore_index is not None else torch.ones_like(true, dtype=bool)
    if bool(((true[keep] < 0) | (true[keep] >= k)).any()):
        raise ValueError(f"target labels must be in 0..{k - 1} or the ignore index")
    if bool(((pred < 0) | (pred >= k)).any()):
        raise ValueError(f"predicted labels must be in 0..{k - 1}")
    image = torch.arange(n, device=pred.device).view(n, 1) * (k * k)
    index = (image + true * k + pred)[keep]
    return torch.bincount(index, minlength=n * k * k).view(n, k, k)


class SegmentationScores:
    """The dataset-level confusion matrix (:func:`metrics_from_confusion`) and GLCNet's
    per-image IoU (:func:`image_metrics`), from one confusion matrix per scored image (a
    test patch, or a whole tile). The per-image matrices are kept (:meth:`per_image`), so a
    record can be scored again under another convention without predicting again
    (:mod:`bench.conventions`)."""

    def __init__(self, num_classes: int, device=None) -> None:
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._images: list[torch.Tensor] = []

    @property
    def images(self) -> int:
        return sum(len(part) for part in self._images)

    def add(self, confusions: torch.Tensor) -> None:
        """Add ``[N, K, K]`` confusion matrices, one per image."""
        confusions = confusions.to(self.matrix.device)
        self.matrix += confusions.sum(dim=0)
        self._images.append(confusions.cpu())

    def per_image(self) -> torch.Tensor:
        """The int64 ``[N, K, K]`` confusion matrices of the images scored so far."""
        k = self.matrix.shape[0]
        return torch.cat(self._images) if self._images else torch.zeros(0, k, k, dtype=torch.int64)

    def compute(self) -> dict:
        return {**metrics_from_confusion(self.matrix), **image_metrics(self.per_image())}


def image_metrics(confusions, averaged=None) -> dict:
    """GLCNet's per-image IoU of ``[N, K, K]`` per-image confusion matrices (a tensor or an
    array), averaged over the classes in the bool mask ``averaged`` (default: all).

    GLCNet's "mIoU" (release ``main_ss.py`` ``val``, ``dl_tools/basictools/dltrain.py``
    ``compute_class_iou``): per image and class, intersection / (union + 1e-8), so a class
    absent from both the image and its prediction scores 0; averaged over images, then over
    classes. Reported as ``image_miou`` beside the dataset-level ``miou``, never instead.
    The release maps unlabelled pixels to class 0; here they are left out, as in ``miou``.
    Computed with numpy, single-threaded: the same numbers whoever calls it, and no thread
    start-up for every record a table re-scores (:mod:`bench.conventions`).
    """
    if isinstance(confusions, torch.Tensor):
        confusions = confusions.detach().cpu().numpy()
    counts = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(counts, axis1=1, axis2=2)
    union = counts.sum(axis=1) + counts.sum(axis=2) - tp
    per_class = (tp / (union + 1e-8)).sum(axis=0) / max(1, counts.shape[0])
    return image_summary(per_class, int(counts.shape[0]), averaged)


def image_summary(per_class, images: int, averaged=None) -> dict:
    """The per-image scores from each class's per-image IoU averaged over the ``images``
    (``per_class``): their mean over the classes in ``averaged`` (default: all)."""
    per_class = np.asarray(per_class, dtype=np.float64)
    chosen = np.ones(len(per_class), dtype=bool) if averaged is None else np.asarray(averaged)
    return {
        "image_miou": float(per_class[chosen].mean()),
        "per_class_image_iou": [float(v) for v in per_class],
        "images_scored": images,
    }


def without_targets(confusions, classes: list[int]):
    """``confusions`` (``[..., K, K]``, rows targets; a tensor or an array) with the pixels
    whose target is one of ``classes`` left out, as if those pixels carried the ignore
    index; predictions of those classes elsewhere still count as errors."""
    if not classes:
        return confusions
    kept = confusions.clone() if isinstance(confusions, torch.Tensor) else confusions.copy()
    kept[..., classes, :] = 0
    return kept


def metrics_from_confusion(matrix: torch.Tensor, averaged: torch.Tensor | None = None) -> dict:
    """mIoU, Kappa, OA, mean F1 and per-class IoU/F1 (NaN for classes with no support).

    ``averaged`` (a bool mask over the classes, default all) chooses the classes of the
    mIoU and mean F1 means, each over those of them present in targets or predictions; OA
    and Kappa count every pixel of the matrix (bench.conventions leaves classes out of the
    means, or out of the pixels with :func:`without_targets`)."""
    cm = matrix.detach().to("cpu", torch.float64)
    total = cm.sum()
    tp = cm.diag()
    fp = cm.sum(dim=0) - tp
    fn = cm.sum(dim=1) - tp
    union = tp + fp + fn
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    f1 = torch.where(
        present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.full_like(tp, math.nan)
    )
    if total == 0:
        raise ValueError("the confusion matrix is empty: no labelled pixels were evaluated")
    oa = tp.sum() / total
    expected = (cm.sum(dim=0) * cm.sum(dim=1)).sum() / total**2
    kappa = (oa - expected) / (1 - expected) if expected < 1 else torch.tensor(math.nan)
    mean_over = present if averaged is None else present & averaged
    return {
        "miou": float(iou[mean_over].mean()),
        "kappa": float(kappa),
        "oa": float(oa),
        "mean_f1": float(f1[mean_over].mean()),
        "per_class_iou": [float(v) for v in iou],
        "per_class_f1": [float(v) for v in f1],
        "pixels": int(total),
    }
