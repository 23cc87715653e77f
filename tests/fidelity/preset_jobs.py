"""The pretraining job of a method under a preset, and the method it builds (for the
fidelity tests: what ``bench run --preset paper`` would train)."""

from __future__ import annotations

import torch

from bench.methods import create_method
from bench.sweep import SweepSpec, plan


def preset_job(name: str, *overrides: str, preset: str = "paper"):
    """``name``'s pretraining job under ``preset`` with ``--set`` ``overrides``."""
    spec = SweepSpec(methods=(name,), preset=preset, fractions=(0.1,), seeds=(0,),
                     overrides=overrides)  # fmt: skip
    return next(job for job in plan(spec) if job.kind == "pretrain")


def build(job, bands: int = 3, mean: float = 0.0, std: float = 1.0, train_size: int = 1024):
    """The job's method, seeded, as the loop builds it."""
    torch.manual_seed(0)
    return create_method(
        job.method, job.method_params, job.pretrain, bands, [mean] * bands, [std] * bands,
        train_size,
    )  # fmt: skip


def torch_scheduler_lrs(optimizer, scheduler, epochs: int, step) -> list[float]:
    """The LR of each epoch under a torch scheduler driven as a release drives it:
    ``step(scheduler, epoch)`` after every epoch."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step(scheduler, epoch)
    return lrs
