"""Tests for the procedural land-cover scene generator (bench.datasets.synthetic_scene)."""

import time

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from bench.datasets import synthetic_scene as ss

N_CLASSES = len(ss.CLASS_NAMES)


@pytest.fixture(scope="module")
def train_patches() -> list[tuple[np.ndarray, np.ndarray]]:
    return [ss.render_patch(0, "train", i) for i in range(300)]


@pytest.fixture(scope="module")
def heldout_patches() -> list[tuple[np.ndarray, np.ndarray]]:
    return [ss.render_patch(0, "test", i) for i in range(50)]


def _macro_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    ious = []
    for c in range(N_CLASSES):
        tp = np.sum((pred == c) & (truth == c))
        union = np.sum((pred == c) | (truth == c))
        if union:
            ious.append(tp / union)
    return float(np.mean(ious))


def test_public_constants():
    assert ss.CLASS_NAMES == (
        "impervious_surface",
        "building",
        "low_vegetation",
        "tree",
        "car",
        "water",
        "clutter",
    )
    assert len(ss.CLASS_COLOURS) == N_CLASSES
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ss.CLASS_COLOURS)
    assert len(set(ss.CLASS_COLOURS)) == N_CLASSES
    assert ss.SPLIT_CODES == {"train": 0, "test": 1}


@pytest.mark.parametrize("size", [32, 64, 96, 256])
@pytest.mark.parametrize("ir_band", [False, True])
def test_shapes_dtypes_and_labels(size, ir_band):
    for index in range(3):
        image, mask = ss.render_patch(1, "train", index, size=size, ir_band=ir_band)
        assert image.shape == (4 if ir_band else 3, size, size)
        assert image.dtype == np.uint8
        assert mask.shape == (size, size)
        assert mask.dtype == np.uint8
        assert mask.max() < N_CLASSES
        assert image.std() > 5  # not blank


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="train.*test"):
        ss.render_patch(0, "val", 0)


def test_same_arguments_give_identical_patches():
    for kwargs in ({}, {"size": 48, "ir_band": True}):
        first = ss.render_patch(3, "test", 7, **kwargs)
        second = ss.render_patch(3, "test", 7, **kwargs)
        assert first[0].tobytes() == second[0].tobytes()
        assert first[1].tobytes() == second[1].tobytes()


def test_rendering_order_does_not_matter():
    forward = {i: ss.render_patch(0, "train", i) for i in [5, 3, 9]}
    backward = {i: ss.render_patch(0, "train", i) for i in [9, 5, 3]}
    for i in forward:
        np.testing.assert_array_equal(forward[i][0], backward[i][0])
        np.testing.assert_array_equal(forward[i][1], backward[i][1])


def test_different_index_seed_or_split_differ():
    base, _ = ss.render_patch(0, "train", 0)
    for other in [(0, "train", 1), (1, "train", 0), (0, "test", 0)]:
        image, _ = ss.render_patch(*other)
        assert not np.array_equal(base, image), other


def test_rgb_bands_do_not_depend_on_ir_band():
    rgb, mask = ss.render_patch(2, "train", 4)
    rgbir, mask_ir = ss.render_patch(2, "train", 4, ir_band=True)
    np.testing.assert_array_equal(rgb, rgbir[:3])
    np.testing.assert_array_equal(mask, mask_ir)


def test_ir_band_is_bright_on_vegetation_and_dark_on_water():
    sums, counts = np.zeros(N_CLASSES), np.zeros(N_CLASSES)
    for index in range(60):
        image, mask = ss.render_patch(0, "train", index, ir_band=True)
        sums += np.bincount(mask.ravel(), weights=image[3].ravel(), minlength=N_CLASSES)
        counts += np.bincount(mask.ravel(), minlength=N_CLASSES)
    mean_ir = sums / counts
    assert mean_ir[ss.TREE] > mean_ir[ss.IMPERVIOUS] + 30
    assert mean_ir[ss.LOW_VEG] > mean_ir[ss.BUILDING] + 30
    assert mean_ir[ss.WATER] < mean_ir[ss.IMPERVIOUS] - 20


