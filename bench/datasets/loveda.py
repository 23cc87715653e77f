"""LoveDA, urban and rural domains as two datasets (DATASETS.md).

Masks hold values 0 (no-data, ignored) and 1..7; class ``k`` is stored as ``k + 1``.
The Test split has no masks, so the harness trains on Train and evaluates on Val.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.datasets.base import register_dataset
from bench.datasets.prepared import PreparedDataset, RawTile, missing_files_error
from bench.datasets.readers import read_raster, values_to_index

LOVEDA_CLASSES = (
    "background",
    "building",
    "road",
    "water",
    "barren",
    "forest",
    "agriculture",
)
# The release's colour map, for figures only: masks are index-valued.
LOVEDA_COLOURS = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
SPLIT_FOLDERS = (("train", "Train"), ("test", "Val"))


class _LoveDA(PreparedDataset):
    class_names = LOVEDA_CLASSES
    class_colours = LOVEDA_COLOURS
    domain: str

    def read_label(self, path: Path) -> np.ndarray:
        return values_to_index(read_raster(path), tuple(range(1, 8)), path, ignore_values=(0,))

    def find_tiles(self, raw: Path) -> list[RawTile]:
        tiles, missing = [], []
        for split, folder_name in SPLIT_FOLDERS:
            # the release's zips unpack to Train/Urban/... (or Train/Train/Urban/...)
            candidates = [
                raw / folder_name / self.domain,
                raw / folder_name / folder_name / self.domain,
            ]
            folder = next((c for c in candidates if c.is_dir()), candidates[0])
            images = sorted((folder / "images_png").glob("*.png"))
            if not images:
                missing.append(f"{folder_name}/{self.domain}/images_png/*.png")
            for image in images:
                mask = folder / "masks_png" / image.name
                if not mask.is_file():
                    missing.append(f"{folder_name}/{self.domain}/masks_png/{image.name}")
                tiles.append(RawTile(f"{folder_name}_{image.stem}", split, image, mask))
        if missing:
            raise missing_files_error(self.name, raw, missing, self.layout)
        return tiles


def _layout(domain: str) -> str:
    return (
        f"  <raw>/Train/{domain}/images_png/<n>.png  and  <raw>/Train/{domain}/masks_png/<n>.png\n"
        f"  <raw>/Val/{domain}/images_png/<n>.png    and  <raw>/Val/{domain}/masks_png/<n>.png\n"
        "  (1024x1024 RGB images; masks 0 no-data, 1..7 classes; Val is the test split)"
    )


@register_dataset("loveda_urban")
class LoveDAUrban(_LoveDA):
    """LoveDA urban domain: 1024 px RGB PNGs at 0.3 m, 7 classes."""

    name = "loveda_urban"
    domain = "Urban"
    summary = "LoveDA urban domain, PNG images + index masks"
    layout = _layout("Urban")


@register_dataset("loveda_rural")
class LoveDARural(_LoveDA):
    """LoveDA rural domain: 1024 px RGB PNGs at 0.3 m, 7 classes."""

    name = "loveda_rural"
    domain = "Rural"
    summary = "LoveDA rural domain, PNG images + index masks"
    layout = _layout("Rural")
