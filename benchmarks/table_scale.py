"""Time ``bench table`` and ``bench report`` over N synthetic result records.

A real multi-dataset study is thousands of records: 5 datasets x 7 methods x 7 label
fractions x 10 seeds is 2,800 fine-tuning runs. This script plans such a sweep with the
harness's own planner (``bench.sweep.plan``; 5 datasets, 7 methods, fractions 1-100%, as
many seeds as N needs), writes the first N jobs' spec.json, result.json and, for
pretraining, log.jsonl (epoch and health lines) with the run store's writers
(``RunStore.prepare_run``, ``write_record``, ``failed_record``, ``append_log``), so every
record is one the harness accepts; 1% of the runs fail. Metrics are drawn from a fixed
random generator.

Each command then runs in fresh child Python processes (``bench.cli.main``, output thrown
away): first with no results index (``bench.report.index``: every file is read and the index
written), then ``--repeats`` times with the index up to date (the best kept); the files are
first dated back a minute, as those of a finished study. The children cache and use the
bytecode of ``bench``, as a user's Python does after the first command (an untimed first
child compiles it; this machine sets PYTHONDONTWRITEBYTECODE, which would have every child
compile the package again: 0.1 s more of "imports"). Each child reports, from
``resource.getrusage``, its peak resident memory after the imports and at the end, and its
times for the imports and the command; the parent times the whole process, interpreter
start included. Usage::

    python benchmarks/table_scale.py --records 1000 10000 [--keep DIR] [--repeats 2]

Prints one Markdown row per (records, command): the numbers BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("potsdam", "vaihingen", "deepglobe", "loveda_urban", "loveda_rural")
METHODS = ("random", "simclr", "moco", "byol", "false", "grass", "glcnet")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
FAILURE_RATE = 0.01
EPOCHS = 10  # epoch lines in each pretraining log.jsonl
COMMANDS = {"table": ["table"], "report": ["report"]}
INDEX = ".bench-index.marshal"  # bench.report.index.INDEX (not imported: bench stays out of here)

# Runs in the child: imports, then the command, each timed; peak RSS from getrusage (KiB on
# Linux). Writes them as JSON to the file named by $BENCH_TIMING (its output is thrown away).
CHILD = """
import json, os, resource, sys, time
start = time.perf_counter()
from bench.cli import main
imported = time.perf_counter()
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(sys.argv[1:])
done = time.perf_counter()
rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(os.environ["BENCH_TIMING"], "w") as out:
    out.write(json.dumps({"code": code, "import_s": imported - start, "command_s": done - imported,
                          "rss_imports_kib": rss_imports, "rss_peak_kib": rss_peak}))
"""


def planned_jobs(records: int) -> list:
    """The first ``records`` jobs of a sweep with enough seeds to have that many."""
    from bench.sweep import SweepSpec, plan

    per_seed = len(DATASETS) * ((len(METHODS) - 1) + len(METHODS) * len(FRACTIONS))
    seeds = tuple(range(math.ceil(records / per_seed)))
    spec = SweepSpec(methods=METHODS, datasets=DATASETS, fractions=FRACTIONS, seeds=seeds)
    jobs = plan(spec)
    if len(jobs) < records:
        raise SystemExit(f"the sweep has {len(jobs)} jobs, fewer than {records}")
    return jobs[:records]


def finetune_metrics(rng: random.Random, job, classes: int) -> dict:
    """Plausible scores: better with more labels and with pretraining, seed noise."""
    base = 0.30 + 0.08 * math.log10(100 * job.fraction) + 0.02 * METHODS.index(job.method) / 6
    miou = min(0.95, max(0.05, base + rng.gauss(0, 0.01)))
    per_class = [min(1.0, max(0.0, miou + rng.gauss(0, 0.05))) for _ in range(classes)]
    return {
        "miou": miou,
        "kappa": miou - 0.05 + rng.gauss(0, 0.005),
        "oa": min(1.0, miou + 0.25),
        "mean_f1": min(1.0, miou + 0.1),
        "image_miou": miou - 0.02,
        "per_class_iou": per_class,
        "per_class_f1": [min(1.0, v + 0.05) for v in per_class],
    }


def record_of(job, rng: random.Random) -> dict:
    """A finished record of ``job`` with the fields the harness's records have."""
    from bench.store import job_fields, now_iso, provenance

    record = {"status": "ok", **job_fields(job), "finished_at": now_iso(), **provenance()}
    record["device"] = "cpu"
    if job.kind == "pretrain":
        return record | {"preset": job.preset, "epochs": EPOCHS, "final_loss": 1.0}
    classes = [f"class{i}" for i in range(6)]
    pretrain = job.pretrain_job.job_id if job.pretrain_job is not None else None
    record |= {"pretrain_id": pretrain, "preset": job.preset, "protocol": "harness"}
    record |= {"class_names": classes, "ignore_index": 255, "pixels": 10**7}
    return record | finetune_metrics(rng, job, len(classes)) | rescoring_fields(job, rng)


