"""DeepGlobe Land Cover Classification (CVPR 2018 challenge), DATASETS.md.

The 803 labelled images of the challenge's train folder are split by id into train and test
with a fixed seeded permutation (``split_seed``, ``test_fraction``), stored in
``split.json`` of the prepared dataset so every method sees the same split. Masks are
binarised at 128 per channel first, as the challenge's instructions say (the PNGs are not
exactly 0/255), and ``unknown`` (black) is ignored, as the challenge does not score it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.config import setting
from bench.datasets.base import DatasetError, register_dataset
from bench.datasets.prepared import PreparedDataset, RawTile, TileParams, seeded_split
from bench.datasets.readers import colours_to_index, read_raster


@dataclass(frozen=True)
class DeepGlobeParams(TileParams):
    test_fraction: float = setting(0.2, gt=0, lt=1)  # share of image ids held out for testing
    split_seed: int = setting(0, ge=0)  # fixes the split; run seeds do not change it


@register_dataset("deepglobe")
class DeepGlobe(PreparedDataset):
    """DeepGlobe land cover: 2448 px RGB JPEGs at 50 cm with colour-coded PNG masks."""

    name = "deepglobe"
    Params = DeepGlobeParams
    summary = "DeepGlobe Land Cover, JPEG images + PNG masks, seeded split"
    class_names = ("urban", "agriculture", "rangeland", "forest", "water", "barren")
    class_colours = (
        (0, 255, 255),
        (255, 255, 0),
        (255, 0, 255),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
    )
    layout = (
        "  <raw>/<id>_sat.jpg and <raw>/<id>_mask.png   (or the same under <raw>/train/)\n"
        "  the challenge's labelled train folder: RGB images, colour-coded RGB masks"
    )

    def read_label(self, path: Path) -> np.ndarray:
        return colours_to_index(
            read_raster(path), self.class_colours, path, ((0, 0, 0),), threshold=128
        )

    def find_tiles(self, raw: Path) -> list[RawTile]:
        folder = raw / "train" if (raw / "train").is_dir() else raw
        images = {p.name[: -len("_sat.jpg")]: p for p in folder.glob("*_sat.jpg")}
        masks = {p.name[: -len("_mask.png")]: p for p in folder.glob("*_mask.png")}
        if not images:
            raise DatasetError(
                f"deepglobe: no *_sat.jpg images in {folder}; expected layout:\n{self.layout}"
            )
        unmatched = sorted(set(images) ^ set(masks))
        if unmatched:
            names = [f"{i}_mask.png" if i in images else f"{i}_sat.jpg" for i in unmatched]
            raise DatasetError(
                f"deepglobe: {len(names)} images have no mask or masks no image in {folder}: "
                f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
            )
        split = seeded_split(list(images), self.params.test_fraction, self.params.split_seed)
        return [RawTile(i, split[i], images[i], masks[i]) for i in sorted(images)]
