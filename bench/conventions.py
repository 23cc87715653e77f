"""Scoring conventions: the same predictions scored as each paper scores them.

Papers on one dataset report numbers that cannot be put side by side because they score
differently: ISPRS Potsdam/Vaihingen with or without ``clutter`` in the mean, on full or
eroded (``_noBoundary``) labels; one confusion matrix over the test set or GLCNet's
per-image IoU. A :class:`Convention` declares one way of scoring; every fine-tuning record
keeps what is needed to apply any of them afterwards (the dataset-level confusion matrix of
each label variant in the record, the per-image ones in ``scores.npz`` beside it;
:mod:`bench.evaluation`), so ``bench table --convention NAME`` re-scores in seconds without
rerunning anything.

What a convention changes, and nothing else:

- ``labels``: which label variant of the test split is scored (ISPRS: ``full`` or
  ``no_boundary``); None: the labels the run was trained on.
- ``ignored``: classes whose pixels are not scored at all, as if unlabelled (predictions of
  those classes elsewhere still count as errors).
- ``left_out``: classes left out of the means (mIoU, mean F1); their pixels still count in
  OA, Kappa and the other classes' IoU (what GeoSeg does with clutter).
- ``averaging``: ``dataset`` (mIoU of one confusion matrix over the test set) or ``image``
  (GLCNet's per-image IoU, :func:`bench.metrics.image_metrics`, becomes the mIoU). OA,
  Kappa and mean F1 always come from the dataset-level matrix.

A dataset's default convention is the first registered that names it, else ``all``. A
plugin declares its own with :func:`register_convention` (docs/PLUGINS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.config import ConfigError, check_unique
from bench.plugins import INSTALLED
from bench.registry import Registry
from bench.store import read_scores

NOT_RESCORABLE = "not re-scorable"  # the status of a record a convention cannot score
# what re-scoring reads of a record and nothing else does (the results index keeps records
# without them: bench.report.index)
RESCORING_INPUTS = ("confusion", "image_iou")
SCORE_FIELDS = (
    "miou", "kappa", "oa", "mean_f1", "per_class_iou", "per_class_f1", "pixels",
    "image_miou", "per_class_image_iou", "images_scored",
)  # fmt: skip


@dataclass(frozen=True)
class Convention:
    """One way of scoring a dataset's predictions: ``labels`` (a label variant, None: the
    run's own), ``ignored`` and ``left_out`` (class names), ``averaging`` (module
    docstring); ``source`` says who scores this way (a paper and release only where they
    were checked, else "common practice"), ``datasets`` which datasets it is for (empty:
    any)."""

    name: str
    summary: str
    source: str
    datasets: tuple[str, ...] = ()
    labels: str | None = None
    ignored: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()
    averaging: Literal["dataset", "image"] = "dataset"

    def applies_to(self, dataset: str) -> bool:
        return not self.datasets or dataset in self.datasets

    @property
    def classes_counted(self) -> str:
        """Which classes the means count, in words."""
        out = [
            *(f"{c} ignored" for c in self.ignored),
            *(f"{c} not in the mean" for c in self.left_out),
        ]
        return "all classes" + (f" ({', '.join(out)})" if out else "")

    @property
    def caption(self) -> str:
        labels = f"{self.labels} labels" if self.labels else "the labels trained on"
        averaged = "per-image IoU averaged over images" if self.averaging == "image" else (
            "one confusion matrix over the test set"
        )  # fmt: skip
        return (
            f"scored under convention {self.name}: {self.classes_counted}, {labels}, "
            f"{averaged} ({self.source})"
        )


CONVENTIONS: Registry[Convention] = Registry("convention", plugins=INSTALLED)


def register_convention(convention: Convention) -> Convention:
    """Register ``convention`` under its name (a plugin's way to declare its own)."""
    return CONVENTIONS.register(convention.name)(convention)


ISPRS = ("potsdam", "vaihingen")
for _convention in (
    Convention(
        name="isprs-6",
        summary="all six ISPRS classes, full labels",
        source="common practice; the harness's scores before conventions existed",
        datasets=ISPRS,
        labels="full",
    ),
    Convention(
        name="isprs-5",
        summary="clutter left out of the mIoU and F1 means, full labels",
        source="common practice",
        datasets=ISPRS,
        labels="full",
        left_out=("clutter",),
    ),
    Convention(
        name="isprs-5-noboundary",
        summary="clutter left out of the means, eroded (_noBoundary) labels",
        source=(
            "UNetFormer (Wang et al., ISPRS J. Photogramm. Remote Sens. 2022), release "
            "WangLibo1995/GeoSeg: README (test masks from the eroded files), vaihingen_test.py "
            "(F1 and mIoU over iou_per_class[:-1], clutter the last class; OA over all)"
        ),
        datasets=ISPRS,
        labels="no_boundary",
        left_out=("clutter",),
    ),
    Convention(
        name="isprs-6-noboundary",
        summary="all six classes, eroded (_noBoundary) labels",
        source=(
            "MMSegmentation's ISPRS set-up: docs dataset_prepare (5_Labels_all_noBoundary.zip, "
            "..._ground_truth_eroded_COMPLETE.zip), mmseg/datasets/potsdam.py (six classes)"
        ),
        datasets=ISPRS,
        labels="no_boundary",
    ),
    Convention(
        name="loveda",
        summary="all seven classes, background included; no-data pixels not scored",
        source=(
            "LoveDA (Wang et al., NeurIPS 2021 Datasets and Benchmarks); MMSegmentation's "
            "LoveDADataset (0, no-data, the ignore index)"
        ),
        datasets=("loveda_urban", "loveda_rural"),
    ),
    Convention(
        name="deepglobe",
        summary="six classes; unknown (black) pixels not scored",
        source="DeepGlobe 2018 land cover challenge (Demir et al., CVPR Workshops 2018)",
        datasets=("deepglobe",),
    ),
    Convention(
        name="glcnet",
        summary="GLCNet's per-image IoU as the mIoU, all classes",
        source=(
            "GLCNet (Li et al., IEEE TGRS 2022), release G-RSIM/T-SS-GLCNet: main_ss.py val, "
            "dltrain.py compute_class_iou"
        ),
        averaging="image",
    ),
    Convention(
        name="all",
        summary="every class of the dataset, its own labels, one confusion matrix",
        source="the harness's native scoring; the default of datasets without their own",
    ),
):
    register_convention(_convention)


def default_convention(dataset: str) -> Convention:
    """The first registered convention for ``dataset``, else ``all``."""
    for name in CONVENTIONS.names():
        convention = CONVENTIONS.get(name)
        if convention.datasets and dataset in convention.datasets:
            return convention
    return CONVENTIONS.get("all")


def check_conventions(names: Iterable[str]) -> tuple[Convention, ...]:
    """The conventions ``names``, each named once (UnknownNameError listing the valid)."""
    names = tuple(names)
    check_unique("convention", names)
    return tuple(CONVENTIONS.get(name, where="for --convention") for name in names)


def scored_labels(record: dict[str, Any], convention: Convention) -> str:
    """The label variant ``convention`` scores ``record`` on."""
    return convention.labels or str(record.get("label_variant"))


def rescore_problem(record: dict[str, Any], convention: Convention) -> str | None:
    """Why the finished fine-tuning ``record`` cannot be scored under ``convention`` (None
    when it can, the per-image scores aside)."""
    if not isinstance(record.get("confusion"), dict) or "label_variant" not in record:
        return "it was written before records kept their confusion matrices; rerun it"
    variant = scored_labels(record, convention)
    if variant not in record["confusion"]:
        return (
            f"its run scored no {variant} labels (scored: {', '.join(record['confusion'])}); "
            "prepare the dataset again with them in the raw folder (--force), then rerun it"
        )
    names = list(record.get("class_names") or [])
    unknown = [c for c in (*convention.ignored, *convention.left_out) if c not in names]
    if unknown:
        return f"it has no class {unknown[0]!r} (its classes: {', '.join(names)})"
    return None


def convention_scores(
    record: dict[str, Any], convention: Convention, per_image: dict[str, np.ndarray] | None
) -> dict[str, Any]:
    """The score fields of ``record`` under ``convention`` (:data:`SCORE_FIELDS`), from its
    stored matrices; the per-image ones (None without ``per_image``, the arrays of its
    ``scores.npz``) only where ``per_image`` holds the variant's matrices."""
    import torch  # here, not at the top: `table` and `report` without --convention skip it

    from bench.metrics import metrics_from_confusion, without_targets

    names = list(record["class_names"])
    variant = scored_labels(record, convention)
    ignored = [names.index(c) for c in convention.ignored]
    averaged = torch.ones(len(names), dtype=torch.bool)
    averaged[[*ignored, *(names.index(c) for c in convention.left_out)]] = False
    matrix = torch.tensor(record["confusion"][variant], dtype=torch.int64)
    scores = metrics_from_confusion(without_targets(matrix, ignored), averaged)
    for index in ignored:  # not scored: no IoU or F1
        scores["per_class_iou"][index] = scores["per_class_f1"][index] = float("nan")
    scores.update(image_scores(record, variant, ignored, averaged.numpy(), per_image))
    if convention.averaging == "image":
        scores["miou"] = scores["image_miou"]
    return scores


def image_scores(record, variant: str, ignored: list[int], averaged, per_image) -> dict:
    """The per-image scores of ``variant``: from the per-class per-image IoU the record
    keeps when no class is ignored, else from the per-image matrices in ``per_image``
    (the arrays of its scores.npz); None where neither is there."""
    from bench.metrics import image_metrics, image_summary, without_targets

    kept = (record.get("image_iou") or {}).get(variant)
    if not ignored and kept is not None:
        return image_summary(kept, record["images_scored"], averaged)
    images = (per_image or {}).get(f"confusions_{variant}")
    if images is None:
        return dict.fromkeys(("image_miou", "per_class_image_iou", "images_scored"))
    return image_metrics(without_targets(images, ignored), averaged)


def needs_per_image(convention: Convention, image_level: bool) -> bool:
    """Whether scoring under ``convention`` reads scores.npz: image-level scores are wanted
    (``image_level``, or the convention averages per image) and it ignores a class."""
    return bool(convention.ignored) and (image_level or convention.averaging == "image")


def rescored(
    record: dict[str, Any], convention: Convention, per_image: dict[str, np.ndarray] | None
) -> dict[str, Any]:
    """``record`` with its scores under ``convention`` and the convention's name; a
    finished record that cannot be re-scored gets the status :data:`NOT_RESCORABLE` and
    ``rescore_problem`` saying why; other records are only marked."""
    marked = {**record, "convention": convention.name}
    if record.get("kind") != "finetune" or record.get("status") != "ok":
        return marked
    problem = rescore_problem(record, convention)
    scores = convention_scores(record, convention, per_image) if problem is None else {}
    if problem is None and scores["miou"] is None:  # per image, without per-image scores
        problem = "its per-image scores (scores.npz beside the record) are missing"
    if problem is not None:
        cleared = dict.fromkeys(SCORE_FIELDS)
        return {**marked, **cleared, "status": NOT_RESCORABLE, "rescore_problem": problem}
    return {**marked, **scores}


def rescore_records(
    records: Iterable[dict[str, Any]],
    names: Iterable[str],
    results: Path | str,
    image_level: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The fine-tuning ``records`` of a results folder scored again under each convention
    ``names`` (:func:`rescored`), and notes for the reader: records left out because a
    convention is not for their dataset, records that cannot be re-scored and why. With
    several conventions each record's dataset is tagged ``dataset [convention]``, so a
    table puts the conventions side by side. The per-image scores are read (``image_level``,
    or a convention that averages per image) from ``<results>/<job id>/scores.npz``."""
    conventions = check_conventions(names)
    finetunes = [r for r in records if r.get("kind") == "finetune"]
    datasets = sorted({str(r.get("dataset")) for r in finetunes})
    per_image: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}
    out, notes = [], []
    for convention in conventions:
        chosen = [r for r in finetunes if convention.applies_to(str(r.get("dataset")))]
        if finetunes and not chosen:
            raise ConfigError(
                f"convention {convention.name} is for {', '.join(convention.datasets)}; these "
                f"results are on {', '.join(datasets)}"
            )
        if len(chosen) < len(finetunes):
            notes.append(
                f"{len(finetunes) - len(chosen)} records of other datasets left out: convention "
                f"{convention.name} is for {', '.join(convention.datasets)}"
            )
        reads = needs_per_image(convention, image_level)
        for record in chosen:
            key = (str(record.get("job_id")), f"confusions_{scored_labels(record, convention)}")
            if reads and key not in per_image:  # only the arrays of the labels scored
                per_image[key] = read_scores(Path(results) / key[0], [key[1]])
            new = rescored(record, convention, per_image.get(key) if reads else None)
            if len(conventions) > 1:
                new["dataset"] = f"{record['dataset']} [{convention.name}]"
            out.append(new)
        notes.extend(unscored_notes(out, convention))
    return out, notes


def unscored_notes(records: list[dict[str, Any]], convention: Convention) -> list[str]:
    """One line per reason records could not be scored under ``convention``."""
    reasons: dict[str, list[str]] = {}
    for record in records:
        if record.get("convention") == convention.name and record["status"] == NOT_RESCORABLE:
            reasons.setdefault(record["rescore_problem"], []).append(str(record["job_id"]))
    return [
        f"{len(ids)} records cannot be re-scored under {convention.name} ({ids[0]}"
        f"{' ...' if len(ids) > 1 else ''}): {reason}"
        for reason, ids in reasons.items()
    ]
