"""What the harness sees of any dataset: prepared patches, class names, an ignore index."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.config import DataConfig
from bench.registry import Registry

IGNORE_INDEX = 255  # label value excluded from losses and metrics
DATA_ROOT_ENV = "BENCH_DATA_ROOT"

DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")
register_dataset = DATASETS.register


def default_data_root() -> Path:
    """``$BENCH_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


class PatchSet(Dataset):
    """Patches held in memory: images uint8 ``[N, C, H, W]``, masks uint8 ``[N, H, W]``."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, ids: list[str]) -> None:
        if len(images) != len(ids) or (masks is not None and len(masks) != len(ids)):
            raise ValueError("images, masks and ids must have the same length")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.masks = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks))
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.masks[index] if self.masks is not None else torch.empty(0, dtype=torch.uint8)
        return self.images[index], mask

    def subset(self, indices: list[int]) -> PatchSet:
        idx = np.asarray(indices, dtype=np.int64)
        masks = None if self.masks is None else self.masks.numpy()[idx]
        return PatchSet(self.images.numpy()[idx], masks, [self.ids[i] for i in idx])


@dataclass(frozen=True)
class NoParams:
    """A dataset without settings of its own."""


class SegmentationDataset:
    """Base of every registered dataset; subclasses state their facts as class attributes."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    class_names: ClassVar[tuple[str, ...]]
    class_colours: ClassVar[tuple[tuple[int, int, int], ...]]
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(self, params: object, data: DataConfig, data_root: Path | str | None = None):
        self.params = params
        self.data = data
        self.data_root = Path(data_root) if data_root is not None else default_data_root()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return {"rgb": 3, "rgbir": 4}[self.data.bands]

    @property
    def prepared_dir(self) -> Path:
        """Folder of the prepared patches; label-fraction subset lists are written here."""
        raise NotImplementedError

    def load_split(self, split: str) -> PatchSet:
        """The prepared patches of ``split`` ("train" or "test")."""
        raise NotImplementedError

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std of the training images on the 0..1 scale."""
        raise NotImplementedError
