"""Shared fixtures: tiny sweeps on tiny synthetic data, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report.index import INDEX

# Settings that make a whole sweep take seconds: 32 px patches, a few dozen of them.
TINY = (
    "synthetic.n_train=48",
    "synthetic.n_test=8",
    "synthetic.patch_size=32",
    "pretrain.batch_size=16",
    "pretrain.view_size=32",
    "pretrain.epochs=2",
    # a checkpoint after every epoch, as tests of resuming and of the cluster path expect
    # (by default one only every 10 minutes: tests/test_reliability.py checks that)
    "pretrain.checkpoint_minutes=0",
    "finetune.steps=3",
    "finetune.batch_size=4",
)


@pytest.fixture
def tiny_overrides() -> tuple[str, ...]:
    return TINY


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Results and data folders of one test; the data root also through the env variable."""
    results, data = tmp_path / "results", tmp_path / "data"
    monkeypatch.setenv("BENCH_DATA_ROOT", str(data))
    return results, data


def file_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (to show that a command
    wrote or changed nothing), less a results folder's index: a cache that any reading of
    the folder may bring up to date (bench.report.index)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(Path(root).rglob("*"))
        if p.name != INDEX
    }


@pytest.fixture
def registries(tmp_path):
    """Methods and datasets a test registers (itself or through plugin modules written in
    its folder or imported from examples/) are forgotten afterwards, and those modules
    unloaded, so no other test sees them."""
    import sys

    from bench.datasets import DATASETS
    from bench.methods import METHODS

    before = {id(r): set(r.names()) for r in (METHODS, DATASETS)}
    modules = set(sys.modules)
    yield
    for registry in (METHODS, DATASETS):
        for name in set(registry.names()) - before[id(registry)]:
            registry.unregister(name)
    for name in set(sys.modules) - modules:
        path = str(getattr(sys.modules[name], "__file__", None) or "")
        if path.startswith((str(tmp_path), str(EXAMPLES))):
            del sys.modules[name]


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
