"""What the harness sees of any dataset: prepared patches, class names, an ignore index."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.config import ConfigError, DataConfig, NoSettings
from bench.plugins import INSTALLED
from bench.registry import Registry

IGNORE_INDEX = 255  # label value excluded from losses and metrics
DATA_ROOT_ENV = "BENCH_DATA_ROOT"
BAND_COUNTS = {"rgb": 3, "rgbir": 4}  # data.bands -> leading bands used (stored R, G, B, IR)


class DatasetError(ConfigError):
    """Raw or prepared data is missing or wrong; the message says which file and why."""


def default_data_root() -> Path:
    """``$BENCH_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


class PatchSet(Dataset):
    """Patches: images uint8 ``[N, C, H, W]`` and masks uint8 ``[N, H, W]`` as numpy arrays,
    in memory or memory-mapped from a prepared dataset's ``.npy`` files.

    ``rows`` maps this set's positions to rows of the arrays (a subset is a view, not a
    copy) and ``bands`` keeps the leading bands only, so nothing is read that is not used.
    Indexing with an int, a slice or an index array gives torch tensors.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        ids: list[str],
        bands: int | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        count = len(images) if rows is None else len(rows)
        if count != len(ids) or (rows is None and masks is not None and len(masks) != len(ids)):
            raise ValueError("images, masks and ids must have the same length")
        self._images, self._masks, self.ids = images, masks, ids
        self.bands = images.shape[1] if bands is None else bands
        self._rows = rows

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)`` of the images this set yields."""
        return (len(self), self.bands, *self._images.shape[2:])

    def _select(self, index: int | slice | np.ndarray | list[int] | torch.Tensor):
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        if self._rows is not None:
            index = self._rows[index]
        if isinstance(index, np.ndarray | list) and len(index) and self._is_mapped:
            order = np.argsort(index, kind="stable")  # read a memory map front to back
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            return np.asarray(index)[order], inverse
        return index, None

    @property
    def _is_mapped(self) -> bool:
        return isinstance(self._images, np.memmap)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        rows, restore = self._select(index)
        image = self._images[rows, : self.bands] if self.bands else self._images[rows]
        mask = self._masks[rows] if self._masks is not None else np.empty(0, dtype=np.uint8)
        if restore is not None:
            image = image[restore]
            mask = mask[restore] if self._masks is not None else mask
        return torch.from_numpy(np.array(image)), torch.from_numpy(np.array(mask))

    def read_masks(self, index: slice | np.ndarray) -> np.ndarray:
        """The masks of ``index`` only, uint8 ``[n, H, W]`` (a scan of the labels reads no
        images)."""
        if self._masks is None:
            return np.empty((0, 0, 0), dtype=np.uint8)
        rows, restore = self._select(index)
        masks = np.asarray(self._masks[rows])
        return masks[restore] if restore is not None else masks

    def with_masks(self, masks: np.ndarray) -> PatchSet:
        """The same patches with other labels of the same shape (another label variant)."""
        if masks.shape[0] != self._masks.shape[0]:
            raise ValueError("a label variant must have a mask for every patch")
        return PatchSet(self._images, masks, self.ids, self.bands, self._rows)

    def subset(self, indices: list[int] | np.ndarray) -> PatchSet:
        idx = np.asarray(indices, dtype=np.int64)
        rows = idx if self._rows is None else self._rows[idx]
        ids = [self.ids[i] for i in idx]
        return PatchSet(self._images, self._masks, ids, self.bands, rows)


