"""Reading raw releases: images and label rasters in their released formats, and label
conversion (colour codes or index values to class indices) with errors that name the file.

TIFF is read with tifffile (ISPRS tiles; imagecodecs decodes LZW and other compressions),
PNG and JPEG with Pillow. Every reader returns uint8 arrays and raises
:class:`~bench.datasets.base.DatasetError` for a missing, unreadable or truncated file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from bench.datasets.base import IGNORE_INDEX, DatasetError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")
_UNKNOWN = 254  # lookup-table marker for a colour or value that is in no class


def read_raster(path: Path) -> np.ndarray:
    """The pixels of ``path`` as ``[H, W]`` or ``[H, W, bands]`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, not later
                array = np.asarray(image)  # a palette PNG gives its indices: the labels
    except DatasetError:
        raise
    except Exception as error:  # every decoder has its own error types
        raise DatasetError(f"cannot read {path}: {error}") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[2]:
        array = np.moveaxis(array, 0, -1)  # planar TIFF [bands, H, W] -> [H, W, bands]
    if array.dtype != np.uint8:
        raise DatasetError(
            f"{path} has {array.dtype} pixels; the harness reads 8-bit images and labels"
        )
    if array.ndim not in (2, 3):
        raise DatasetError(f"{path} has shape {array.shape}; expected [H, W] or [H, W, bands]")
    return array


def read_image(path: Path, bands: int | None = None) -> np.ndarray:
    """An image as ``[bands, H, W]`` uint8; ``bands`` checks the band count."""
    array = read_raster(path)
    if array.ndim == 2:
        array = array[:, :, None]
    if bands is not None and array.shape[2] != bands:
        raise DatasetError(f"{path} has {array.shape[2]} bands; expected {bands}")
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path):
    """Images are ``[C, H, W]``, labels ``[H, W]``: their H and W must agree."""
    if image.shape[1:] != label.shape[:2]:
        raise DatasetError(
            f"image {image_path} is {image.shape[2]}x{image.shape[1]} pixels but its label "
            f"{label_path} is {label.shape[1]}x{label.shape[0]}"
        )


def _describe_unknown(found: np.ndarray, counts: np.ndarray, fmt) -> str:
    order = np.argsort(-counts)
    shown = [f"{fmt(found[i])} ({counts[i]} pixels)" for i in order[:5]]
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return ", ".join(shown) + more


def colours_to_index(
    label: np.ndarray,
    colours: tuple[tuple[int, int, int], ...],
    path: Path,
    ignore_colours: tuple[tuple[int, int, int], ...] = (),
    threshold: int | None = None,
) -> np.ndarray:
    """RGB label ``[H, W, 3]`` -> class indices ``[H, W]`` uint8 (class ``k`` has
    ``colours[k]``; ``ignore_colours`` become :data:`IGNORE_INDEX`). A colour in neither
    is an error naming the colour, the file and its pixel count. ``threshold`` first
    binarises every channel (DeepGlobe's masks are not exactly 0/255)."""
    if label.ndim != 3 or label.shape[2] < 3:
        raise DatasetError(f"{path} is not an RGB colour-coded label (shape {label.shape})")
    rgb = label[:, :, :3]
    if threshold is not None:
        rgb = np.where(rgb >= threshold, 255, 0).astype(np.uint8)
    codes = (
        (rgb[:, :, 0].astype(np.int32) << 16) | (rgb[:, :, 1].astype(np.int32) << 8) | rgb[:, :, 2]
    )
    table = np.full(1 << 24, _UNKNOWN, dtype=np.uint8)
    for colour in ignore_colours:
        table[(colour[0] << 16) | (colour[1] << 8) | colour[2]] = IGNORE_INDEX
    for index, colour in enumerate(colours):
        table[(colour[0] << 16) | (colour[1] << 8) | colour[2]] = index
    out = table[codes]
    unknown = out == _UNKNOWN
    if unknown.any():
        found, counts = np.unique(codes[unknown], return_counts=True)
        text = _describe_unknown(
            found, counts, lambda c: f"RGB ({c >> 16}, {(c >> 8) & 255}, {c & 255})"
        )
        valid = ", ".join(str(tuple(c)) for c in colours)
        if ignore_colours:
            valid += f", ignored: {', '.join(str(tuple(c)) for c in ignore_colours)}"
        raise DatasetError(f"{path} has colours that are in no class: {text}; valid: {valid}")
    return out


def values_to_index(
    label: np.ndarray, values: tuple[int, ...], path: Path, ignore_values: tuple[int, ...] = ()
) -> np.ndarray:
    """Index-valued label ``[H, W]`` -> class indices (class ``k`` is stored as
    ``values[k]``; ``ignore_values`` become :data:`IGNORE_INDEX`); any other value is an
    error naming the value, the file and its pixel count."""
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise DatasetError(f"{path} is not a single-band index label (shape {label.shape})")
    table = np.full(256, _UNKNOWN, dtype=np.uint8)
    for value in ignore_values:
        table[value] = IGNORE_INDEX
    for index, value in enumerate(values):
        table[value] = index
    out = table[label]
    unknown = out == _UNKNOWN
    if unknown.any():
        found, counts = np.unique(label[unknown], return_counts=True)
        text = _describe_unknown(found, counts, lambda v: f"value {v}")
        raise DatasetError(
            f"{path} has label values that are in no class: {text}; valid values: "
            + ", ".join(map(str, values))
            + (f", ignored: {', '.join(map(str, ignore_values))}" if ignore_values else "")
        )
    return out
