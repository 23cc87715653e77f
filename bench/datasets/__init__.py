"""Dataset registry: one file per dataset, each registering itself under its CLI name."""

from bench.datasets import synthetic  # noqa: F401  (registers)
from bench.datasets.base import (
    DATASETS,
    IGNORE_INDEX,
    PatchSet,
    SegmentationDataset,
    default_data_root,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "PatchSet",
    "SegmentationDataset",
    "default_data_root",
    "register_dataset",
]