def rescoring_fields(job, rng: random.Random) -> dict:
    """What a record keeps for re-scoring (bench.evaluation.kept_scores): per label variant
    (ISPRS: the full and the eroded labels) a 6 x 6 confusion matrix and the per-class
    per-image IoU; about 1.6 KiB of the 4 KiB of a real record."""
    variants = ("full", "noBoundary") if job.dataset in ("potsdam", "vaihingen") else ("full",)
    matrix = [[rng.randrange(10**7) for _ in range(6)] for _ in range(6)]
    return {
        "label_variant": "full",
        "confusion": {name: matrix for name in variants},
        "image_iou": {name: [rng.random() for _ in range(6)] for name in variants},
        "images_scored": 8064,
        "scores_file": "scores.npz",
    }


def write_results(root: Path, records: int) -> None:
    """Spec, record and (pretraining) log of the first ``records`` planned jobs."""
    from bench.jobs import job_spec
    from bench.store import RunStore, append_log, failed_record

    rng = random.Random(0)
    store = RunStore(root)
    store.open_for_writing()
    for job in planned_jobs(records):
        run_dir = store.prepare_run(job, job_spec(job))
        if rng.random() < FAILURE_RATE:
            error = RuntimeError("CUDA out of memory (synthetic)")
            store.write_record(job.job_id, failed_record(job, error, "Traceback (synthetic)"))
            continue
        if job.kind == "pretrain":
            for epoch in range(1, EPOCHS + 1):
                append_log(run_dir, {"kind": "epoch", "epoch": epoch, "loss": 5.0 / epoch})
                append_log(run_dir, health_line(epoch, rng))
        store.write_record(job.job_id, record_of(job, rng))


def health_line(epoch: int, rng: random.Random) -> dict:
    """A health pass's log.jsonl line (bench.health's fields), healthy."""
    return {
        "kind": "health", "epoch": epoch, "embedding_dim": 512,
        "embedding_std": rng.uniform(0.01, 0.03), "effective_rank": rng.uniform(20, 60),
        "alignment": rng.uniform(0.2, 0.8), "uniformity": rng.uniform(-3.5, -2.0),
        "knn_accuracy": rng.uniform(0.3, 0.7), "knn_chance": 0.3, "collapsed": False,
        "seconds": 0.5,
    }  # fmt: skip


def measure(args: list[str]) -> dict:
    """Run ``bench <args>`` in a child process; its times, peak RSS and exit code."""
    with tempfile.TemporaryDirectory() as scratch:
        timing = Path(scratch) / "timing.json"
        environment = {**os.environ, "BENCH_TIMING": str(timing)}
        environment.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as for a user
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environment,
            check=False,
        )
        wall = time.perf_counter() - start
        report = json.loads(timing.read_text()) if timing.exists() else {}
    return report | {"wall_s": wall}


def wall(run: dict) -> float:
    return run["wall_s"]


def age(root: Path, seconds: float = 60.0) -> None:
    """Date the folder's files back by ``seconds``, as those of a study finished a while ago
    (the index does not keep files written in the last seconds: bench.report.index)."""
    then = time.time() - seconds
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (then, then))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=1, help="runs per command (best kept)")
    parser.add_argument("--keep", type=Path, default=None, help="write results folders here")
    options = parser.parse_args()
    measure(["list"])  # an untimed first run: Python caches the bytecode of bench
    print("| records | command | index | wall (s) | imports (s) | command (s) | peak RSS (MiB) "
          "| RSS after imports (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for records in options.records:
        with tempfile.TemporaryDirectory() as scratch:
            root = (options.keep or Path(scratch)) / f"results-{records}"
            if not (root / "bench-store.json").exists():  # in a child: a parent that
                # imported torch passes its peak RSS on to the measured children's ru_maxrss
                write = (
                    f"import table_scale as t; t.write_results(t.Path({str(root)!r}), {records})"
                )
                here = Path(__file__).parent
                subprocess.run([sys.executable, "-c", write], check=True, cwd=here)
            age(root)
            for name, command in COMMANDS.items():
                args = [*command, "--results", str(root)]
                if name == "report":
                    args += ["--output", str(Path(scratch) / "report.html")]
                (root / INDEX).unlink(missing_ok=True)
                cold = measure(args)
                warm = min((measure(args) for _ in range(options.repeats)), key=wall)
                for state, best in (("none (written)", cold), ("up to date", warm)):
                    if best.get("code") not in (0, 3):
                        raise SystemExit(f"bench {name} failed: {best}")
                    print(
                        f"| {records:,} | {name} | {state} | {best['wall_s']:.2f} "
                        f"| {best['import_s']:.2f} | {best['command_s']:.2f} "
                        f"| {best['rss_peak_kib'] / 1024:.0f} "
                        f"| {best['rss_imports_kib'] / 1024:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
