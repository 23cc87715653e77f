"""``python -m bench check-dataset NAME``: what the rest of the harness relies on in a
dataset, checked on its ``check_settings`` (a generated dataset, rendered in a temporary
folder) or on its prepared copy (a real one; ``--raw FOLDER`` prepares it first).

- ``ready``: it is there to be loaded (``check_ready``; else what to prepare, and how);
- ``classes``: names unique and non-empty, colours one per class, the ignore index a
  uint8 value that is no class;
- ``splits``: train and test load, are not empty, ids are unique, ``train_size`` agrees,
  and the first whole test tile (if it has tiles) is covered by its patches;
- ``patches``: images uint8 ``[N, bands, H, W]``, masks uint8 ``[N, H, W]`` of the same size;
- ``labels``: every label value is a class index or the ignore index, and some are classes;
- ``subsets``: the label fractions drawn from it are nested and seeded (per tile too, when
  it has tiles: ``patch_tiles`` gives one tile per patch);
- ``band-stats``: one finite mean and positive std per band, on the 0..1 scale;
- ``deterministic``: generated twice (in two folders), the same patches.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bench.config import ConfigError, DataConfig, build_section, parse_overrides
from bench.conformance.contracts import Contract, Shared, failed, passed, run_gated, selected
from bench.datasets import DATASETS, create_dataset, default_data_root, prepare_dataset
from bench.datasets.base import DatasetError, SegmentationDataset
from bench.datasets.prepared import MANIFEST, PreparedDataset
from bench.datasets.subsets import labelled_indices_by
from bench.plugins import load_plugins

log = logging.getLogger(__name__)

CONTRACTS = (
    "ready",
    "classes",
    "splits",
    "patches",
    "labels",
    "subsets",
    "band-stats",
    "deterministic",
)
SPLITS = ("train", "test")
SCAN_CHUNK = 256  # patches per read when scanning the labels


def check_dataset(
    name: str,
    overrides: Iterable[str] = (),
    data_root: Path | str | None = None,
    raw: Path | str | None = None,
    plugins: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> list[Contract]:
    """Every contract's outcome for dataset ``name`` (:func:`iter_check_dataset`)."""
    return list(iter_check_dataset(name, overrides, data_root, raw, plugins, only))


