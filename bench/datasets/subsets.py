"""Label-fraction subsets: seeded, nested, written next to the prepared data.

A fraction ``f`` of the training patches gets labels. One seeded order of the training
patches is drawn per (dataset, seed, strategy) and its first ``ceil(f * n)`` entries are
labelled, so the subsets are nested (1% in 10% in 100%) and identical for every method
(DATASETS.md). Two strategies (``finetune.labels``) draw the order:

* ``random``: a seeded permutation of all patches. GLCNet's released 1% Potsdam list is such
  a draw (data_example/Potsdam/trainR1_RGBIR.txt: 138 patches, 1 to 13 from each of the 24
  tiles).
* ``stratified``: every training tile contributes in proportion to its patches
  (:func:`stratified_order`); the list's file name says so (``..._stratified.txt``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from bench.config import ConfigError, check_unique

_SUBSET_STREAM = 7919  # separates this RNG stream from the data generator's streams


def check_fraction(fraction: float) -> float:
    if not (0.0 < fraction <= 1.0) or not math.isfinite(fraction):
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    return float(fraction)


def check_fractions(fractions) -> tuple[float, ...]:
    """Label fractions: at least one, each in (0, 1] and given once."""
    if not fractions:
        raise ConfigError("no label fractions given; give fractions in (0, 1], e.g. 0.01,0.1")
    try:
        fractions = tuple(check_fraction(f) for f in fractions)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    check_unique("label fraction", fractions)
    return fractions


def check_seeds(seeds) -> tuple[int, ...]:
    """Seeds: at least one, each a non-negative integer (numpy's generators take no negative
    seed) given once."""
    if not seeds:
        raise ConfigError("no seeds given; give non-negative integers, e.g. 0,1,2")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seeds must be non-negative integers, got {seed!r}")
    check_unique("seed", seeds)
    return tuple(seeds)


def subset_size(n: int, fraction: float) -> int:
    """``ceil(fraction * n)``, robust to binary rounding (0.07 * 100 is 7, not 8)."""
    return max(1, math.ceil(round(check_fraction(fraction) * n, 9)))


def labelled_indices(n: int, fraction: float, seed: int) -> list[int]:
    """Indices of the labelled training patches, in the order of the seeded permutation."""
    order = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(n)
    return order[: subset_size(n, fraction)].tolist()


def stratified_order(tiles: list[str], seed: int) -> np.ndarray:
    """An order of the patches (``tiles[i]`` is patch ``i``'s tile) whose every prefix takes
    from each tile in proportion to its patches, up to one patch, after one patch of every
    tile first (so any prefix of at least as many patches as tiles touches every tile).

    Systematic sampling: the ``r``-th patch of tile ``t`` (a seeded permutation within the
    tile) gets the key ``(r + u_t) / n_t`` with a seeded offset ``u_t`` in [0, 1); a
    tile's first patch gets ``u_t / max(n)`` instead, below every other key. Patches are
    taken in key order; prefixes of one order are nested.
    """
    names, tile_of = np.unique(np.asarray(tiles), return_inverse=True)
    rng = np.random.default_rng([seed, _SUBSET_STREAM, 1])
    offsets = rng.random(len(names))
    sizes = np.bincount(tile_of, minlength=len(names))
    keys = np.empty(len(tiles))
    for t in range(len(names)):
        members = np.flatnonzero(tile_of == t)[rng.permutation(sizes[t])]
        keys[members] = (np.arange(sizes[t]) + offsets[t]) / sizes[t]
        keys[members[0]] = offsets[t] / sizes.max()
    return np.argsort(keys, kind="stable")


def labelled_indices_by(
    strategy: str, n: int, fraction: float, seed: int, tiles: list[str] | None = None
) -> list[int]:
    """The labelled training patches under ``strategy`` (``random`` or ``stratified``, which
    needs each patch's tile)."""
    if strategy == "random":
        return labelled_indices(n, fraction, seed)
    if tiles is None or len(tiles) != n:
        raise ValueError("stratified label lists need the tile of every training patch")
    return stratified_order(tiles, seed)[: subset_size(n, fraction)].tolist()


def subset_file(prepared_dir: Path, fraction: float, seed: int, strategy: str = "random") -> Path:
    suffix = "" if strategy == "random" else f"_{strategy}"
    return Path(prepared_dir) / "subsets" / f"train_seed{seed}_frac{fraction:g}{suffix}.txt"


def write_subset(
    prepared_dir: Path, ids: list[str], fraction: float, seed: int, strategy: str = "random"
) -> Path:
    """Write the subset's patch ids (one per line), or check an existing file matches."""
    path = subset_file(prepared_dir, fraction, seed, strategy)
    text = "".join(f"{i}\n" for i in ids)
    if path.exists():
        if path.read_text() != text:
            raise RuntimeError(
                f"{path} exists but lists other patches than this run would label; the prepared "
                "data changed since it was written. Delete it only if that change was intended."
            )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
