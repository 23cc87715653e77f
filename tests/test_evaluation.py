"""Scoring: sliding-window whole-tile evaluation against a hand computation, its equality
with patch evaluation when window = stride = patch, GLCNet's per-image IoU, whole tiles
assembled from prepared patches, and tile-stratified label lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.datasets.base import PatchSet, TileLayout
from bench.datasets.prepared import cut_patches, patch_origins
from bench.datasets.subsets import labelled_indices_by, stratified_order, subset_size
from bench.evaluation import IMAGE_IDS, PER_IMAGE, evaluate_patches, evaluate_tiles, tile_logit_rows
from bench.metrics import SegmentationScores, image_confusions

K = 4
CPU = torch.device("cpu")


class PositionNet(nn.Module):
    """Logits that depend on the content and on the position inside the window (zero
    padding at the borders), so overlapping windows predict a pixel differently."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 5, padding=2)

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1])
        return self.conv(x) + ramp.view(1, 1, 1, -1) * torch.arange(K).view(1, K, 1, 1)


def identity_normalize(images):
    return images.float() / 255.0


def tile_as_patches(image: np.ndarray, mask: np.ndarray, patch: int):
    images, masks, origins = cut_patches(image, mask, patch, patch)
    ids = [f"t_y{y:05d}_x{x:05d}" for y, x in origins]
    patches = PatchSet(images, masks, ids)
    layout = TileLayout("t", np.arange(len(ids)), np.array(origins), *mask.shape, patch)
    return patches, layout


def random_tile(height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    mask = rng.integers(0, K, (height, width), dtype=np.uint8)
    mask[rng.random((height, width)) < 0.1] = 255  # unlabelled pixels
    return image, mask


@torch.no_grad()
def hand_averaged_logits(model, image: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """The plain way: every window's logits added into a whole-tile array, divided by how
    many windows cover each pixel."""
    _, height, width = image.shape
    total = torch.zeros(K, height, width)
    count = torch.zeros(height, width)
    for y in patch_origins(height, window, stride):
        for x in patch_origins(width, window, stride):
            crop = image[None, :, y : y + window, x : x + window]
            total[:, y : y + window, x : x + window] += model(identity_normalize(crop))[0]
            count[y : y + window, x : x + window] += 1
    assert bool((count > 0).all())
    return total / count


@pytest.mark.parametrize(("window", "stride"), [(16, 6), (16, 16), (12, 5)])
def test_sliding_window_equals_a_hand_computation(window, stride):
    image, mask = random_tile(40, 53)
    model = PositionNet().eval()
    tile = torch.from_numpy(image)
    expected = hand_averaged_logits(model, tile, window, stride)
    rows = list(tile_logit_rows(model, tile, identity_normalize, window, stride, 3, CPU, False))
    assert rows[0][0] == 0 and rows[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))  # contiguous
    got = torch.cat([logits for _, _, logits in rows], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)

    patches, layout = tile_as_patches(image, mask, 8)
    scores = evaluate_tiles(
        model, patches, [layout], identity_normalize, K, 255, window, stride, 4, CPU, False
    )
    truth = torch.from_numpy(mask)
    reference = SegmentationScores(K)
    reference.add(image_confusions(expected.argmax(0)[None], truth[None], K, 255))
    want = reference.compute()
    assert scores["miou"] == pytest.approx(want["miou"], abs=1e-12)
    assert scores["pixels"] == int((truth != 255).sum())  # each pixel once
    assert scores["images_scored"] == 1 and scores["evaluated_on"] == "tiles"


def test_whole_tile_evaluation_equals_patch_evaluation_when_window_is_the_patch():
    from bench.models import build_segmentation_model

    image, mask = random_tile(64, 96, seed=1)
    patches, layout = tile_as_patches(image, mask, 32)
    torch.manual_seed(0)
    model = build_segmentation_model("resnet18", 3, K).eval()
    by_patch = evaluate_patches(model, patches, identity_normalize, K, 255, 4, CPU, False)
    by_tile = evaluate_tiles(
        model, patches, [layout], identity_normalize, K, 255, 32, 32, 4, CPU, False
    )
    for key in ("miou", "kappa", "oa", "mean_f1", "pixels"):
        assert by_tile[key] == pytest.approx(by_patch[key], abs=1e-12)
    assert by_patch["images_scored"] == 6 and by_tile["images_scored"] == 1


def test_per_image_iou_is_glcnets_formula():
    """Per image: I / (U + 1e-8) per class, 0 for a class absent from image and prediction
    (GLCNet dltrain.py compute_class_iou), summed over images, divided by their number."""
    pred = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 0]]])
    true = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [255, 2]]], dtype=torch.uint8)
    scores = SegmentationScores(3)
    scores.add(image_confusions(pred, true, 3, 255))
    got = scores.compute()
    image1 = [1 / 2, 2 / 3, 0.0]  # class 2 absent from both: 0
    image2 = [0.0, 0.0, 2 / 3]  # class 0 predicted, never true: 0/1; class 1 absent: 0
    expected = [(a + b) / 2 for a, b in zip(image1, image2, strict=True)]
    assert got["per_class_image_iou"] == pytest.approx(expected, abs=1e-7)
    assert got["image_miou"] == pytest.approx(sum(expected) / 3, abs=1e-7)
    assert got["pixels"] == 7  # the ignored pixel left out
    # the dataset-level mIoU is computed as before, from the summed confusion matrix
    assert got["miou"] == pytest.approx(np.mean([1 / 3, 2 / 3, 2 / 3]))


