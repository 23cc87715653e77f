"""The registered synthetic dataset: cached patches, bands, ids, statistics."""

import numpy as np
import torch

from bench.config import DataConfig
from bench.datasets import DATASETS
from bench.datasets.synthetic import SyntheticParams


def make(tmp_path, bands="rgb", **params):
    cls = DATASETS.get("synthetic")
    return cls(
        SyntheticParams(patch_size=32, n_train=12, n_test=4, **params),
        DataConfig(bands=bands),
        tmp_path,
    )


def test_splits_are_cached_and_identical_on_reload(tmp_path):
    dataset = make(tmp_path)
    train = dataset.load_split("train")
    images, masks = train[:]
    assert images.shape == (12, 3, 32, 32) and masks.shape == (12, 32, 32)
    assert images.dtype == masks.dtype == torch.uint8
    assert train.ids[0] == "train_000000" and len(set(train.ids)) == 12
    assert (dataset.prepared_dir / "train.npz").exists()
    again = make(tmp_path).load_split("train")
    assert torch.equal(images, again[:][0])
    test = dataset.load_split("test")
    assert len(test) == 4 and not torch.equal(test[:4][0], images[:4])


def test_ir_band_and_data_seed_change_the_prepared_folder(tmp_path):
    rgb, rgbir = make(tmp_path), make(tmp_path, bands="rgbir")
    assert rgbir.in_channels == 4 and rgbir.load_split("test")[0][0].shape[0] == 4
    assert rgb.prepared_dir != rgbir.prepared_dir
    assert make(tmp_path, data_seed=1).prepared_dir != rgb.prepared_dir
    mean, std = rgbir.band_stats()
    assert len(mean) == len(std) == 4 and all(0 < m < 1 for m in mean) and all(s > 0 for s in std)


def test_subset_of_patchset(tmp_path):
    train = make(tmp_path).load_split("train")
    part = train.subset([3, 1])
    assert part.ids == ["train_000003", "train_000001"]
    assert torch.equal(part[0][1], train[3][1])
    assert torch.equal(part[:][0], train[np.array([3, 1])][0])
    assert part.subset([1]).ids == ["train_000001"] and torch.equal(
        part.subset([1])[0][0], train[1][0]
    )
