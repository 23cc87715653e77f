"""A toy dataset as a plugin: field parcels seen from above, generated (no files).

Each patch is a grid of rectangular parcels, each of one class with its own colour, a
class texture and noise; the one-pixel boundaries between parcels are unlabelled (the
ignore index), as boundary pixels are in ISPRS's eroded labels. A patch depends only on
(data_seed, split, index), so the dataset is the same on every machine.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench.config import Settings, setting, stable_hash
from bench.datasets import IGNORE_INDEX, PatchSet, SegmentationDataset, register_dataset

COLOURS = ((200, 180, 60), (70, 150, 60), (150, 110, 80), (50, 90, 170))


@dataclass(frozen=True)
class ToyFieldsParams(Settings):
    patch_size: int = setting(64, ge=16)
    n_train: int = setting(512, ge=1)
    n_test: int = setting(128, ge=1)
    parcels: int = setting(3, ge=1, le=8)  # parcels per side
    data_seed: int = setting(0, ge=0)


@register_dataset("toy_fields")
class ToyFields(SegmentationDataset):
    """Generated field parcels: crop, meadow, bare soil, water."""

    Params = ToyFieldsParams
    summary = "toy field parcels (example plugin), generated"
    class_names = ("crop", "meadow", "bare_soil", "water")
    class_colours = COLOURS
    check_settings = {"n_train": 64, "n_test": 8, "patch_size": 32}

    @property
    def prepared_dir(self) -> Path:  # only the label-subset lists are written here
        return self.data_root / "toy_fields" / stable_hash(self.params)

    def train_size(self) -> int:
        return self.params.n_train

    def load_split(self, split: str) -> PatchSet:
        count = {"train": self.params.n_train, "test": self.params.n_test}[split]
        patches = [self.render(split, i) for i in range(count)]
        images = np.stack([image for image, _ in patches])[:, : self.in_channels]
        masks = np.stack([mask for _, mask in patches])
        return PatchSet(images, masks, [f"{split}_{i:05d}" for i in range(count)])

    def band_stats(self) -> tuple[list[float], list[float]]:
        images = self.load_split("train")[:256][0].float() / 255.0
        return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).tolist()

    def render(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Patch ``index`` of ``split``: image uint8 [4, H, W] (R, G, B, IR), mask [H, W]."""
        p = self.params
        rng = np.random.default_rng([p.data_seed, zlib.crc32(split.encode()), index])
        edges = [
            np.sort(rng.choice(np.arange(4, p.patch_size - 4), p.parcels - 1, False))
            for _ in range(2)
        ]
        rows, cols = (np.searchsorted(e, np.arange(p.patch_size), side="right") for e in edges)
        parcel = rows[:, None] * p.parcels + cols[None, :]
        mask = rng.integers(0, len(COLOURS), p.parcels**2)[parcel].astype(np.uint8)
        rgb = np.asarray(COLOURS, dtype=np.float32)[mask].transpose(2, 0, 1)
        stripes = 20 * np.sin(np.arange(p.patch_size) * rng.uniform(0.5, 1.5))[None, :]
        rgb += np.where(mask == 0, stripes, 0)[None] + rng.normal(0, 12, rgb.shape)
        infrared = np.where(mask == 3, 30.0, 160.0) + rng.normal(0, 12, mask.shape)
        boundary = np.zeros_like(mask, dtype=bool)
        boundary[1:] |= parcel[1:] != parcel[:-1]
        boundary[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
        mask[boundary] = IGNORE_INDEX
        image = np.concatenate([rgb, infrared[None]]).clip(0, 255).astype(np.uint8)
        return image, mask
