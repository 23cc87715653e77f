"""Dataset registry: one file per dataset, each registering itself under its CLI name."""

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
    "register_dataset",
]