class SegmentationDataset:
    """Base of every registered dataset; subclasses state their facts as class attributes."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoSettings
    class_names: ClassVar[tuple[str, ...]]
    class_colours: ClassVar[tuple[tuple[int, int, int], ...]]
    ignore_index: ClassVar[int] = IGNORE_INDEX
    summary: ClassVar[str] = ""
    # Values of the dataset's own settings for the conformance checks (`bench check-method`
    # pretrains on the synthetic dataset at these, `bench check-dataset` checks a dataset at
    # its own): small enough for seconds on a CPU. Prepared datasets have none.
    check_settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: object, data: DataConfig, data_root: Path | str | None = None):
        self.params = params
        self.data = data
        self.data_root = Path(data_root) if data_root is not None else default_data_root()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return BAND_COUNTS[self.data.bands]

    @property
    def prepared_dir(self) -> Path:
        """Folder of the prepared patches; label-fraction subset lists are written here."""
        raise NotImplementedError

    @property
    def label_variant(self) -> str:
        """The name of the labels this dataset trains and is scored on: ``full`` unless the
        release has several kinds (ISPRS: ``full`` or ``no_boundary``, the eroded ones)."""
        return "full"

    def test_label_variants(self) -> dict[str, PatchSet]:
        """The test split under each label variant there is, the dataset's own first; every
        one is scored in the same pass over the predictions (bench.evaluation)."""
        return {self.label_variant: self.load_split("test")}

    def check_ready(self) -> None:
        """Raise :class:`DatasetError` (saying what to run) unless the data can be loaded."""

    def train_size(self) -> int:
        """Number of training patches (the pool label fractions are drawn from)."""
        return len(self.load_split("train"))

    def load_split(self, split: str) -> PatchSet:
        """The prepared patches of ``split`` ("train" or "test")."""
        raise NotImplementedError

    def band_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std of the training images on the 0..1 scale."""
        raise NotImplementedError

    def patch_tiles(self, split: str) -> list[str] | None:
        """The tile each patch of ``split`` was cut from (None: not cut from tiles)."""
        return None

    def test_tiles(self) -> list[TileLayout] | None:
        """Where each whole test tile's patches lie (None: the dataset has no tiles)."""
        return None


@dataclass(frozen=True)
class TileLayout:
    """One tile of a split as its patches cover it: rows of the split's patch set and each
    patch's top-left corner ``(y, x)``; the tile is ``height x width`` pixels."""

    tile_id: str
    rows: np.ndarray
    origins: np.ndarray  # [m, 2]
    height: int
    width: int
    patch: int

    def assemble(self, patches: PatchSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole tile, image uint8 ``[C, H, W]`` and mask ``[H, W]``, from ``patches``."""
        images, masks = patches[self.rows]
        return self._placed(images), self._placed(masks)

    def assemble_mask(self, patches: PatchSet) -> torch.Tensor:
        """The whole tile's mask ``[H, W]`` alone (another label variant: no image read)."""
        return self._placed(torch.from_numpy(patches.read_masks(self.rows)))

    def _placed(self, parts: torch.Tensor) -> torch.Tensor:
        """The tile ``[..., H, W]`` of its patches ``parts`` ``[m, ..., P, P]``."""
        tile = torch.empty((*parts.shape[1:-2], self.height, self.width), dtype=parts.dtype)
        covered = torch.zeros((self.height, self.width), dtype=torch.bool)
        p = self.patch
        for (y, x), part in zip(self.origins, parts, strict=True):
            tile[..., y : y + p, x : x + p] = part
            covered[y : y + p, x : x + p] = True
        if not bool(covered.all()):
            raise DatasetError(
                f"the patches of tile {self.tile_id} do not cover it (prepared with a stride "
                "larger than the patch size?); whole-tile evaluation needs every pixel"
            )
        return tile


DATASETS: Registry[type[SegmentationDataset]] = Registry(
    "dataset", plugins=INSTALLED, base=SegmentationDataset
)
register_dataset = DATASETS.register


def create_dataset(
    name: str,
    params: Any = None,
    data: DataConfig | None = None,
    data_root: Path | str | None = None,
) -> SegmentationDataset:
    """The registered dataset ``name`` (the ``timm.create_model`` habit): unset arguments
    (None) take their defaults, the dataset's own settings and the ``data`` section."""
    cls = DATASETS.get(name)
    return cls(cls.Params() if params is None else params, data or DataConfig(), data_root)


def check_fraction_usable(dataset: str, fraction: float, train_size: int) -> None:
    """A fraction must label at least half a patch before rounding up, or the "1%" run
    would really be a run on some other fraction. Say the smallest usable fraction."""
    if fraction * train_size < 0.5:
        raise DatasetError(
            f"label fraction {fraction:g} of the {train_size} training patches of {dataset} is "
            f"{fraction * train_size:.2g} patches, which rounds to zero; the smallest usable "
            f"fraction for {dataset} is {1 / train_size:.3g} (one patch)"
        )
