"""Datasets read from raw releases: prepared once into patches, then memory-mapped by jobs.

A prepared dataset lives in ``<data root>/<dataset>/patch<P>_stride<S>/``::

    manifest.json                        written last: its presence means "prepared"
    train_images.npy  [N, C, P, P] uint8  train_masks.npy [N, P, P] uint8  train_ids.txt
    test_images.npy   ...                 test_masks.npy                   test_ids.txt
    test_masks_<variant>.npy             the test labels of another label variant, when the
                                         release has them for every test tile (ISPRS: the
                                         eroded ``_noBoundary`` files), named in the
                                         manifest's ``label_variants``
    split.json                           the tile ids of each split
    subsets/train_seed{s}_frac{f}.txt    nested labelled subsets (DATASETS.md)

While it is being prepared, ``prepare-state.json`` and ``tiles/<tile>.npz`` (+ ``.json``),
one per finished tile, make an interrupted prepare resumable: a rerun skips done tiles.
Both are removed once the manifest is written.

Patches are cut on a grid of ``stride`` with the last row and column aligned to the tile's
edge, so every pixel is covered (Potsdam: 6000 px -> 24 x 24 = 576 patches of 256 px, as in
DATASETS.md). Labels are class indices with :data:`IGNORE_INDEX` for unlabelled pixels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.config import Settings, setting
from bench.datasets.base import (
    BAND_COUNTS,
    IGNORE_INDEX,
    DatasetError,
    PatchSet,
    SegmentationDataset,
    TileLayout,
    check_fraction_usable,
)
from bench.datasets.readers import check_same_size, read_image
from bench.datasets.subsets import labelled_indices, write_subset
from bench.store import atomic_write_json, remove_stale_temporaries, temporary_path, writing_to

log = logging.getLogger(__name__)

PREPARED_VERSION = 1  # bump when the prepared layout or patch cutting changes
MANIFEST = "manifest.json"
STATE = "prepare-state.json"
SPLITS = ("train", "test")
PATCH_ID = re.compile(r"^(?P<tile>.+)_y(?P<y>\d+)_x(?P<x>\d+)$")  # see _prepare_tile


@dataclass(frozen=True)
class TileParams(Settings):
    """How raw tiles are cut. 256 px patches without overlap, as GLCNet and FALSE cut
    Potsdam (DATASETS.md)."""

    patch_size: int = setting(256, ge=8)
    stride: int = setting(0, ge=0)  # 0: equal to patch_size (no overlap)


@dataclass(frozen=True)
class RawTile:
    """One raw image and its label, with the split it belongs to."""

    tile_id: str
    split: str
    image: Path
    label: Path
    # other label variants of the same tile found in the release: (variant name, file)
    variants: tuple[tuple[str, Path], ...] = ()


def patch_origins(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, plus one flush with the far edge."""
    if length < patch:
        return []
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def cut_patches(
    image: np.ndarray, mask: np.ndarray, patch: int, stride: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``image [C, H, W]``, ``mask [H, W]`` -> ``[n, C, P, P]``, ``[n, P, P]``, origins."""
    origins = [
        (y, x)
        for y in patch_origins(mask.shape[0], patch, stride)
        for x in patch_origins(mask.shape[1], patch, stride)
    ]
    images = np.empty((len(origins), image.shape[0], patch, patch), dtype=np.uint8)
    masks = np.empty((len(origins), patch, patch), dtype=np.uint8)
    for i, (y, x) in enumerate(origins):
        images[i] = image[:, y : y + patch, x : x + patch]
        masks[i] = mask[y : y + patch, x : x + patch]
    return images, masks, origins


def seeded_split(ids: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """A fixed split by id for releases without a labelled test set: a seeded permutation
    of the sorted ids; its first ``round(test_fraction * n)`` ids are the test split."""
    ordered = sorted(ids)
    order = np.random.default_rng([seed, 0x5B17]).permutation(len(ordered))
    n_test = max(1, round(test_fraction * len(ordered)))
    test = {ordered[i] for i in order[:n_test]}
    return {i: ("test" if i in test else "train") for i in ordered}


def index_files(raw: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """File name -> path for every file under ``raw`` with one of ``suffixes``; a name found
    twice is an error (two releases under one folder)."""
    found: dict[str, Path] = {}
    for path in sorted(raw.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            if path.name in found:
                raise DatasetError(
                    f"{path.name} is under {raw} twice ({found[path.name]} and {path}); point "
                    "--raw at a folder that holds one copy of the release"
                )
            found[path.name] = path
    return found


def missing_files_error(dataset: str, raw: Path, missing: list[str], layout: str) -> DatasetError:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return DatasetError(
        f"{dataset}: {len(missing)} expected files are missing under {raw}: {shown}\n"
        f"expected layout:\n{layout}"
    )


class PreparedDataset(SegmentationDataset):
    """A dataset prepared from a raw release by ``python -m bench prepare <name>``.

    Subclasses give ``layout`` (shown in errors), ``stored_bands``, ``find_tiles`` and
    ``read_label``; everything else (cutting, resuming, checks, loading) is here.
    """

    Params: ClassVar[type] = TileParams
    layout: ClassVar[str] = ""
    stored_bands: ClassVar[tuple[str, ...]] = ("R", "G", "B")
    bands_note: ClassVar[str] = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._manifest: dict[str, Any] | None = None
        self._loaded: dict[str, PatchSet] = {}
        self._origins: dict[str, tuple[list[str], np.ndarray]] = {}
        self._variants: tuple[str, ...] = ()  # other label variants kept by prepare

    # -- what a subclass provides ---------------------------------------------------------
    def find_tiles(self, raw: Path) -> list[RawTile]:
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        """The label raster at ``path`` as class indices ``[H, W]`` uint8."""
        raise NotImplementedError

    def read_tile(self, tile: RawTile) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(tile.image, bands=len(self.stored_bands))
        label = self.read_label(tile.label)
        check_same_size(image, label, tile.image, tile.label)
        return image, label

    def class_table(self) -> dict[str, Any]:
        """What the manifest records about the classes."""
        return {"names": list(self.class_names), "colours": [list(c) for c in self.class_colours]}

    # -- where and what --------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.params.stride or self.params.patch_size

    @property
    def dataset_dir(self) -> Path:
        return self.data_root / self.name

    def _other_settings(self) -> dict[str, Any]:
        """Settings besides the patch grid that differ from their defaults."""
        defaults = self.Params()
        return {
            f.name: getattr(self.params, f.name)
            for f in dataclasses.fields(self.params)
            if f.name not in ("patch_size", "stride")
            and getattr(self.params, f.name) != getattr(defaults, f.name)
        }

    @property
    def prepared_dir(self) -> Path:
        name = f"patch{self.params.patch_size}_stride{self.stride}"
        name += "".join(f"_{key}-{value}" for key, value in self._other_settings().items())
        return self.dataset_dir / name

    def prepare_command(self) -> str:
        flags = f" --patch-size {self.params.patch_size}"
        if self.params.stride:
            flags += f" --stride {self.params.stride}"
        for key, value in self._other_settings().items():
            flags += f" --set {self.name}.{key}={value}"
        return (
            f"python -m bench prepare {self.name} --raw <folder of the raw release>"
            f" --data-root {self.data_root}{flags}"
        )

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            path = self.prepared_dir / MANIFEST
            if not path.is_file():
                raise DatasetError(self._not_prepared_message())
            manifest = read_json_file(path, self.prepare_command() + " --force")
            missing = [key for key in MANIFEST_KEYS if key not in manifest]
            if missing:
                raise DatasetError(
                    f"{path} is damaged (no {', '.join(missing)}); prepare the dataset again: "
                    f"{self.prepare_command()} --force"
                )
            if manifest.get("version") != PREPARED_VERSION:
                raise DatasetError(
                    f"{self.prepared_dir} was prepared by another version of the harness "
                    f"(layout {manifest.get('version')}, this one reads {PREPARED_VERSION}); "
                    f"prepare it again with --force: {self.prepare_command()} --force"
                )
            self._manifest = manifest
        return self._manifest

    def _not_prepared_message(self) -> str:
        text = f"dataset {self.name} is not prepared in {self.prepared_dir}"
        if (self.prepared_dir / STATE).exists():
            text += " (a prepare was interrupted there; rerun it to resume)"
        others = sorted(
            p.parent.name for p in self.dataset_dir.glob(f"*/{MANIFEST}") if p.parent.is_dir()
        )
        if others:
            text += f"; prepared variants found: {', '.join(others)} (choose one with --set "
            text += f"{self.name}.patch_size=... / {self.name}.stride=...)"
        return f"{text}; run:\n  {self.prepare_command()}"

    def check_ready(self) -> None:
        manifest = self.manifest()
        wanted, stored = BAND_COUNTS[self.data.bands], len(manifest["bands"])
        if wanted > stored:
            raise DatasetError(
                f"data.bands={self.data.bands} needs {wanted} bands but {self.name} has "
                f"{stored} ({', '.join(manifest['bands'])}); use data.bands=rgb"
            )

    def train_size(self) -> int:
        return int(self.manifest()["splits"]["train"]["patches"])

    def load_split(self, split: str) -> PatchSet:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if split not in self._loaded:
            self.check_ready()
            folder = self.prepared_dir
            memory_map = partial(np.load, mmap_mode="r")
            images = self._read_prepared(folder / f"{split}_images.npy", memory_map)
            masks = self._read_prepared(folder / f"{split}_masks.npy", memory_map)
            ids = self._read_prepared(folder / f"{split}_ids.txt", lambda p: p.read_text().split())
            self._loaded[split] = PatchSet(images, masks, ids, bands=self.in_channels)
        return self._loaded[split]

    def test_label_variants(self) -> dict[str, PatchSet]:
        """The test split under the dataset's own labels and under each other label variant
        prepared (the manifest's ``label_variants``), sharing one image array."""
        test = self.load_split("test")
        variants = {self.label_variant: test}
        for variant, name in self.manifest().get("label_variants", {}).items():
            masks = self._read_prepared(self.prepared_dir / name, partial(np.load, mmap_mode="r"))
            variants[variant] = test.with_masks(masks)
        return variants

    def _read_prepared(self, path: Path, read: Callable[[Path], Any]) -> Any:
        """``read(path)`` of a prepared file; a damaged one is named with the fix."""
        try:
            return read(path)
        except (OSError, ValueError, EOFError) as error:
            raise DatasetError(
                f"{path} is damaged ({type(error).__name__}: {error}); prepare the dataset "
                f"again: {self.prepare_command()} --force"
            ) from None

    def band_stats(self) -> tuple[list[float], list[float]]:
        manifest, n = self.manifest(), self.in_channels
        return manifest["band_mean"][:n], manifest["band_std"][:n]

    def _patch_origins(self, split: str) -> tuple[list[str], np.ndarray]:
        """Each patch's tile and top-left corner, read from its id."""
        if split in self._origins:
            return self._origins[split]
        tiles, origins = [], []
        for patch_id in self.load_split(split).ids:
            match = PATCH_ID.match(patch_id)
            if match is None:
                raise DatasetError(f"patch id {patch_id!r} of {self.prepared_dir} names no tile")
            tiles.append(match["tile"])
            origins.append((int(match["y"]), int(match["x"])))
        self._origins[split] = tiles, np.array(origins, dtype=np.int64).reshape(-1, 2)
        return self._origins[split]

    def patch_tiles(self, split: str) -> list[str]:
        return self._patch_origins(split)[0]

    def test_tiles(self) -> list[TileLayout]:
        tiles, origins = self._patch_origins("test")
        patch = self.params.patch_size
        layouts = []
        for tile in dict.fromkeys(tiles):
            rows = np.flatnonzero(np.asarray(tiles) == tile)
            corner = origins[rows].max(axis=0) + patch
            layouts.append(
                TileLayout(tile, rows, origins[rows], int(corner[0]), int(corner[1]), patch)
            )
        return layouts

    # -- preparing -------------------------------------------------------------------------
    def prepare(
        self,
        raw: Path | str,
        seeds: Iterable[int] = (0, 1, 2),
        fractions: Iterable[float] = (0.01, 0.1),
        force: bool = False,
        progress: Callable[[str], None] = log.info,
    ) -> dict[str, Any]:
        """Read the raw release under ``raw`` and write the prepared dataset (see module
        docstring); returns the manifest. Re-running resumes or, when done, only adds
        missing subset lists."""
        raw = Path(raw)
        out = self.prepared_dir
        if (out / MANIFEST).is_file() and not force:
            progress(f"{self.name} is already prepared in {out} (use --force to redo it)")
            shutil.rmtree(out / "tiles", ignore_errors=True)
            manifest = self.manifest()
            self._write_subsets(manifest, seeds, fractions, progress)
            return manifest
        started = time.perf_counter()
        tiles = self.check_raw(raw)
        if force and out.exists():  # only once the new raw input was found complete
            shutil.rmtree(out)
        self._variants = kept_variants(tiles, progress)
        state = {
            "dataset": self.name,
            "version": PREPARED_VERSION,
            "params": dataclasses.asdict(self.params),
            "tiles": [t.tile_id for t in tiles],
            # only when there are any: an interrupted prepare of an earlier version resumes
            **({"label_variants": list(self._variants)} if self._variants else {}),
        }
        self._start_or_resume(out, state, raw, progress)
        summaries = self._prepare_tiles(tiles, out, progress)
        manifest = self._finish(out, tiles, summaries, raw, started)
        self._write_subsets(manifest, seeds, fractions, progress)
        atomic_write_json(out / MANIFEST, manifest)
        shutil.rmtree(out / "tiles", ignore_errors=True)
        (out / STATE).unlink(missing_ok=True)
        self._manifest = manifest
        progress(f"prepared {self.name} in {out} in {time.perf_counter() - started:.1f}s")
        return manifest

    def check_raw(self, raw: Path) -> list[RawTile]:
        """The tiles of the raw release in ``raw``, each split present (DatasetError naming
        the folder and the expected layout if not)."""
        if not raw.is_dir():
            state = "is a file, not a folder" if raw.exists() else "does not exist"
            raise DatasetError(
                f"{self.name}: raw folder {raw} {state}; expected layout:\n{self.layout}"
            )
        tiles = self.find_tiles(raw)
        for split in SPLITS:
            if not any(t.split == split for t in tiles):
                raise DatasetError(f"{self.name}: no {split} images found under {raw}")
        return tiles

    def _start_or_resume(self, out: Path, state: dict, raw: Path, progress) -> None:
        state_path = out / STATE
        if state_path.is_file():
            remove_stale_temporaries(out / "tiles")
            previous = read_json_file(state_path, self.prepare_command() + " --force")
            if {k: previous.get(k) for k in state} != state:
                raise DatasetError(
                    f"{out} holds an interrupted prepare of other files (from "
                    f"{previous.get('raw')}); rerun with --force to start over"
                )
            done = len(list((out / "tiles").glob("*.json")))
            progress(
                f"resuming an interrupted prepare of {self.name}: {done} of "
                f"{len(state['tiles'])} tiles were done"
            )
            return
        atomic_write_json(state_path, {**state, "raw": str(raw.resolve())})

    def _prepare_tile(self, tile: RawTile, out: Path) -> dict[str, Any]:
        image, mask = self.read_tile(tile)
        patch = self.params.patch_size
        images, masks, origins = cut_patches(image, mask, patch, self.stride)
        if not len(images):
            raise DatasetError(
                f"{tile.image} is {mask.shape[1]}x{mask.shape[0]} pixels, smaller than the "
                f"patch size {patch}; prepare with a smaller --patch-size"
            )
        variants = self._variant_masks(tile, mask.shape) if tile.split == "test" else {}
        pixels = np.bincount(masks.reshape(-1), minlength=256)
        # Per-band histograms give exact sums for the band statistics without a float copy.
        histograms = [np.bincount(b.reshape(-1), minlength=256) for b in images.swapaxes(0, 1)]
        summary = {
            "split": tile.split,
            "patches": len(images),
            "ids": [f"{tile.tile_id}_y{y:05d}_x{x:05d}" for y, x in origins],
            "class_pixels": pixels[: self.num_classes].tolist(),
            "ignored_pixels": int(pixels[IGNORE_INDEX]),
            "band_histograms": [h.tolist() for h in histograms],
            "image": str(tile.image),
            "label": str(tile.label),
        }
        folder = out / "tiles"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(folder / tile.tile_id, ".npz")
        with writing_to(folder / f"{tile.tile_id}.npz", tmp):
            np.savez(tmp, images=images, masks=masks, **variants)
            os.replace(tmp, folder / f"{tile.tile_id}.npz")
        atomic_write_json(folder / f"{tile.tile_id}.json", summary)  # the tile's done marker
        return summary

    def _variant_masks(self, tile: RawTile, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """``masks_<variant>`` patches of ``tile``'s other kept label variants, cut where
        its own labels are cut."""
        found = dict(tile.variants)
        arrays = {}
        for variant in self._variants:
            label = self.read_label(found[variant])
            if label.shape != shape:
                raise DatasetError(
                    f"{found[variant]} is {label.shape[1]}x{label.shape[0]} pixels, but "
                    f"{tile.label} is {shape[1]}x{shape[0]}; the label variants of a tile must "
                    "be the same size"
                )
            no_bands = np.empty((0, *shape), dtype=np.uint8)
            _, masks, _ = cut_patches(no_bands, label, self.params.patch_size, self.stride)
            arrays[f"masks_{variant}"] = masks
        return arrays

    def _prepare_tiles(self, tiles: list[RawTile], out: Path, progress) -> dict[str, dict]:
        """Each tile's patches and summary; tiles finished before an interruption are kept."""
        summaries = {}
        done_before = 0
        for number, tile in enumerate(tiles, start=1):
            summary_path = out / "tiles" / f"{tile.tile_id}.json"
            if summary_path.is_file():
                summaries[tile.tile_id] = json.loads(summary_path.read_text())
                done_before += 1
                continue
            tile_start = time.perf_counter()
            summaries[tile.tile_id] = self._prepare_tile(tile, out)
            seconds = time.perf_counter() - tile_start
            remaining = len(tiles) - number
            progress(
                f"[{number}/{len(tiles)}] {tile.tile_id} ({tile.split}): "
                f"{summaries[tile.tile_id]['patches']} patches in {seconds:.1f}s"
                + (f", about {remaining * seconds:.0f}s left" if remaining else "")
            )
        if done_before:
            progress(f"skipped {done_before} tiles prepared before the interruption")
        return summaries

    def _finish(self, out, tiles, summaries, raw: Path, started: float) -> dict[str, Any]:
        """Join the tiles of each split into one memory-mappable array per split; return the
        manifest (classes, splits, band statistics of the training images)."""
        splits = {split: self._join_split(out, tiles, summaries, split) for split in SPLITS}
        atomic_write_json(out / "split.json", {s: splits[s]["tiles"] for s in SPLITS})
        histograms = np.sum(
            [summaries[t.tile_id]["band_histograms"] for t in tiles if t.split == "train"], axis=0
        ).astype(np.float64)  # [bands, 256]
        values = np.arange(256) / 255.0
        count = histograms.sum(axis=1)
        mean = histograms @ values / count
        var = histograms @ values**2 / count - mean**2
        return {
            "dataset": self.name,
            "version": PREPARED_VERSION,
            "params": dataclasses.asdict(self.params),
            "patch_size": self.params.patch_size,
            "stride": self.stride,
            "raw": str(raw.resolve()),
            "bands": list(self.stored_bands),
            "classes": self.class_table(),
            "ignore_index": IGNORE_INDEX,
            "label_variant": self.label_variant,
            "label_variants": {v: variant_file(v) for v in self._variants},
            "splits": splits,
            "band_mean": mean.tolist(),
            "band_std": np.sqrt(np.maximum(var, 0.0)).tolist(),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def _join_split(self, out: Path, tiles, summaries, split: str) -> dict[str, Any]:
        """``<split>_images.npy``, ``<split>_masks.npy`` and ``<split>_ids.txt`` from the
        split's tiles; returns the split's summary."""
        chosen = [t for t in tiles if t.split == split]
        total = sum(summaries[t.tile_id]["patches"] for t in chosen)
        first = np.load(out / "tiles" / f"{chosen[0].tile_id}.npz")
        channels, patch = first["images"].shape[1], first["images"].shape[2]
        targets = {
            "images": (f"{split}_images.npy", (total, channels, patch, patch)),
            "masks": (f"{split}_masks.npy", (total, patch, patch)),
        }
        for variant in self._variants if split == "test" else ():
            targets[f"masks_{variant}"] = (variant_file(variant), (total, patch, patch))
        arrays = {
            key: allocated_memmap(out / f".{name}.tmp", shape)
            for key, (name, shape) in targets.items()
        }
        row, ids = 0, []
        for tile in chosen:
            with np.load(out / "tiles" / f"{tile.tile_id}.npz") as part:
                count = len(part["masks"])
                for key, array in arrays.items():
                    array[row : row + count] = part[key]
            row += count
            ids.extend(summaries[tile.tile_id]["ids"])
        for key, (name, _) in targets.items():
            arrays[key].flush()
            del arrays[key]
            os.replace(out / f".{name}.tmp", out / name)
        (out / f"{split}_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        return {
            "tiles": [t.tile_id for t in chosen],
            "patches": total,
            "class_pixels": np.sum(
                [summaries[t.tile_id]["class_pixels"] for t in chosen], axis=0
            ).tolist(),
            "ignored_pixels": sum(summaries[t.tile_id]["ignored_pixels"] for t in chosen),
        }

    def _write_subsets(self, manifest, seeds, fractions, progress) -> None:
        n = int(manifest["splits"]["train"]["patches"])
        ids = (self.prepared_dir / "train_ids.txt").read_text().split()
        usable = []
        for fraction in fractions:
            try:
                check_fraction_usable(self.name, fraction, n)
            except DatasetError as error:
                progress(f"no subset list for fraction {fraction:g}: {error}")
                continue
            usable.append(fraction)
            for seed in seeds:
                chosen = labelled_indices(n, fraction, seed)
                write_subset(self.prepared_dir, [ids[i] for i in chosen], fraction, seed)
        progress(
            f"label subsets for fractions {', '.join(f'{f:g}' for f in usable)} and seeds "
            f"{', '.join(map(str, seeds))} in {self.prepared_dir / 'subsets'}"
        )


def variant_file(variant: str) -> str:
    """The prepared file of the test labels of label variant ``variant``."""
    return f"test_masks_{variant}.npy"


def kept_variants(tiles: list[RawTile], progress: Callable[[str], None]) -> tuple[str, ...]:
    """The other label variants every test tile has (scored besides the dataset's own); a
    variant only some test tiles have is not kept, and ``progress`` names the tiles
    without it."""
    test = [t for t in tiles if t.split == "test"]
    found = [dict(t.variants) for t in test]
    names = list(dict.fromkeys(v for variants in found for v in variants))
    kept = []
    for name in names:
        lacking = [t.tile_id for t, has in zip(test, found, strict=True) if name not in has]
        if lacking:
            progress(
                f"label variant {name} is not kept: test tiles {', '.join(lacking[:8])}"
                f"{' ...' if len(lacking) > 8 else ''} have no such labels"
            )
        else:
            kept.append(name)
    return tuple(kept)


def allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 ``.npy`` file mapped for writing, its blocks allocated first: writing into
    the map of a sparse file on a full disk kills the process with SIGBUS, while allocating
    raises a plain ``OSError`` (ENOSPC)."""
    with writing_to(path):
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    return array


MANIFEST_KEYS = ("version", "bands", "splits", "band_mean", "band_std", "classes")


def read_json_file(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; a DatasetError naming the file and ``fix`` (the command
    that rewrites it) when it cannot be read or is not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(
            f"{path} is damaged ({type(error).__name__}: {error}); prepare the dataset again: {fix}"
        ) from None
    if not isinstance(value, dict):
        raise DatasetError(f"{path} is damaged (not a JSON object); prepare it again: {fix}")
    return value


def class_count_table(manifest: dict[str, Any]) -> str:
    """Per-class pixel shares of each split, as printed at the end of ``prepare``."""
    names = manifest["classes"]["names"]
    lines = [f"{'class':<24} {'train':>8} {'test':>8}"]
    totals = {s: sum(manifest["splits"][s]["class_pixels"]) or 1 for s in SPLITS}
    for k, name in enumerate(names):
        shares = [100.0 * manifest["splits"][s]["class_pixels"][k] / totals[s] for s in SPLITS]
        lines.append(f"{name:<24} {shares[0]:>7.2f}% {shares[1]:>7.2f}%")
    ignored = [manifest["splits"][s]["ignored_pixels"] for s in SPLITS]
    lines.append(f"{'(ignored pixels)':<24} {ignored[0]:>8} {ignored[1]:>8}")
    patches = [manifest["splits"][s]["patches"] for s in SPLITS]
    lines.append(f"{'patches':<24} {patches[0]:>8} {patches[1]:>8}")
    return "\n".join(lines)