def iter_check_dataset(
    name: str,
    overrides: Iterable[str] = (),
    data_root: Path | str | None = None,
    raw: Path | str | None = None,
    plugins: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Iterator[Contract]:
    """Check dataset ``name`` at its ``check_settings`` and the ``--set`` ``overrides``
    (its own section and ``data``); a prepared dataset is read from ``data_root`` (after
    preparing it from ``raw``, if given). Yields each contract's outcome as it completes;
    bad input raises ConfigError before anything runs."""
    load_plugins(plugins)
    cls = DATASETS.get(name)
    names = selected(CONTRACTS, only)
    params, data = dataset_sections(name, cls, tuple(overrides))
    generated = not issubclass(cls, PreparedDataset)
    if raw is not None and generated:
        raise ConfigError(f"dataset {name} is generated, it reads no raw files; drop --raw")
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        if data_root is not None:
            root = Path(data_root)
        else:
            root = Path(tmp) / "data" if generated else default_data_root()
        if raw is not None:
            prepare_from(create_dataset(name, params, data, root), Path(raw), overrides)
        check = DatasetCheck(create_dataset(name, params, data, root), Path(tmp))
        yield from run_gated("ready", names, check, skip="needs the data, which is not ready")


def prepare_from(dataset: PreparedDataset, raw: Path, overrides: Iterable[str]) -> None:
    """Prepare ``dataset`` from ``raw`` for the check, after checking the raw folder; a
    dataset prepared already is checked as it is, and a warning says that ``raw`` was only
    checked for its layout."""
    dataset.check_raw(raw)
    if (dataset.prepared_dir / MANIFEST).is_file():
        log.warning(
            "note: %s is already prepared in %s; checking that copy (--raw %s was checked "
            "for its layout only; prepare --force re-reads it)",
            dataset.name, dataset.prepared_dir, raw,
        )  # fmt: skip
        return
    own = [item for item in overrides if item.startswith(f"{dataset.name}.")]
    prepare_dataset(dataset.name, raw, dataset.data_root, type(dataset).check_settings, own)


def dataset_sections(name: str, cls: type, overrides: tuple[str, ...]):
    """The dataset's own section (its ``check_settings`` < the user's) and ``data``."""
    user = parse_overrides(overrides)
    for section in user:
        if section not in (name, "data"):
            raise ConfigError(f"check-dataset {name} takes only --set {name}.KEY or data.KEY")
    params = build_section(cls.Params, name, cls.check_settings, user.get(name))
    return params, build_section(DataConfig, "data", user.get("data"))


@dataclasses.dataclass
class DatasetCheck:
    """The dataset under check, the check's folder, and the splits once loaded."""

    dataset: SegmentationDataset
    folder: Path
    shared: Shared = dataclasses.field(default_factory=Shared)

    def loaded(self) -> dict:
        """Each split's patches (loaded once)."""
        return self.shared.get(
            "the splits", lambda: {s: self.dataset.load_split(s) for s in SPLITS}
        )

    def ready(self) -> Contract:
        dataset = self.dataset
        try:
            dataset.check_ready()
        except DatasetError as error:
            hint = ""
            if isinstance(dataset, PreparedDataset):
                layout = dataset.layout
                hint = f" (or let check-dataset prepare it: --raw FOLDER, laid out as {layout})"
            return failed("ready", f"{error}{hint}")
        where = "generated" if not isinstance(dataset, PreparedDataset) else "prepared"
        return passed("ready", f"{where} in {dataset.prepared_dir}")

    def classes(self) -> Contract:
        problems = class_problems(self.dataset)
        if problems:
            return failed("classes", "; ".join(problems))
        d = self.dataset
        return passed(
            "classes",
            f"{d.num_classes} classes ({', '.join(d.class_names)}), ignore index {d.ignore_index}",
        )

    def splits(self) -> Contract:
        splits, dataset = self.loaded(), self.dataset
        for split, patches in splits.items():
            if len(patches) == 0:
                return failed("splits", f"the {split} split is empty")
            if len(set(patches.ids)) != len(patches.ids):
                return failed(
                    "splits",
                    f"the {split} split repeats patch ids: label-subset "
                    "lists name patches by id, so each must be unique",
                )
        if dataset.train_size() != len(splits["train"]):
            return failed(
                "splits",
                f"train_size() is {dataset.train_size()} but the train "
                f"split has {len(splits['train'])} patches",
            )
        layouts = dataset.test_tiles()
        if layouts:
            layouts[0].assemble(splits["test"])  # DatasetError if the tile is not covered
        sizes = ", ".join(f"{len(p)} {s}" for s, p in splits.items())
        return passed(
            "splits",
            f"{sizes} patches, unique ids"
            + (f", {len(layouts)} whole test tiles" if layouts else ""),
        )

    def patches(self) -> Contract:
        bands = self.dataset.in_channels
        for split, patches in self.loaded().items():
            ends = np.unique([0, len(patches) - 1])
            images, masks = patches[ends]
            problem = patch_problem(images.numpy(), masks.numpy(), bands)
            if problem:
                return failed("patches", f"{split} split: {problem}")
        shape = tuple(self.loaded()["train"].shape[1:])
        return passed("patches", f"images uint8 {shape}, masks uint8 {shape[1:]}")

    def labels(self) -> Contract:
        d = self.dataset
        counts = {split: label_counts(p) for split, p in self.loaded().items()}
        for split, count in counts.items():
            values = set(np.flatnonzero(count).tolist())
            wrong = sorted(values - set(range(d.num_classes)) - {d.ignore_index})
            if wrong:
                return failed(
                    "labels",
                    f"{split} masks hold values {wrong[:5]} ({int(count[wrong].sum())} pixels), "
                    f"neither a class (0..{d.num_classes - 1}) nor the ignore index "
                    f"{d.ignore_index}: map them to a class or to ignore_index",
                )
            if not count[: d.num_classes].any():
                return failed("labels", f"every {split} pixel is ignored")
        present = int((counts["train"][: d.num_classes] > 0).sum())
        return passed(
            "labels",
            f"all values are classes or ignored; {present} of "
            f"{d.num_classes} classes occur in train",
        )

    def subsets(self) -> Contract:
        n = len(self.loaded()["train"])
        tiles = self.dataset.patch_tiles("train")
        if tiles is not None and len(tiles) != n:
            return failed(
                "subsets",
                f"patch_tiles('train') names {len(tiles)} tiles for "
                f"{n} patches: give one tile per patch",
            )
        strategies = ("random", "stratified") if tiles is not None else ("random",)
        for strategy in strategies:
            problem = subset_problem(strategy, n, tiles)
            if problem:
                return failed("subsets", f"{strategy} label lists: {problem}")
        return passed(
            "subsets",
            f"{' and '.join(strategies)} label lists of 1%, 10%, 100% are nested and seeded",
        )

    def band_stats(self) -> Contract:
        mean, std = self.dataset.band_stats()
        bands = self.dataset.in_channels
        if len(mean) != bands or len(std) != bands:
            return failed(
                "band-stats",
                f"band_stats() gives {len(mean)} means and {len(std)} stds for {bands} bands",
            )
        values = np.asarray([*mean, *std], dtype=float)
        if not np.isfinite(values).all() or min(std) <= 0:
            return failed(
                "band-stats",
                f"band_stats() gives mean {mean}, std {std}: each "
                "must be finite and each std positive",
            )
        if max(mean) > 1 or min(mean) < 0 or max(std) > 1:
            return failed(
                "band-stats",
                f"mean {mean}, std {std} are not on the 0..1 scale "
                "of the images the loops normalise",
            )
        shown = ", ".join(f"{m:.3f}±{s:.3f}" for m, s in zip(mean, std, strict=True))
        return passed("band-stats", f"per band {shown}")

    def deterministic(self) -> Contract:
        dataset = self.dataset
        if isinstance(dataset, PreparedDataset):
            return passed("deterministic", "read from its prepared files")
        again = create_dataset(dataset.name, dataset.params, dataset.data, self.folder / "again")
        for split, patches in self.loaded().items():
            other = again.load_split(split)
            first, second = patches[np.arange(len(patches))], other[np.arange(len(other))]
            same = patches.ids == other.ids and all(
                np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, second, strict=True)
            )
            if not same:
                return failed(
                    "deterministic",
                    f"generated twice, the {split} patches differ: "
                    "derive them from the dataset's settings "
                    "(its seed) only",
                )
        return passed("deterministic", "generated twice in two folders: the same patches")


