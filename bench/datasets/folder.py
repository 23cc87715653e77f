"""Any user's dataset as a folder, and Xiangtan as a named preset of it (DATASETS.md).

Layout::

    <raw>/images/<stem>.(tif|tiff|png|jpg|jpeg)     8-bit, 3 or 4 bands (R, G, B[, IR])
    <raw>/masks/<stem>.(png|tif|tiff)               colour-coded RGB or index-valued
    <raw>/classes.yaml (or .yml / .json)            the classes, see below
    <raw>/train.txt, <raw>/test.txt                 optional: stems of each split

The class file names each class with either its colour or its index value, in the order
the class indices take; ``ignore`` lists colours or values of unlabelled pixels::

    classes:
      - {name: building, colour: [255, 0, 0]}       # or: {name: building, value: 1}
      - {name: road, colour: [255, 255, 0]}
    ignore: [[0, 0, 0]]                             # optional

Without split files the stems are split with a fixed seeded permutation (``test_fraction``,
``split_seed``), stored in the prepared ``split.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.config import setting
from bench.datasets.base import DatasetError, register_dataset
from bench.datasets.prepared import PreparedDataset, RawTile, TileParams, seeded_split
from bench.datasets.readers import (
    IMAGE_SUFFIXES,
    colours_to_index,
    read_image,
    read_raster,
    values_to_index,
)

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
BAND_NAMES = {3: ("R", "G", "B"), 4: ("R", "G", "B", "IR")}
FOLDER_LAYOUT = (
    "  <raw>/images/<stem>.tif|png|jpg   (8-bit, 3 or 4 bands)\n"
    "  <raw>/masks/<stem>.png|tif        (colour-coded RGB or index-valued)\n"
    "  <raw>/classes.yaml                (classes: [{name: ..., colour: [r, g, b]} or\n"
    "                                     {name: ..., value: k}], optional ignore: [...])\n"
    "  <raw>/train.txt, <raw>/test.txt   (optional: stems of each split)"
)


@dataclass(frozen=True)
class FolderParams(TileParams):
    name: str = "default"  # names the prepared copy: data/folder/<name>/...
    # used when the folder has no train.txt/test.txt
    test_fraction: float = setting(0.2, gt=0, lt=1)
    split_seed: int = setting(0, ge=0)


@dataclass(frozen=True)
class ClassSpec:
    """The parsed class file: names and, for each class, a colour or an index value."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None
    values: tuple[int, ...] | None
    ignore: tuple[Any, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "colours": [list(c) for c in self.colours] if self.colours else None,
            "values": list(self.values) if self.values is not None else None,
            "ignore": [list(i) if isinstance(i, tuple) else i for i in self.ignore],
        }