def test_stratified_lists_are_nested_seeded_and_take_from_every_tile_in_proportion():
    sizes = {"a": 40, "b": 40, "c": 10, "d": 7, "e": 3}
    tiles = [t for t, n in sizes.items() for _ in range(n)]
    rng = np.random.default_rng(5)
    tiles = [tiles[i] for i in rng.permutation(len(tiles))]  # patches in any order
    n = len(tiles)
    lists = {f: labelled_indices_by("stratified", n, f, 0, tiles) for f in (0.05, 0.1, 0.5, 1)}
    assert lists[0.05] == lists[0.1][: len(lists[0.05])]  # nested
    assert lists[0.1] == lists[0.5][: len(lists[0.1])]
    assert sorted(lists[1]) == list(range(n))
    assert lists[0.1] == labelled_indices_by("stratified", n, 0.1, 0, tiles)  # seeded
    assert lists[0.1] != labelled_indices_by("stratified", n, 0.1, 1, tiles)
    assert len(lists[0.05]) == subset_size(n, 0.05) == 5
    assert {tiles[i] for i in lists[0.05]} == set(sizes)  # 5 patches, 5 tiles: one each
    for fraction in (0.1, 0.5):
        chosen = [tiles[i] for i in lists[fraction]]
        for tile, size in sizes.items():
            share = len(chosen) * size / n
            assert abs(chosen.count(tile) - share) <= 1.5, (fraction, tile)
    order = stratified_order(tiles, 3)
    assert sorted({tiles[i] for i in order[:5]}) == sorted(sizes)  # every tile first


def test_stratified_lists_need_tiles():
    with pytest.raises(ValueError, match="need the tile of every training patch"):
        labelled_indices_by("stratified", 10, 0.5, 0, None)


@pytest.mark.parametrize("by", ["patches", "tiles"])
def test_other_label_variants_are_scored_in_the_same_pass(by):
    """Scores of a second label variant, from the same predictions, equal an evaluation
    with that variant as the only labels; the record's parts are kept for each."""
    image, mask = random_tile(48, 64, seed=2)
    eroded = mask.copy()
    eroded[:, ::3] = 255
    patches, layout = tile_as_patches(image, mask, 16)
    variant = patches.with_masks(tile_as_patches(image, eroded, 16)[0].read_masks(slice(None)))
    model = PositionNet().eval()

    def evaluate(primary, others, name):
        common = (identity_normalize, K, 255)
        if by == "patches":
            return evaluate_patches(model, primary, *common, 5, CPU, False, others, name)
        return evaluate_tiles(model, primary, [layout], *common, 16, 8, 5, CPU, False, others, name)

    both = evaluate(patches, {"eroded": variant}, "full")
    alone = evaluate(variant, None, "eroded")
    full_alone = evaluate(patches, None, "full")
    assert both["label_variant"] == "full" and set(both["confusion"]) == {"full", "eroded"}
    assert both["confusion"]["eroded"] == alone["confusion"]["eroded"]
    assert np.array_equal(both[PER_IMAGE]["eroded"], alone[PER_IMAGE]["eroded"])
    assert both["miou"] == full_alone["miou"] and both["pixels"] > alone["pixels"]
    images = 1 if by == "tiles" else len(patches)
    assert both[PER_IMAGE]["full"].shape == (images, K, K)
    assert both[IMAGE_IDS] == (["t"] if by == "tiles" else list(patches.ids))
