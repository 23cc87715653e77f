"""Result records -> pandas frame -> comparison tables.

Rows are methods (baselines first, then pretraining methods in registry order); columns are
dataset x label fraction x metric; a cell is the mean over seeds in percent, with the std
and the seed count when there is more than one seed. Runs that are missing or failed show
as "n/a", never as numbers, and the footer counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from bench.config import PRESETS
from bench.methods import METHODS

METRIC_LABELS = {"miou": "mIoU", "kappa": "Kappa", "oa": "OA", "mean_f1": "F1"}
MISSING = "n/a"


def method_order(names: Iterable[str]) -> list[str]:
    """Baselines first, then pretraining methods, each in registry order; unknown last."""
    names = set(names)
    registered = METHODS.names()
    baselines = [m for m in registered if m in names and not METHODS.get(m).pretrains]
    pretrained = [m for m in registered if m in names and METHODS.get(m).pretrains]
    return baselines + pretrained + sorted(names - set(registered))


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per fine-tuning record (any status)."""
    rows = [r for r in records if r.get("kind") == "finetune"]
    columns = ["method", "dataset", "fraction", "seed", "status", *METRIC_LABELS, "preset"]
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame


def comparison_table(
    records: Iterable[dict[str, Any]], metrics: tuple[str, ...] = ("miou", "kappa")
) -> str:
    """A Markdown table of mean (± std, n seeds) per method and dataset x fraction x metric."""
    unknown = [m for m in metrics if m not in METRIC_LABELS]
    if unknown:
        raise ValueError(
            f"unknown metric {unknown[0]!r}; valid metrics: {', '.join(METRIC_LABELS)}"
        )
    frame = records_frame(records)
    if frame.empty:
        return "no fine-tuning results yet"
    ok = frame[frame["status"] == "ok"]
    datasets = sorted(frame["dataset"].unique())
    fractions = sorted(frame["fraction"].unique())
    methods = method_order(frame["method"].unique())
    rows, missing = [], 0
    for method in methods:
        row = {"method": method}
        for dataset in datasets:
            for fraction in fractions:
                runs = ok[
                    (ok["method"] == method)
                    & (ok["dataset"] == dataset)
                    & (ok["fraction"] == fraction)
                ]
                for metric in metrics:
                    header = _column(dataset, fraction, metric, len(datasets) > 1)
                    row[header] = _cell(runs[metric].astype(float) * 100)
                    missing += row[header] == MISSING
        rows.append(row)
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
    failed = int((frame["status"] != "ok").sum())
    lines = [table, ""]
    lines.append(
        "Cells: mean over seeds in %, ± std (n seeds) when n > 1; "
        "dataset-level confusion-matrix metrics on the test split."
    )
    if missing or failed:
        lines.append(f"Missing cells: {missing}; failed or skipped runs: {failed}.")
    for preset in sorted({p for p in frame["preset"].dropna().unique()}):
        if preset in PRESETS:
            lines.append(f"Note: {PRESETS[preset].caption}.")
    return "\n".join(lines)


def _column(dataset: str, fraction: float, metric: str, with_dataset: bool) -> str:
    label = f"{100 * fraction:g}% {METRIC_LABELS[metric]}"
    return f"{dataset} {label}" if with_dataset else label


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return MISSING
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} ({len(values)})"
