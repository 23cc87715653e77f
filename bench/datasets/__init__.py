"""Dataset registry: one file per dataset, each registering itself under its CLI name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# isort: split
# Registration order is the order of `list`.
from bench.datasets import synthetic, isprs, deepglobe, loveda, folder  # noqa: F401, I001
from bench.datasets.base import (
    DATASETS,
    IGNORE_INDEX,
    DatasetError,
    PatchSet,
    SegmentationDataset,
    create_dataset,
    default_data_root,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "DatasetError",
    "PatchSet",
    "SegmentationDataset",
    "create_dataset",
    "default_data_root",
    "prepare_dataset",
    "register_dataset",
]


def prepare_dataset(
    name: str,
    raw: Path | str | None = None,
    data_root: Path | str | None = None,
    settings: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    seeds: Iterable[int] = (0, 1, 2),
    fractions: Iterable[float] = (0.01, 0.1),
    force: bool = False,
) -> tuple[SegmentationDataset, dict[str, Any] | None]:
    """Read the raw release of dataset ``name`` in ``raw`` once into patches under
    ``data_root`` (``python -m bench prepare``), with the label-subset lists of ``seeds`` x
    ``fractions``. ``settings`` and ``overrides`` (``name.key=value``) set the dataset's
    section. Returns the dataset and its manifest; a generated dataset (synthetic) is only
    rendered and cached, and has no manifest."""
    from bench.config import ConfigError, DataConfig, build_section, parse_overrides
    from bench.datasets.prepared import PreparedDataset
    from bench.datasets.subsets import check_fractions, check_seeds

    cls = DATASETS.get(name)
    seeds, fractions = check_seeds(tuple(seeds)), check_fractions(tuple(fractions))
    user = parse_overrides(tuple(overrides))
    for section in user:
        if section != name:
            raise ConfigError(f"prepare {name} takes only --set {name}.KEY=VALUE")
    params = build_section(cls.Params, name, dict(settings or {}), user.get(name))
    dataset = create_dataset(name, params, DataConfig(), data_root)
    if not isinstance(dataset, PreparedDataset):
        for split in ("train", "test"):
            dataset.load_split(split)
        return dataset, None
    if raw is None:
        raise ConfigError(f"prepare {name} needs --raw FOLDER; expected layout:\n{cls.layout}")
    return dataset, dataset.prepare(Path(raw), seeds, fractions, force=force)
