"""ISPRS 2D semantic labelling benchmarks: Potsdam and Vaihingen (DATASETS.md).

Both use the ISPRS colour code; pure black pixels, found in some releases, are ignored, and
any other colour outside the six classes is an error naming the colour and the file.
Splits are the tile lists GLCNet and FALSE use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bench.datasets.base import DatasetError, register_dataset
from bench.datasets.prepared import (
    PreparedDataset,
    RawTile,
    TileParams,
    index_files,
    missing_files_error,
)
from bench.datasets.readers import TIFF_SUFFIXES, colours_to_index, read_raster

ISPRS_CLASSES = (
    "impervious surfaces",
    "building",
    "low vegetation",
    "tree",
    "car",
    "clutter",
)
ISPRS_COLOURS = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)
ISPRS_IGNORE = ((0, 0, 0),)

POTSDAM_TRAIN = (
    "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 "
    "6_7 6_8 6_9 6_10 6_11 6_12 7_7 7_8 7_9 7_10 7_11 7_12"
).split()
POTSDAM_TEST = "2_13 2_14 3_13 3_14 4_13 4_14 4_15 5_13 5_14 5_15 6_13 6_14 6_15 7_13".split()
VAIHINGEN_TRAIN = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
VAIHINGEN_TEST = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)


@dataclass(frozen=True)
class IsprsParams(TileParams):
    """``labels``: ``full`` or ``no_boundary`` (the eroded ``_noBoundary`` label files)."""

    labels: Literal["full", "no_boundary"] = "full"


class _Isprs(PreparedDataset):
    Params = IsprsParams
    class_names = ISPRS_CLASSES
    class_colours = ISPRS_COLOURS

    def read_label(self, path: Path) -> np.ndarray:
        return colours_to_index(read_raster(path), ISPRS_COLOURS, path, ISPRS_IGNORE)

    def _tiles(self, raw: Path, wanted: list[tuple[str, str, str, str]]) -> list[RawTile]:
        """``wanted``: (tile id, split, image file name, label file name)."""
        files = index_files(raw, TIFF_SUFFIXES)
        missing = [n for _, _, *names in wanted for n in names if n not in files]
        if missing:
            raise missing_files_error(self.name, raw, missing, self.layout)
        return [RawTile(t, s, files[i], files[lab]) for t, s, i, lab in wanted]


@register_dataset("potsdam")
class Potsdam(_Isprs):
    """ISPRS Potsdam: 38 tiles of 6000 px at 5 cm, R G B IR; 24 train / 14 test tiles."""

    name = "potsdam"
    stored_bands = ("R", "G", "B", "IR")
    summary = "ISPRS Potsdam, RGB+IR TIFF tiles"
    layout = (
        "  <raw>/4_Ortho_RGBIR/top_potsdam_{r}_{c}_RGBIR.tif   (6000x6000, 4 bands)\n"
        "  <raw>/5_Labels_all/top_potsdam_{r}_{c}_label.tif     (RGB colour-coded;\n"
        "        _label_noBoundary.tif with --set potsdam.labels=no_boundary)\n"
        "  (files are found anywhere under <raw>)"
    )

    def find_tiles(self, raw: Path) -> list[RawTile]:
        suffix = "_label.tif" if self.params.labels == "full" else "_label_noBoundary.tif"
        wanted = [
            (tile, split, f"top_potsdam_{tile}_RGBIR.tif", f"top_potsdam_{tile}{suffix}")
            for split, tiles in (("train", POTSDAM_TRAIN), ("test", POTSDAM_TEST))
            for tile in tiles
        ]
        return self._tiles(raw, wanted)


@register_dataset("vaihingen")
class Vaihingen(_Isprs):
    """ISPRS Vaihingen: 33 areas at 9 cm, IR-R-G false colour; 16 train / 17 test areas.

    Its three bands are kept in the released order (IR, R, G): ``data.bands=rgb`` means
    "the three bands", there is no blue band and no fourth one."""

    name = "vaihingen"
    stored_bands = ("IR", "R", "G")
    summary = "ISPRS Vaihingen, IRRG TIFF tiles"
    layout = (
        "  <raw>/top/top_mosaic_09cm_area{N}.tif          (IR-R-G image tiles)\n"
        "  <raw>/<ground truth folder>/top_mosaic_09cm_area{N}.tif   (RGB colour-coded;\n"
        "        _noBoundary.tif with --set vaihingen.labels=no_boundary)\n"
        "  test areas need the complete ground truth release"
    )

    def find_tiles(self, raw: Path) -> list[RawTile]:
        images: dict[str, Path] = {}
        labels: dict[str, Path] = {}
        for path in sorted(raw.rglob("top_mosaic_09cm_area*")):
            if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
                continue
            target = images if path.parent.name == "top" else labels
            if path.name in target:
                raise DatasetError(
                    f"{path.name} is under {raw} twice ({target[path.name]} and {path}); point "
                    "--raw at a folder that holds one copy of the release"
                )
            target[path.name] = path
        suffix = ".tif" if self.params.labels == "full" else "_noBoundary.tif"
        tiles, missing = [], []
        for split, areas in (("train", VAIHINGEN_TRAIN), ("test", VAIHINGEN_TEST)):
            for area in areas:
                image_name = f"top_mosaic_09cm_area{area}.tif"
                label_name = f"top_mosaic_09cm_area{area}{suffix}"
                if image_name not in images:
                    missing.append(f"top/{image_name}")
                if label_name not in labels:
                    missing.append(f"<ground truth>/{label_name}")
                if not missing:
                    tiles.append(
                        RawTile(f"area{area}", split, images[image_name], labels[label_name])
                    )
        if missing:
            raise missing_files_error(self.name, raw, missing, self.layout)
        return tiles
