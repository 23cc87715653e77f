"""Reading a pretraining's health signals (:mod:`bench.health` computes them): when an epoch
counts as collapsed, when ``pretrain.fail_fast_epochs`` stops the run, and the one-line note
``bench status`` and the HTML report show. Plain numbers from log.jsonl lines, no torch, so
the commands that only read results stay light."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class CollapseError(RuntimeError):
    """A pretraining stopped by ``pretrain.fail_fast_epochs``: its embeddings collapsed."""


def collapsed(health: dict[str, Any], threshold: float) -> bool:
    """Whether these signals say collapse: std below ``threshold / sqrt(d)``, or not finite."""
    std = health["embedding_std"]
    return not math.isfinite(std) or std * math.sqrt(health["embedding_dim"]) < threshold


def collapse_streak(collapsed_epochs: Sequence[int], epoch: int) -> int:
    """How many consecutive epochs up to ``epoch`` (1-based) are in ``collapsed_epochs``."""
    streak = 0
    while epoch - streak in collapsed_epochs:
        streak += 1
    return streak


def fail_fast_reason(health: dict[str, Any], collapsed_epochs: Sequence[int], epoch: int, cfg):
    """Why a run at the end of ``epoch`` (1-based) stops under ``cfg.fail_fast_epochs``
    (``cfg``: a :class:`bench.config.PretrainConfig`), or None when it goes on."""
    streak = collapse_streak(collapsed_epochs, epoch)
    if not cfg.fail_fast_epochs or streak < cfg.fail_fast_epochs:
        return None
    first = epoch - streak + 1
    span = f"epoch {epoch}" if streak == 1 else f"epochs {first}-{epoch}"
    return (
        f"embedding collapse: {describe_std(health)} < pretrain.collapse_std="
        f"{cfg.collapse_std:g} at {span} ({streak} consecutive, pretrain.fail_fast_epochs="
        f"{cfg.fail_fast_epochs}); stopped after epoch {epoch} of {cfg.epochs}"
    )


def describe_std(health: dict[str, Any]) -> str:
    """``embedding_std x sqrt(d) = 0.0123`` (the collapse signal, in its threshold's units)."""
    std = health["embedding_std"] * math.sqrt(health["embedding_dim"])
    return f"embedding_std x sqrt(d) = {std:.4f}"


def health_note(entries: Sequence[dict[str, Any]]) -> str:
    """One line on a run's health from its log.jsonl ``entries``: the last pass's signals,
    led by COLLAPSED when the last pass says so, and the collapsed epochs; empty without a
    pass."""
    passes = [e for e in entries if e.get("kind") == "health"]
    if not passes:
        return ""
    last = passes[-1]
    parts = [f"health @ epoch {last['epoch']}: {describe_std(last)}"]
    for key, label in (("effective_rank", "rank"), ("alignment", "align"), ("uniformity", "unif")):
        if isinstance(last.get(key), float):
            parts.append(f"{label} {last[key]:.3g}")
    if isinstance(last.get("knn_accuracy"), float):
        parts.append(f"kNN {last['knn_accuracy']:.2f} (chance {last['knn_chance']:.2f})")
    note = ", ".join(parts)
    epochs = ", ".join(str(e["epoch"]) for e in passes if e.get("collapsed"))
    if last.get("collapsed"):
        return f"COLLAPSED (epochs {epochs}); {note}"
    return f"{note}; collapsed earlier (epochs {epochs})" if epochs else note