# ---------------------------------------------------------------------------- pieces
def class_problems(dataset: SegmentationDataset) -> list[str]:
    names, problems = tuple(dataset.class_names), []
    if not names or not all(isinstance(n, str) and n for n in names):
        problems.append(f"class_names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        problems.append(f"class_names repeats a name: {names!r}")
    colours = tuple(getattr(dataset, "class_colours", ()) or ())
    if colours and len(colours) != len(names):
        problems.append(f"{len(colours)} class_colours for {len(names)} classes")
    ignore = dataset.ignore_index
    if not isinstance(ignore, int) or not 0 <= ignore <= 255:
        problems.append(f"ignore_index {ignore!r} is not a uint8 label value (0..255)")
    elif ignore < len(names):
        problems.append(
            f"ignore_index {ignore} is class {names[ignore]!r}: use a value "
            f">= {len(names)}, e.g. 255"
        )
    return problems


def patch_problem(images: np.ndarray, masks: np.ndarray, bands: int) -> str | None:
    if images.dtype != np.uint8 or masks.dtype != np.uint8:
        return f"images are {images.dtype} and masks {masks.dtype}; both must be uint8"
    if images.ndim != 4 or images.shape[1] != bands:
        return f"images have shape {images.shape}; expected [N, {bands}, H, W]"
    if masks.shape != (images.shape[0], *images.shape[2:]):
        return f"masks have shape {masks.shape}; expected {(images.shape[0], *images.shape[2:])}"
    return None


def label_counts(patches) -> np.ndarray:
    """Pixels per label value (256 of them) over all masks of ``patches``."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(patches), SCAN_CHUNK):
        masks = patches.read_masks(slice(start, start + SCAN_CHUNK))
        counts += np.bincount(masks.ravel(), minlength=256)
    return counts


def subset_problem(strategy: str, n: int, tiles) -> str | None:
    """What is wrong with the label lists the harness draws from ``n`` patches, or None."""
    lists = {
        seed: [labelled_indices_by(strategy, n, f, seed, tiles) for f in (0.01, 0.1, 1.0)]
        for seed in (0, 1)
    }
    for seed, (small, medium, full) in lists.items():
        if small != medium[: len(small)] or medium != full[: len(medium)]:
            return f"seed {seed}: 1% is not a prefix of 10%, or 10% of 100%"
        if sorted(full) != list(range(n)):
            return f"seed {seed}: 100% does not label each patch once"
        if labelled_indices_by(strategy, n, 0.1, seed, tiles) != medium:
            return f"seed {seed}: drawn twice, two different lists"
    if n > 2 and lists[0][2] == lists[1][2]:
        return "seeds 0 and 1 give the same order"
    return None