def read_class_file(raw: Path) -> ClassSpec:
    path = next((raw / n for n in CLASS_FILES if (raw / n).is_file()), None)
    if path is None:
        raise DatasetError(
            f"no class file in {raw}: expected one of {', '.join(CLASS_FILES)}; layout:\n"
            + FOLDER_LAYOUT
        )
    try:
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read class file {path}: {error}") from None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not classes or not isinstance(classes, list):
        raise DatasetError(f"{path} must have a non-empty list under 'classes'")
    names, colours, values = [], [], []
    for entry in classes:
        if not isinstance(entry, dict) or "name" not in entry:
            raise DatasetError(f"{path}: each class needs a name, got {entry!r}")
        names.append(str(entry["name"]))
        if "colour" in entry or "color" in entry:
            colour = entry.get("colour", entry.get("color"))
            colours.append(_colour(colour, path, f"colour of class {entry['name']}"))
        elif "value" in entry:
            values.append(_label_value(entry["value"], path, f"value of class {entry['name']}"))
        else:
            raise DatasetError(f"{path}: class {entry['name']} needs a colour or a value")
    if colours and values:
        raise DatasetError(f"{path}: give every class a colour, or every class a value")
    if len(set(names)) != len(names) or len(set(colours or values)) != len(colours or values):
        raise DatasetError(f"{path}: class names, colours and values must be unique")
    ignore = spec.get("ignore") or []
    if not isinstance(ignore, list):
        raise DatasetError(f"{path}: 'ignore' must be a list, got {ignore!r}")
    read = _colour if colours else _label_value
    ignore = tuple(read(item, path, "each entry of 'ignore'") for item in ignore)
    return ClassSpec(
        tuple(names), tuple(colours) or None, tuple(values) if values else None, ignore
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _colour(value: Any, path: Path, what: str) -> tuple[int, int, int]:
    if not (
        isinstance(value, list)
        and len(value) == 3
        and all(_is_int(c) and 0 <= c <= 255 for c in value)
    ):
        raise DatasetError(f"{path}: {what} must be [r, g, b] with integers 0..255, got {value!r}")
    return tuple(value)


def _label_value(value: Any, path: Path, what: str) -> int:
    if not (_is_int(value) and 0 <= value <= 254):
        raise DatasetError(f"{path}: {what} must be an integer label value 0..254, got {value!r}")
    return value


@register_dataset("folder")
class FolderDataset(PreparedDataset):
    """Your own dataset: images/ + masks/ with matching stems and a class file."""

    name = "folder"
    Params = FolderParams
    summary = "your own data: images/, masks/, classes.yaml"
    layout = FOLDER_LAYOUT

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._classes: ClassSpec | None = None
        self._bands: tuple[str, ...] | None = None

    @property
    def dataset_dir(self) -> Path:
        return self.data_root / self.name / self.params.name

    @property
    def class_names(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._classes is not None:
            return self._classes.names
        return tuple(self.manifest()["classes"]["names"])

    @property
    def class_colours(self):  # type: ignore[override]
        colours = self._classes.colours if self._classes else None
        if colours is None and self._classes is None:
            colours = self.manifest()["classes"].get("colours")
        return tuple(tuple(c) for c in colours) if colours else ()

    @property
    def stored_bands(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._bands is not None:
            return self._bands
        return tuple(self.manifest()["bands"])

    def class_table(self) -> dict[str, Any]:
        return self._classes.as_dict()

    def read_label(self, path: Path) -> np.ndarray:
        spec, raster = self._classes, read_raster(path)
        if spec.colours is not None:
            return colours_to_index(raster, spec.colours, path, spec.ignore)
        return values_to_index(raster, spec.values, path, spec.ignore)

    def find_tiles(self, raw: Path) -> list[RawTile]:
        self._classes = read_class_file(raw)
        for sub in ("images", "masks"):
            if not (raw / sub).is_dir():
                raise DatasetError(
                    f"{self.name}: folder {raw / sub} does not exist; expected layout:\n"
                    + self.layout
                )
        images = _by_stem(raw / "images", IMAGE_SUFFIXES)
        masks = _by_stem(raw / "masks", MASK_SUFFIXES)
        unmatched = sorted(set(images) ^ set(masks))
        if unmatched:
            shown = ", ".join(unmatched[:8]) + (" ..." if len(unmatched) > 8 else "")
            raise DatasetError(
                f"{self.name}: {len(unmatched)} stems have an image but no mask or a mask but no "
                f"image under {raw}: {shown}"
            )
        if not images:
            raise DatasetError(f"{self.name}: no images in {raw / 'images'}")
        first = read_image(images[min(images)])
        if len(first) not in BAND_NAMES:
            raise DatasetError(f"{images[min(images)]} has {len(first)} bands; expected 3 or 4")
        self._bands = BAND_NAMES[len(first)]
        split = self._split(raw, sorted(images))
        return [RawTile(stem, split[stem], images[stem], masks[stem]) for stem in sorted(images)]

    def _split(self, raw: Path, stems: list[str]) -> dict[str, str]:
        files = {s: raw / f"{s}.txt" for s in ("train", "test")}
        if not any(p.is_file() for p in files.values()):
            return seeded_split(stems, self.params.test_fraction, self.params.split_seed)
        if not all(p.is_file() for p in files.values()):
            raise DatasetError(f"{raw}: give both train.txt and test.txt, or neither")
        split: dict[str, str] = {}
        for name, path in files.items():
            for stem in path.read_text().split():
                if stem not in stems:
                    raise DatasetError(f"{path} lists {stem!r}, which has no image in images/")
                if stem in split:
                    raise DatasetError(f"{stem!r} is in both train.txt and test.txt")
                split[stem] = name
        left = [s for s in stems if s not in split]
        if left:
            raise DatasetError(
                f"{len(left)} images are in neither train.txt nor test.txt: {', '.join(left[:8])}"
            )
        return split


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes and path.is_file():
            if path.stem in found:
                raise DatasetError(f"two files with stem {path.stem!r} in {folder}")
            found[path.stem] = path
    return found


@dataclass(frozen=True)
class XiangtanParams(TileParams):
    test_fraction: float = setting(0.2, gt=0, lt=1)
    split_seed: int = setting(0, ge=0)


@register_dataset("xiangtan")
class Xiangtan(FolderDataset):
    """Xiangtan (FALSE's regional land-cover set) as a named folder dataset: its public
    layout is not documented, so it is read as a folder dataset (images/, masks/, a class
    file naming its classes) and prepared under ``<data root>/xiangtan``."""

    name = "xiangtan"
    Params = XiangtanParams
    summary = "Xiangtan land cover, read as a folder dataset"

    @property
    def dataset_dir(self) -> Path:
        return self.data_root / self.name
