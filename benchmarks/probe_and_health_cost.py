"""What the linear protocol and the health pass cost, each measured in one process.

    python benchmarks/probe_and_health_cost.py linear [--repeats 3] [--steps 20]
    python benchmarks/probe_and_health_cost.py health [--epochs 2] [--method simclr]

``linear`` times the training step of the ``linear`` protocol against the ``harness``
protocol's (``bench.perf``'s bare fine-tuning loop, the jobs' own set-up; quick preset: 64 px
patches, batch 8; the best of ``--repeats`` interleaved runs of ``--steps`` steps each), then
one whole fine-tuning of each (``run_finetuning``: 100 steps and the test split's scoring),
and prints the ratios.

``health`` pretrains ``--method`` for ``--epochs`` epochs of the ``cpu`` preset (2048 images
of 64 px, batch 64: 32 steps an epoch) and prints, per epoch, the training time, the health
pass's time (``bench.health``, 64 images) and their ratio, from the run's log.jsonl.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench import SweepSpec, plan
from bench.finetune import run_finetuning
from bench.jobs import FinetuneJob, PretrainJob
from bench.perf import bare_finetuning
from bench.pretrain import run_pretraining
from bench.store import read_log
from bench.sweep import check_data

CPU = torch.device("cpu")


def finetune_job(protocol: str, *overrides: str) -> FinetuneJob:
    spec = SweepSpec(
        methods=("random",),
        fractions=(1.0,),
        seeds=(0,),
        overrides=(f"finetune.protocol={protocol}", *overrides),
    )
    return next(j for j in plan(spec) if isinstance(j, FinetuneJob))


def linear_cost(repeats: int, steps: int, data: Path) -> None:
    short = {p: finetune_job(p, f"finetune.steps={steps}") for p in ("harness", "linear")}
    check_data(list(short.values()), data)
    rates = {p: 0.0 for p in short}
    for _ in range(repeats):  # interleaved, best of each
        for protocol, job in short.items():
            rates[protocol] = max(rates[protocol], bare_finetuning(job, data, CPU))
    totals = {}
    for protocol in short:
        job = finetune_job(protocol)
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            record = run_finetuning(job, Path(run_dir), data, device=CPU)
            totals[protocol] = (record, time.perf_counter() - started)
    print("| measure | harness | linear | harness / linear |\n|---|---|---|---|")
    h, lin = rates["harness"], rates["linear"]
    print(f"| training step (patches/s, best of {repeats}) | {h:.1f} | {lin:.1f} | {lin / h:.1f} |")
    for key in ("train_seconds", "eval_seconds"):
        a, b = totals["harness"][0][key], totals["linear"][0][key]
        print(f"| {key} | {a:.1f} | {b:.1f} | {a / b:.1f} |")
    a, b = totals["harness"][1], totals["linear"][1]
    print(f"| whole fine-tuning job (s) | {a:.1f} | {b:.1f} | {a / b:.1f} |")
    print(f"| test mIoU (random encoder) | {totals['harness'][0]['miou']:.3f} | "
          f"{totals['linear'][0]['miou']:.3f} | |")  # fmt: skip


def health_cost(epochs: int, method: str, data: Path) -> None:
    spec = SweepSpec(
        methods=(method,),
        fractions=(1.0,),
        seeds=(0,),
        preset="cpu",
        overrides=(f"pretrain.epochs={epochs}",),
    )
    job = next(j for j in plan(spec) if isinstance(j, PretrainJob))
    check_data([job], data)
    with tempfile.TemporaryDirectory() as folder:
        run_pretraining(job, Path(folder), data, device=CPU)
        entries = read_log(Path(folder))
    train = {e["epoch"]: e["epoch_seconds"] for e in entries if e["kind"] == "epoch"}
    passes = {e["epoch"]: e for e in entries if e["kind"] == "health"}
    print("| epoch | training (s) | health pass (s) | pass / training | std x sqrt(d) | rank |")
    print("|---|---|---|---|---|---|")
    for epoch, seconds in train.items():
        health = passes[epoch]
        std = health["embedding_std"] * health["embedding_dim"] ** 0.5
        print(
            f"| {epoch} | {seconds:.1f} | {health['seconds']:.2f} | "
            f"{100 * health['seconds'] / seconds:.2f}% | {std:.3f} | "
            f"{health['effective_rank']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    linear = sub.add_parser("linear")
    linear.add_argument("--repeats", type=int, default=3)
    linear.add_argument("--steps", type=int, default=20)
    health = sub.add_parser("health")
    health.add_argument("--epochs", type=int, default=2)
    health.add_argument("--method", default="simclr")
    parser.add_argument("--data", type=Path, default=None, help="data root (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        if args.what == "linear":
            linear_cost(args.repeats, args.steps, data)
        else:
            health_cost(args.epochs, args.method, data)


if __name__ == "__main__":
    main()
