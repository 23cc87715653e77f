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
    """``labels``: ``full`` or ``no_boundary`` (the eroded ``_noBoundary`` label files), the
    labels trained on. The other kind is prepared too when the release has it, and scored
    beside them (bench.conventions)."""

    labels: Literal["full", "no_boundary"] = "full"


class _Isprs(PreparedDataset):
    Params = IsprsParams
    class_names = ISPRS_CLASSES
    class_colours = ISPRS_COLOURS

    @property
    def label_variant(self) -> str:
        return self.params.labels

    def read_label(self, path: Path) -> np.ndarray:
        return colours_to_index(read_raster(path), ISPRS_COLOURS, path, ISPRS_IGNORE)

    def _tiles(
        self, files: dict[str, Path], raw: Path, wanted: list[tuple[str, str, str, dict]]
    ) -> list[RawTile]:
        """``wanted``: (tile id, split, image file name, label variant -> label file name);
        the image and the labels of ``labels`` must be in ``files``, other variants may."""
        own = self.params.labels
        needed = [name for _, _, image, labels in wanted for name in (image, labels[own])]
        missing = [name for name in needed if name not in files]
        if missing:
            raise missing_files_error(self.name, raw, missing, self.layout)
        return [
            RawTile(tile, split, files[image], files[labels[own]], other_labels(labels, files, own))
            for tile, split, image, labels in wanted
        ]


def other_labels(names: dict[str, str], files: dict[str, Path], own: str) -> tuple:
    """(variant, file) of the label variants besides ``own`` whose file ``names[variant]``
    the release has."""
    return tuple((v, files[n]) for v, n in names.items() if v != own and n in files)


@register_dataset("potsdam")
class Potsdam(_Isprs):
    """ISPRS Potsdam: 38 tiles of 6000 px at 5 cm, R G B IR; 24 train / 14 test tiles."""

    name = "potsdam"
    stored_bands = ("R", "G", "B", "IR")
    summary = "ISPRS Potsdam, RGB+IR TIFF tiles"
    layout = (
        "  <raw>/4_Ortho_RGBIR/top_potsdam_{r}_{c}_RGBIR.tif   (6000x6000, 4 bands)\n"
        "  <raw>/5_Labels_all/top_potsdam_{r}_{c}_label.tif     (RGB colour-coded)\n"
        "  <raw>/5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif\n"
        "        (optional, scored besides; trained on with --set potsdam.labels=no_boundary)\n"
        "  (files are found anywhere under <raw>)"
    )

    def find_tiles(self, raw: Path) -> list[RawTile]:
        suffixes = {"full": "_label.tif", "no_boundary": "_label_noBoundary.tif"}
        wanted = [
            (
                tile,
                split,
                f"top_potsdam_{tile}_RGBIR.tif",
                {v: f"top_potsdam_{tile}{suffix}" for v, suffix in suffixes.items()},
            )
            for split, tiles in (("train", POTSDAM_TRAIN), ("test", POTSDAM_TEST))
            for tile in tiles
        ]
        return self._tiles(index_files(raw, TIFF_SUFFIXES), raw, wanted)


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
        "        _noBoundary.tif optional, scored besides; trained on with\n"
        "        --set vaihingen.labels=no_boundary)\n"
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
        suffixes = {"full": ".tif", "no_boundary": "_noBoundary.tif"}
        own = self.params.labels
        tiles, missing = [], []
        for split, areas in (("train", VAIHINGEN_TRAIN), ("test", VAIHINGEN_TEST)):
            for area in areas:
                image_name = f"top_mosaic_09cm_area{area}.tif"
                names = {v: f"top_mosaic_09cm_area{area}{end}" for v, end in suffixes.items()}
                if image_name not in images:
                    missing.append(f"top/{image_name}")
                if names[own] not in labels:
                    missing.append(f"<ground truth>/{names[own]}")
                if not missing:
                    image, label = images[image_name], labels[names[own]]
                    others = other_labels(names, labels, own)
                    tiles.append(RawTile(f"area{area}", split, image, label, others))
        if missing:
            raise missing_files_error(self.name, raw, missing, self.layout)
        return tiles
