"""The built-in synthetic land-cover dataset (no files, no downloads).

Patches come from :mod:`bench.datasets.synthetic_scene`, deterministic per
(data seed, split, index). The rendered arrays are cached once under the data root so later
jobs (and cluster tasks) load them instantly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.config import Settings, canonical_json, setting, stable_hash
from bench.datasets import synthetic_scene
from bench.datasets.base import PatchSet, SegmentationDataset, register_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticParams(Settings):
    patch_size: int = setting(64, ge=8)
    # unlabelled pool for pretraining; label fractions are drawn from it
    n_train: int = setting(1024, ge=1)
    n_test: int = setting(256, ge=1)
    data_seed: int = setting(0, ge=0)  # fixes the dataset itself; run seeds do not change it


@register_dataset("synthetic")
class SyntheticLandCover(SegmentationDataset):
    """Procedural aerial scenes with 7 land-cover classes (see synthetic_scene)."""

    Params = SyntheticParams
    summary = "built-in procedural aerial scenes, no files needed"
    class_names = synthetic_scene.CLASS_NAMES
    class_colours = synthetic_scene.CLASS_COLOURS
    check_settings = {"n_train": 16, "n_test": 8, "patch_size": 32}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, PatchSet] = {}  # split -> patches, read once per instance

    @property
    def prepared_dir(self) -> Path:
        key = {"params": self.params, "bands": self.data.bands, "generator": GENERATOR_VERSION}
        return self.data_root / "synthetic" / stable_hash(key)

    def train_size(self) -> int:
        return self.params.n_train

    def load_split(self, split: str) -> PatchSet:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; valid splits: train, test")
        if split not in self._loaded:
            self._loaded[split] = self._load(split)
        return self._loaded[split]

    def _load(self, split: str) -> PatchSet:
        count = self.params.n_train if split == "train" else self.params.n_test
        path = self.prepared_dir / f"{split}.npz"
        if path.exists():
            with np.load(path) as arrays:
                images, masks = arrays["images"], arrays["masks"]
        else:
            images, masks = self._render(split, count)
            _save_npz(path, images=images, masks=masks)
            (self.prepared_dir / "params.json").write_text(
                canonical_json({"params": self.params, "bands": self.data.bands}) + "\n"
            )
        ids = [f"{split}_{i:06d}" for i in range(count)]
        return PatchSet(images, masks, ids)

    def band_stats(self) -> tuple[list[float], list[float]]:
        images = self.load_split("train")[:256][0].float() / 255.0
        return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).tolist()

    def _render(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        size, ir = self.params.patch_size, self.data.bands == "rgbir"
        images = np.empty((count, 4 if ir else 3, size, size), dtype=np.uint8)
        masks = np.empty((count, size, size), dtype=np.uint8)
        for i in range(count):
            images[i], masks[i] = synthetic_scene.render_patch(
                self.params.data_seed, split, i, size=size, ir_band=ir
            )
        log.info(
            "rendered %d synthetic %s patches of %dpx in %.1fs",
            count,
            split,
            size,
            time.perf_counter() - start,
        )
        return images, masks


GENERATOR_VERSION = 1  # bump when synthetic_scene changes its output


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
