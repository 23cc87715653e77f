"""Scoring a fine-tuned model on the test split: patch by patch, or whole tiles by sliding
windows (``finetune.evaluation``).

Whole-tile evaluation predicts ``window x window`` windows every ``stride`` pixels, the last
row and column of windows flush with the tile's far edges (so every pixel is predicted from
real pixels, no padding), and averages the logits where windows overlap before the argmax.
GLCNet's ``slide_crop``/``vote_combine`` (utils/data_for_seg.py, dl_tools/basictools/
dldata.py) sums the overlapping logits, which has the same argmax, but pads the far edges
with zeros instead. Memory stays bounded: windows are predicted one row of windows at a time
and only the ``window`` rows of logits those windows touch are held (for a 6000 px wide tile
with 6 classes: 6 x 256 x 6000 float32, 37 MB), so a 6000 x 6000 Potsdam tile never needs
its whole logit map.

Every label variant of the test split (:meth:`SegmentationDataset.test_label_variants`;
ISPRS: full and eroded labels) is scored in the same pass over the predictions. The scores
say which variant the headline numbers are of (``label_variant``) and keep, for each
variant, the dataset-level confusion matrix (``confusion``, in the record) and the per-image
ones (:data:`PER_IMAGE`, written beside the record), so :mod:`bench.conventions` can score
the run again under any convention without predicting again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import torch

from bench.datasets import PatchSet
from bench.datasets.base import DatasetError, TileLayout
from bench.datasets.prepared import patch_origins
from bench.engine import autocast_for
from bench.metrics import SegmentationScores, image_confusions

log = logging.getLogger(__name__)

# key of the scores holding each label variant's [N, K, K] per-image confusion matrices
# (numpy int64): too large for the record, written to scores.npz beside it
PER_IMAGE = "per_image_confusions"
IMAGE_IDS = "image_ids"


def kept_scores(variants: dict[str, SegmentationScores], own: str, ids: list[str]) -> dict:
    """The scores of label variant ``own`` and what re-scoring needs of every variant: the
    dataset-level matrix, each class's per-image IoU (enough for conventions that ignore no
    class) and the per-image matrices (for those that do)."""
    computed = {name: s.compute() for name, s in variants.items()}
    return {
        **computed[own],
        "label_variant": own,
        "confusion": {name: s.matrix.cpu().tolist() for name, s in variants.items()},
        "image_iou": {name: c["per_class_image_iou"] for name, c in computed.items()},
        PER_IMAGE: {name: s.per_image().numpy() for name, s in variants.items()},
        IMAGE_IDS: ids,
    }


def predict(model, images: torch.Tensor, normalize, device, amp: bool) -> torch.Tensor:
    """float32 logits ``[N, K, H, W]`` of uint8 ``images`` (moved to ``device``)."""
    images = images.to(device, non_blocking=True)
    with autocast_for(device, amp):
        return model(normalize(images)).float()


@torch.no_grad()
def evaluate_patches(
    model, patches: PatchSet, normalize, num_classes, ignore_index, batch_size, device, amp: bool,
    others: dict[str, PatchSet] | None = None, label_variant: str = "full",
) -> dict:  # fmt: skip
    """Scores over the test patches, each patch one image of the per-image IoU; ``patches``
    carry the labels ``label_variant``, ``others`` the same patches under other variants."""
    model.eval()
    others = others or {}
    scores = {v: SegmentationScores(num_classes, device) for v in (label_variant, *others)}
    for start in range(0, len(patches), batch_size):
        images, masks = patches[start : start + batch_size]
        predictions = predict(model, images, normalize, device, amp).argmax(dim=1)
        labels = {label_variant: masks}
        for name, variant in others.items():
            labels[name] = torch.from_numpy(variant.read_masks(slice(start, start + batch_size)))
        for name, truth in labels.items():
            confusions = image_confusions(predictions, truth.to(device), num_classes, ignore_index)
            scores[name].add(confusions)
    return {**kept_scores(scores, label_variant, list(patches.ids)), "evaluated_on": "patches"}


def check_window(layouts: list[TileLayout], window: int, dataset: str) -> None:
    """A sliding window must fit in every tile."""
    small = [t for t in layouts if min(t.height, t.width) < window]
    if small:
        tile = min(small, key=lambda t: min(t.height, t.width))
        raise DatasetError(
            f"finetune.eval_window={window} is larger than test tile {tile.tile_id} of "
            f"{dataset} ({tile.height}x{tile.width} px); use a window of at most "
            f"{min(tile.height, tile.width)} px"
        )


@torch.no_grad()
def tile_logit_rows(
    model, image: torch.Tensor, normalize, window: int, stride: int, batch_size: int, device, amp
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(y0, y1, logits [K, y1 - y0, W])`` over the tile ``image`` ``[C, H, W]`` from top to
    bottom: the averaged logits of the rows no later window will touch."""
    height, width = image.shape[1:]
    ys, xs = patch_origins(height, window, stride), patch_origins(width, window, stride)
    total = count = None
    for i, y in enumerate(ys):
        crops = torch.stack([image[:, y : y + window, x : x + window] for x in xs])
        for start in range(0, len(xs), batch_size):
            logits = predict(model, crops[start : start + batch_size], normalize, device, amp)
            if total is None:
                total = logits.new_zeros((logits.shape[1], window, width))
                count = logits.new_zeros((1, window, width))
            for x, window_logits in zip(xs[start:], logits, strict=False):
                total[:, :, x : x + window] += window_logits
                count[:, :, x : x + window] += 1
        done = (ys[i + 1] if i + 1 < len(ys) else height) - y
        yield y, y + done, total[:, :done] / count[:, :done]
        total = torch.cat([total[:, done:], total.new_zeros((total.shape[0], done, width))], 1)
        count = torch.cat([count[:, done:], count.new_zeros((1, done, width))], 1)


@torch.no_grad()
def evaluate_tiles(
    model, patches: PatchSet, layouts: list[TileLayout], normalize, num_classes, ignore_index,
    window: int, stride: int, batch_size: int, device, amp: bool,
    others: dict[str, PatchSet] | None = None, label_variant: str = "full",
) -> dict:  # fmt: skip
    """Scores over whole test tiles (sliding windows), each tile one image of the
    per-image IoU; label variants as in :func:`evaluate_patches`."""
    model.eval()
    others = others or {}
    scores = {v: SegmentationScores(num_classes, device) for v in (label_variant, *others)}
    for number, layout in enumerate(layouts, start=1):
        started = time.perf_counter()
        image, mask = layout.assemble(patches)
        masks = {label_variant: mask}
        masks.update({name: layout.assemble_mask(variant) for name, variant in others.items()})
        k = num_classes
        confusions = {name: torch.zeros(k, k, dtype=torch.int64, device=device) for name in masks}
        rows = tile_logit_rows(model, image, normalize, window, stride, batch_size, device, amp)
        for y0, y1, logits in rows:
            predicted = logits.argmax(0)[None]
            for name, labels in masks.items():
                truth = labels[y0:y1].to(device)[None]
                confusions[name] += image_confusions(predicted, truth, k, ignore_index)[0]
        for name, confusion in confusions.items():
            scores[name].add(confusion[None])
        log.info(
            "  evaluated tile %d/%d (%s, %dx%d px) in %.1fs",
            number, len(layouts), layout.tile_id, layout.height, layout.width,
            time.perf_counter() - started,
        )  # fmt: skip
    return {
        **kept_scores(scores, label_variant, [layout.tile_id for layout in layouts]),
        "evaluated_on": "tiles",
        "eval_window": window,
        "eval_stride": stride,
    }
