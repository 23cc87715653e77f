"""Fine-tuning records as the columns tables read (:class:`RecordColumns`): which fields
(``FRAME_COLUMNS``), which metrics (``METRIC_LABELS``), and the checks a set of records must
pass before a table is built of them (one run per seed, the metrics asked for present).

Plain lists rather than a pandas frame: ``bench report`` builds 36 tables from one set of
records, and pandas (0.2 s to import, ~0.1 ms an operation) was a fifth of its time at
10,000 runs (BENCHMARKS.md); :func:`records_frame` gives the pandas frame for analysis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bench.config import ConfigError

if TYPE_CHECKING:
    import pandas as pd

# image_miou: GLCNet's per-image IoU averaged over the scored images (bench.metrics)
METRIC_LABELS = {
    "miou": "mIoU",
    "kappa": "Kappa",
    "oa": "OA",
    "mean_f1": "F1",
    "image_miou": "per-image mIoU",
}

# the fields of a record that say how it was fine-tuned and scored (the tables' captions)
PROTOCOL_FIELDS = (
    "protocol",
    "protocol_overrides",
    "evaluated_on",
    "eval_window",
    "eval_stride",
    "protocol_source",
)

# the fields of a fine-tuning record that tables read (a frame of these only: records hold
# provenance, settings and per-class F1 that no table shows)
FRAME_COLUMNS = (
    "job_id",
    "method",
    "dataset",
    "fraction",
    "seed",
    "status",
    "preset",
    "preset_caption",
    "convention",  # set on records re-scored under a scoring convention (bench.conventions)
    *METRIC_LABELS,
    "per_class_iou",
    "class_names",
    *PROTOCOL_FIELDS,
)


class RecordColumns:
    """Fine-tuning records as columns: ``self[name][i]`` is record i's field ``name``
    (``FRAME_COLUMNS``; None where the record has none)."""

    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["job_id"])

    def __getitem__(self, name: str) -> list:
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    @property
    def empty(self) -> bool:
        return len(self) == 0

    def take(self, rows: Iterable[int]) -> RecordColumns:
        """The records at ``rows``, in that order."""
        rows = list(rows)
        return RecordColumns({name: [v[i] for i in rows] for name, v in self.columns.items()})

    def where(self, field: str, value: Any) -> RecordColumns:
        """The records whose ``field`` equals ``value``."""
        return self.take(i for i, v in enumerate(self.columns[field]) if v == value)

    def groups(self, *fields: str) -> dict[tuple, list[int]]:
        """Each combination of values of ``fields`` -> its rows, in row order."""
        groups: dict[tuple, list[int]] = {}
        for row, key in enumerate(zip(*(self.columns[f] for f in fields), strict=True)):
            groups.setdefault(key, []).append(row)
        return groups

    def to_frame(self) -> pd.DataFrame:
        """The records as a pandas frame, a row each (pandas imported here only)."""
        import pandas

        return pandas.DataFrame(self.columns)


def record_columns(records: Iterable[dict[str, Any]]) -> RecordColumns:
    """Every fine-tuning record (any status), the fields tables read (``FRAME_COLUMNS``,
    None where a record lacks one); checks there is one run per seed."""
    rows = [r for r in records if r.get("kind") == "finetune"]
    columns = RecordColumns({name: [r.get(name) for r in rows] for name in FRAME_COLUMNS})
    check_one_run_per_seed(columns)
    return columns


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """:func:`record_columns` as a pandas frame: one row per fine-tuning record."""
    return record_columns(records).to_frame()


def columns_of(records: Iterable[dict[str, Any]] | RecordColumns) -> RecordColumns:
    """The columns of ``records``; columns from :func:`record_columns` as they are (a
    report builds several tables from them)."""
    return records if isinstance(records, RecordColumns) else record_columns(records)


def check_one_run_per_seed(records: RecordColumns) -> None:
    key = ("method", "dataset", "fraction", "seed")
    repeated = [rows for rows in records.groups(*key).values() if len(rows) > 1]
    if not repeated:
        return
    ids = records["job_id"]
    keys = [(*(records[f][rows[0]] for f in key), min(ids[i] for i in rows)) for rows in repeated]
    (method, dataset, fraction, seed, _), rows = min(zip(keys, repeated, strict=True))
    raise ConfigError(
        f"{sum(map(len, repeated))} fine-tuning records repeat a (method, dataset, fraction, "
        f"seed), e.g. {method} on {dataset} at {fraction:g}, seed {seed}: "
        f"{', '.join(sorted(str(ids[i]) for i in rows))}; these runs differ in their "
        "settings and a table needs one run per seed: put sweeps with different settings in "
        "different --results folders"
    )


def check_metrics_recorded(records: RecordColumns, metrics: tuple[str, ...]) -> None:
    """Each of ``metrics`` has a value in some finished record (ConfigError naming the
    metrics the records have otherwise: a table of empty cells says nothing)."""
    finished = [i for i, status in enumerate(records["status"]) if status == "ok"]
    if not finished:
        return
    has = [m for m in METRIC_LABELS if any(_present(records[m][i]) for i in finished)]
    absent = [m for m in metrics if m not in has]
    if absent:
        raise ConfigError(
            f"no finished fine-tuning record has metric {absent[0]!r} (records written "
            f"before it existed lack it); metrics these records have: {', '.join(has)}"
        )


def _present(value: Any) -> bool:
    """Not None and not NaN (what pandas calls ``notna``)."""
    return value is not None and value == value


def in_percent(value: Any) -> float:
    """A metric's value in percent; NaN where it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) * 100
