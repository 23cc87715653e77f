"""How long does re-scoring a sweep under a convention take, and how much do the kept
matrices add to each run folder? (issue 30)

    python benchmarks/rescoring.py [--records 100] [--images 8064]

It writes ``--records`` finished fine-tuning records of a Potsdam-sized test split into a
temporary results folder exactly as ``run_finetuning`` keeps them (``bench.evaluation``'s
``kept_scores``, ``bench.finetune.keep_per_image_scores``): two label variants, a 6 x 6
dataset-level matrix each in ``result.json`` and ``--images`` per-image matrices each in
``scores.npz`` (8,064 = the 14 test tiles x 576 patches of 256 px). Per-image counts are
drawn at random (65,536 pixels per patch, about 80% on the diagonal; the eroded variant
loses about 10%). Then it times, per convention, re-scoring the records
(``bench.conventions.rescore_records``) and the whole ``bench table --convention`` path
(reading every record, re-scoring, building and rendering the table), both with the
per-image mIoU; the last row, a convention ignoring a class, reads every ``scores.npz``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.conventions import Convention, register_convention, rescore_records
from bench.datasets.isprs import ISPRS_CLASSES
from bench.evaluation import kept_scores
from bench.finetune import keep_per_image_scores
from bench.metrics import SegmentationScores
from bench.report import render, results_table
from bench.store import RECORD, SCORES, RunStore

CONVENTIONS = ("isprs-6", "isprs-5-noboundary", "glcnet")
# not registered by the harness: per-image scores with a class's pixels ignored need the
# per-image matrices of scores.npz (the others read the record alone)
IGNORING = Convention(
    "ignore-clutter", "clutter pixels not scored", "this benchmark", ignored=("clutter",)
)
METHODS = ("random", "imagenet", "simclr", "moco", "byol", "false", "grass", "glcnet", "multitask")


def per_image_confusions(rng: np.random.Generator, images: int) -> dict[str, np.ndarray]:
    """Random per-image confusion matrices of both label variants, ``[images, 6, 6]``."""
    k = 6
    probabilities = np.full((k, k), 0.2 / (k * (k - 1)))
    np.fill_diagonal(probabilities, 0.8 / k)
    full = rng.multinomial(256 * 256, probabilities.reshape(-1), size=images).reshape(-1, k, k)
    eroded = full - rng.binomial(full, 0.1)
    return {"full": full.astype(np.int64), "no_boundary": eroded.astype(np.int64)}


def write_records(results: Path, count: int, images: int) -> None:
    rng = np.random.default_rng(0)
    for n in range(count):
        method, seed = METHODS[n % len(METHODS)], n // len(METHODS)
        scores = {}
        for variant, matrices in per_image_confusions(rng, images).items():
            scores[variant] = SegmentationScores(6)
            scores[variant].add(torch.from_numpy(matrices))
        kept = kept_scores(scores, "full", [f"patch{i}" for i in range(images)])
        job_id = f"finetune-{method}-potsdam-f0.1-s{seed}-bench"
        (results / job_id).mkdir(parents=True)
        keep_per_image_scores(results / job_id, kept)
        record = {"status": "ok", "kind": "finetune", "job_id": job_id, "method": method,
                  "dataset": "potsdam", "fraction": 0.1, "seed": seed, "preset": "quick",
                  "class_names": list(ISPRS_CLASSES), **kept}  # fmt: skip
        RunStore(results).write_record(job_id, record)


ADDED = ("confusion", "image_iou", "label_variant", "scores_file")  # what issue 30 added


def sizes(results: Path) -> dict[str, float]:
    """Mean bytes per run: the record, what issue 30 added to it, the per-image file."""
    records = sorted(results.glob(f"*/{RECORD}"))
    added = []
    for path in records:
        record = json.loads(path.read_text())
        without = {k: v for k, v in record.items() if k not in ADDED}
        added.append(path.stat().st_size - len(json.dumps(without, indent=2, sort_keys=True)))
    return {
        "result.json": float(np.mean([p.stat().st_size for p in records])),
        "of which added by issue 30": float(np.mean(added)),
        "scores.npz": float(np.mean([(p.parent / SCORES).stat().st_size for p in records])),
    }


def timed(function, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--images", type=int, default=8064)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results"
        write_records(results, args.records, args.images)
        for name, size in sizes(results).items():
            print(f"{name:<28} {size / 1024:8.1f} KiB per run")
        records = RunStore(results).records()
        print(f"\n{'convention':<22} {'rescore_records':>16} {'bench table path':>17}")
        register_convention(IGNORING)  # the one kind that reads scores.npz
        metrics = ("miou", "image_miou")
        for convention in (*CONVENTIONS, IGNORING.name):
            rescore = timed(lambda c=convention: rescore_records(records, [c], results, True))
            table = timed(
                lambda c=convention: render(results_table(results, metrics, conventions=[c])[0])
            )
            print(f"{convention:<22} {rescore:15.3f}s {table:16.3f}s")


if __name__ == "__main__":
    main()
