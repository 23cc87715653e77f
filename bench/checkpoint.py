"""Checkpoints that survive kills: atomic writes, one previous generation kept, RNG state.

``save`` moves the current checkpoint to ``<name>.prev.pt`` and then writes the new one
atomically, so a kill at any moment leaves at least one complete file. ``load`` reads with
``weights_only=True`` (no arbitrary unpickling), falls back to the previous generation when
the newest is truncated or corrupt (torch's zip format checks CRCs), and says so.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from bench.store import atomic_write_bytes

log = logging.getLogger(__name__)


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    try:
        os.replace(path, previous_path(path))
    except FileNotFoundError:  # first checkpoint, or another writer moved it just now
        pass
    atomic_write_bytes(path, buffer.getvalue())


def load(path: Path, job_id: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``job_id`` at ``path`` (or its previous generation)."""
    path = Path(path)
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (any damage means: try the next one)
            log.warning(
                "checkpoint %s is unreadable (%s: %s); trying an older one",
                candidate,
                type(error).__name__,
                str(error).splitlines()[0][:120],
            )
            continue
        if not isinstance(state, dict) or state.get("job_id") != job_id:
            log.warning("checkpoint %s belongs to another job; ignoring it", candidate)
            continue
        if candidate != path:
            log.warning("resuming from the previous checkpoint %s", candidate)
        return state
    if path.exists() or previous_path(path).exists():
        log.warning("no usable checkpoint for %s; starting from scratch", job_id)
    return None


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