def test_class_shares_are_plausible(train_patches):
    masks = np.stack([mask for _, mask in train_patches])
    share = np.bincount(masks.ravel(), minlength=N_CLASSES) / masks.size
    assert np.all(share > 0), dict(zip(ss.CLASS_NAMES, share, strict=True))
    assert share[ss.CAR] > 0.003
    assert share[ss.CLUTTER] > 0.003
    assert share.max() < 0.5
    for cls in (ss.IMPERVIOUS, ss.BUILDING, ss.LOW_VEG, ss.TREE):
        assert share[cls] > 0.08, ss.CLASS_NAMES[cls]
    for cls in (ss.CAR, ss.CLUTTER):
        assert share[cls] < 0.06, ss.CLASS_NAMES[cls]
    present = np.stack([np.bincount(m.ravel(), minlength=N_CLASSES) > 0 for m in masks])
    assert np.all(present.mean(axis=0) > 0.1)  # every class shows up in many patches


def test_object_sizes_scale_with_patch_size():
    shares = {}
    for size in (32, 128):
        masks = np.stack([ss.render_patch(0, "train", i, size=size)[1] for i in range(40)])
        shares[size] = np.bincount(masks.ravel(), minlength=N_CLASSES) / masks.size
    np.testing.assert_allclose(shares[32], shares[128], atol=0.03)


def test_colour_alone_does_not_solve_the_task(train_patches, heldout_patches):
    rng = np.random.default_rng(0)
    pixels, labels = [], []
    for image, mask in train_patches[:150]:
        picked = rng.choice(mask.size, 200, replace=False)
        pixels.append(image.reshape(3, -1)[:, picked].T)
        labels.append(mask.ravel()[picked])
    with threadpool_limits(1):  # many threads on few cores makes the fit crawl
        classifier = HistGradientBoostingClassifier(max_iter=60, random_state=0)
        classifier.fit(np.concatenate(pixels), np.concatenate(labels))
        test_pixels = np.concatenate([image.reshape(3, -1).T for image, _ in heldout_patches])
        pred = classifier.predict(test_pixels)
    truth = np.concatenate([mask.ravel() for _, mask in heldout_patches])
    majority = np.full_like(truth, np.bincount(np.concatenate(labels)).argmax())
    colour_iou, majority_iou = _macro_iou(pred, truth), _macro_iou(majority, truth)
    assert colour_iou < 0.35
    assert colour_iou > majority_iou + 0.05


def test_buildings_are_not_flat_colour(train_patches):
    """Two-tone roofs, rooftop details and shadows from taller neighbours vary the brightness
    within building pixels far beyond sensor noise."""
    spreads = []
    for image, mask in train_patches:
        building = mask == ss.BUILDING
        if building.sum() >= 30:
            spreads.append(image.astype(np.float32).mean(axis=0)[building].std())
    assert len(spreads) > 100
    assert np.mean(np.array(spreads) > 4.0) > 0.9


def test_shadows_fall_away_from_the_sun():
    height = np.zeros((32, 32), np.float32)
    height[14:18, 14:18] = 4.0
    shadow = ss._cast_shadow(height, azimuth=0.0, run=1.0)  # sun towards +x
    assert not shadow[14:18, 14:18].any()  # roofs in sunlight
    assert shadow[14:18, 11:14].all()  # about height * run long, on the -x side
    assert not shadow[:, 18:].any() and not shadow[:, :10].any()
    assert not shadow[:14].any() and not shadow[18:].any()


def test_render_speed():
    ss.render_patch(0, "train", 0)  # warm caches
    start = time.perf_counter()
    for index in range(200):
        ss.render_patch(0, "train", index)
    assert time.perf_counter() - start < 2.0
