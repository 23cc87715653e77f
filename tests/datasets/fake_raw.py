"""Tiny fake raw releases in each dataset's real layout and formats, written by the tests.

Each writer returns the class-index map it encoded per tile, so tests can check that
preparing gives back exactly those indices (255 where the release marks no label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image

from bench.datasets.deepglobe import DeepGlobe
from bench.datasets.isprs import (
    ISPRS_COLOURS,
    POTSDAM_TEST,
    POTSDAM_TRAIN,
    VAIHINGEN_TEST,
    VAIHINGEN_TRAIN,
)

IGNORE = 255


def class_map(rng: np.random.Generator, height: int, width: int, classes: int) -> np.ndarray:
    """Blocky class layout (8 px cells), plus a few ignored pixels in the corner."""
    cells = rng.integers(0, classes, size=(height // 8 + 1, width // 8 + 1))
    labels = np.kron(cells, np.ones((8, 8), dtype=np.int64))[:height, :width].astype(np.uint8)
    labels[:2, :3] = IGNORE
    return labels


def eroded(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every pixel next to another class (its 8 neighbours) ignored, as the
    ISPRS ``_noBoundary`` files blacken the class boundaries."""
    padded = np.pad(labels, 1, mode="edge")
    height, width = labels.shape
    boundary = np.zeros(labels.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            boundary |= padded[dy : dy + height, dx : dx + width] != labels
    return np.where(boundary, IGNORE, labels).astype(np.uint8)


def colour_label(labels: np.ndarray, colours, ignore=(0, 0, 0)) -> np.ndarray:
    table = np.array([*colours] + [ignore] * (256 - len(colours)), dtype=np.uint8)
    return table[labels]


def write_tiff(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **options)


def write_png(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def image_for(rng: np.random.Generator, height: int, width: int, bands: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, bands), dtype=np.uint8)


def write_potsdam(
    raw: Path, size: int = 72, seed: int = 0, tiles=None, no_boundary: bool = False
) -> dict[str, tuple]:
    """``4_Ortho_RGBIR/top_potsdam_{r}_{c}_RGBIR.tif`` (4 bands) and colour-coded
    ``5_Labels_all/top_potsdam_{r}_{c}_label.tif``, with ``no_boundary`` also the eroded
    ``5_Labels_all_noBoundary/top_potsdam_{r}_{c}_label_noBoundary.tif`` (:func:`eroded`);
    returns tile -> (image HWC, labels)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for tile in tiles or [*POTSDAM_TRAIN, *POTSDAM_TEST]:
        image = image_for(rng, size, size, 4)
        labels = class_map(rng, size, size, 6)
        write_tiff(raw / "4_Ortho_RGBIR" / f"top_potsdam_{tile}_RGBIR.tif", image)
        write_tiff(
            raw / "5_Labels_all" / f"top_potsdam_{tile}_label.tif",
            colour_label(labels, ISPRS_COLOURS),
            compression="lzw",  # some releases compress; imagecodecs must decode it
        )
        if no_boundary:
            write_tiff(
                raw / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif",
                colour_label(eroded(labels), ISPRS_COLOURS),
            )
        truth[tile] = (image, labels)
    return truth


def write_vaihingen(raw: Path, seed: int = 0, no_boundary: bool = False) -> dict[str, tuple]:
    """``top/top_mosaic_09cm_area{N}.tif`` (IRRG) and labels in the ground-truth folder,
    tiles of varying sizes like the release; with ``no_boundary`` also the eroded
    ``top_mosaic_09cm_area{N}_noBoundary.tif`` in the eroded ground-truth folder."""
    rng = np.random.default_rng(seed)
    truth = {}
    for area in (*VAIHINGEN_TRAIN, *VAIHINGEN_TEST):
        height, width = 40 + area % 5, 36 + area % 7
        image = image_for(rng, height, width, 3)
        labels = class_map(rng, height, width, 6)
        write_tiff(raw / "top" / f"top_mosaic_09cm_area{area}.tif", image)
        write_tiff(
            raw / "ground_truth_COMPLETE" / f"top_mosaic_09cm_area{area}.tif",
            colour_label(labels, ISPRS_COLOURS),
        )
        if no_boundary:
            write_tiff(
                raw
                / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
                / f"top_mosaic_09cm_area{area}_noBoundary.tif",
                colour_label(eroded(labels), ISPRS_COLOURS),
            )
        truth[f"area{area}"] = (image, labels)
    return truth


def write_deepglobe(raw: Path, count: int = 10, size: int = 40, seed: int = 0) -> dict:
    """``train/<id>_sat.jpg`` and ``train/<id>_mask.png`` whose colours are off by a few
    levels, as the release's are (binarised at 128 when read)."""
    rng = np.random.default_rng(seed)
    truth = {}
    folder = raw / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        image_id = str(100 + 37 * n)
        image = image_for(rng, size, size, 3)
        labels = class_map(rng, size, size, 6)
        mask = colour_label(labels, DeepGlobe.class_colours).astype(np.int16)
        noise = rng.integers(0, 20, size=mask.shape)
        mask = np.where(mask > 127, mask - noise, mask + noise).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{image_id}_sat.jpg", quality=95)
        Image.fromarray(mask).save(folder / f"{image_id}_mask.png")
        truth[image_id] = (image, labels)
    return truth


def write_loveda(raw: Path, domain: str = "Urban", per_split: int = 3, size: int = 48) -> dict:
    """``{Train,Val}/<domain>/images_png/<n>.png`` and index-valued ``masks_png/<n>.png``
    (0 no-data, class k stored as k + 1)."""
    rng = np.random.default_rng(1)
    truth = {}
    number = 0
    for split in ("Train", "Val"):
        for _ in range(per_split):
            folder = raw / split / domain
            (folder / "images_png").mkdir(parents=True, exist_ok=True)
            (folder / "masks_png").mkdir(parents=True, exist_ok=True)
            image = image_for(rng, size, size, 3)
            labels = class_map(rng, size, size, 7)
            stored = np.where(labels == IGNORE, 0, labels + 1).astype(np.uint8)
            Image.fromarray(image).save(folder / "images_png" / f"{number}.png")
            Image.fromarray(stored).save(folder / "masks_png" / f"{number}.png")
            truth[f"{split}_{number}"] = (image, labels)
            number += 1
    return truth


def write_folder(raw: Path, mode: str = "colour", count: int = 6, bands: int = 3) -> dict:
    """``images/<stem>.tif``, ``masks/<stem>.png`` and ``classes.yaml`` (3 classes given by
    colour or by value, one ignore entry)."""
    rng = np.random.default_rng(2)
    colours = [(10, 200, 10), (200, 10, 10), (10, 10, 200)]
    values = [3, 5, 7]
    classes = [
        {"name": name, **({"colour": list(c)} if mode == "colour" else {"value": v})}
        for name, c, v in zip(("field", "roof", "lake"), colours, values, strict=True)
    ]
    ignore = [[0, 0, 0]] if mode == "colour" else [0]
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "classes.yaml").write_text(yaml.safe_dump({"classes": classes, "ignore": ignore}))
    truth = {}
    for n in range(count):
        stem = f"scene_{n:02d}"
        image = image_for(rng, 40, 40, bands)
        labels = class_map(rng, 40, 40, 3)
        if mode == "colour":
            mask = colour_label(labels, colours)
        else:
            mask = np.array([*values] + [0] * 253, dtype=np.uint8)[labels]
        write_tiff(raw / "images" / f"{stem}.tif", image)
        write_png(raw / "masks" / f"{stem}.png", mask)
        truth[stem] = (image, labels)
    return truth
