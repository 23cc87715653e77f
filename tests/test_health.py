"""Health signals of a pretraining: each equals its formula (written here with numpy), the
pass changes nothing the training draws, a collapsing method is flagged and stopped by
fail-fast, a healthy one is not flagged, and the settings leave job ids alone."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

from bench import SweepSpec, plan, run_sweep
from bench.cli import main
from bench.collapse import collapse_streak, collapsed, health_note
from bench.config import ConfigError
from bench.health import (
    HealthBatch,
    alignment,
    dominant_labels,
    effective_rank,
    embedding_std,
    health_pass,
    knn_accuracy,
    signals,
    uniformity,
)
from bench.jobs import PretrainJob
from bench.methods import create_method, register_method
from bench.methods.simclr import SimCLR
from bench.pretrain import run_pretraining
from bench.report.html import build_report
from bench.store import RunStore, read_log


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


# ---------------------------------------------------------------------------- formulas
def test_embedding_std_is_the_mean_population_std_per_dimension():
    z = unit_rows(7, 5)
    assert embedding_std(torch.tensor(z)) == pytest.approx(np.std(z, axis=0, ddof=0).mean())
    assert embedding_std(torch.ones(6, 4) / 2) == 0.0


def test_effective_rank_is_exp_entropy_of_normalised_singular_values_numpy_svd():
    z = unit_rows(9, 6, seed=1)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert effective_rank(torch.tensor(z)) == pytest.approx(expected, rel=1e-9)
    # one point: rank 1; d orthonormal directions with equal weight: rank d
    assert effective_rank(torch.ones(5, 3) / math.sqrt(3)) == pytest.approx(1.0)
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.zeros(3, 3)) == 0.0


def test_alignment_and_uniformity_are_wang_and_isolas_formulas():
    z1, z2 = unit_rows(6, 4, 2), unit_rows(6, 4, 3)
    expected_align = np.mean([np.sum((a - b) ** 2) for a, b in zip(z1, z2, strict=True)])
    assert alignment(torch.tensor(z1), torch.tensor(z2)) == pytest.approx(expected_align)
    pairs = [np.exp(-2 * np.sum((z1[i] - z1[j]) ** 2)) for i in range(6) for j in range(i + 1, 6)]
    assert uniformity(torch.tensor(z1)) == pytest.approx(math.log(np.mean(pairs)), rel=1e-9)
    same = torch.ones(4, 2) / math.sqrt(2)  # a collapse: aligned, and the worst uniformity
    assert alignment(same, same) == 0.0 and uniformity(same) == pytest.approx(0.0)


def test_knn_accuracy_is_a_leave_one_out_weighted_vote():
    z = unit_rows(12, 3, 4)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, -1])
    k, t = 3, 0.07
    hits = []
    for i in range(11):  # the unlabelled last row is left out
        sims = [(z[i] @ z[j], labels[j]) for j in range(11) if j != i]
        votes = np.zeros(3)
        for sim, label in sorted(sims, reverse=True)[:k]:
            votes[label] += np.exp(sim / t)
        hits.append(votes.argmax() == labels[i])
    got = knn_accuracy(torch.tensor(z), torch.tensor(labels), k=k, temperature=t)
    assert got == pytest.approx(np.mean(hits))


def test_dominant_labels_leave_out_ignored_pixels():
    masks = torch.tensor([[[1, 1], [255, 255]], [[255, 255], [255, 255]], [[0, 2], [2, 0]]])
    assert dominant_labels(masks, 3, 255).tolist() == [1, -1, 0]  # a tie: the lowest


def test_collapse_is_std_below_the_threshold_in_units_of_one_over_sqrt_d():
    spread = torch.tensor(unit_rows(64, 16))
    healthy = signals(spread, spread, spread.flip(0), None)
    assert healthy["embedding_std"] * 4 == pytest.approx(0.96, abs=0.1)  # ~1/sqrt(d)
    assert not collapsed(healthy, 0.05)
    point = signals(torch.ones(8, 16), torch.ones(8, 16), torch.ones(8, 16), None)
    assert point["embedding_std"] == 0 and point["effective_rank"] == pytest.approx(1.0)
    assert collapsed(point, 0.05)
    assert collapsed(signals(torch.full((4, 3), math.nan), *[torch.ones(4, 3)] * 2, None), 0.05)
    assert collapse_streak([1, 3, 4, 5], 5) == 3 and collapse_streak([1, 2], 3) == 0


# ---------------------------------------------------------------------------- the pass
def test_the_pass_is_repeatable_and_leaves_train_mode_and_random_state():
    torch.manual_seed(0)
    method = create_method("simclr", in_channels=3).train()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = HealthBatch(images, torch.tensor([0, 1, 0, 1, 0, 1]), seed=5)
    state = torch.get_rng_state()
    first = health_pass(method, batch, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state) and method.training
    assert all(m.training for m in method.modules())
    second = health_pass(method, batch, torch.device("cpu"))
    assert {k: v for k, v in first.items() if k != "seconds"} == {
        k: v for k, v in second.items() if k != "seconds"
    }
    with torch.no_grad():
        method.eval()
        z = F.normalize(method.embed(method.normalize(images.float() / 255)), dim=1)
    assert first["embedding_std"] == pytest.approx(embedding_std(z), rel=1e-5)
    assert set(first) >= {"effective_rank", "alignment", "uniformity", "knn_accuracy"}


class NoNegatives(SimCLR):
    """A loss that ignores the negatives: only the two views' backbone embeddings pulled
    together, which its high learning rate collapses to one point within an epoch."""

    preset_pretrain = {"quick": {"lr": 0.05}}

    def training_step(self, images, ctx):
        z1, z2 = (F.normalize(self.embed(self.normalize(self.views(images))), dim=1) for _ in "12")
        return (z1 - z2).pow(2).sum(dim=1).mean(), {}


def pretrain_job(method: str, *overrides: str) -> PretrainJob:
    spec = SweepSpec(methods=(method,), fractions=(0.5,), seeds=(0,), overrides=overrides)
    return next(j for j in plan(spec) if isinstance(j, PretrainJob))


@pytest.fixture(scope="module")
def health_sweep(tmp_path_factory):
    """One tiny sweep (3 epochs of 3 steps, fail-fast after 2 collapsed epochs) of the
    collapsing method and of SimCLR, in one results folder."""
    from bench.methods import METHODS

    register_method("no-negatives")(NoNegatives)
    root = tmp_path_factory.mktemp("health")
    spec = SweepSpec(
        methods=("no-negatives", "simclr"),
        fractions=(0.5,),
        seeds=(0,),
        overrides=(*TINY, "pretrain.epochs=3", "pretrain.fail_fast_epochs=2"),
    )
    try:
        yield root / "results", run_sweep(spec, root / "results", root / "data")
    finally:
        METHODS.unregister("no-negatives")


def test_a_collapsing_method_is_flagged_each_epoch_and_fail_fast_stops_it(health_sweep):
    """Flagged at the end of its first epoch; with fail_fast_epochs=2 it fails after its
    second, naming the signal and the epochs, and its fine-tuning never starts."""
    results, result = health_sweep
    (failed,) = result.by_status("failed")
    assert failed["kind"] == "pretrain" and failed["method"] == "no-negatives"
    assert re.fullmatch(
        r"CollapseError: embedding collapse: embedding_std x sqrt\(d\) = 0\.0\d\d\d < "
        r"pretrain\.collapse_std=0\.05 at epochs 1-2 \(2 consecutive, "
        r"pretrain\.fail_fast_epochs=2\); stopped after epoch 2 of 3",
        failed["error"],
    ), failed["error"]
    (skipped,) = result.by_status("skipped")
    assert skipped["method"] == "no-negatives" and skipped["kind"] == "finetune"
    assert not (results / skipped["job_id"]).exists()
    entries = read_log(results / failed["job_id"])
    passes = [e for e in entries if e["kind"] == "health"]
    assert [(p["epoch"], p["collapsed"]) for p in passes] == [(1, True), (2, True)]
    assert passes[0]["effective_rank"] < 1.5 and passes[0]["alignment"] < 1e-3
    assert max(e["epoch"] for e in entries if e["kind"] == "epoch") == 2  # epoch 3 never ran
    assert health_note(entries).startswith("COLLAPSED (epochs 1, 2); health @ epoch 2: ")


def test_a_healthy_method_is_not_flagged_on_tiny_data(health_sweep):
    _, result = health_sweep
    pretrain, finetune = result.by_status("ok")  # SimCLR's, in the planned order
    assert pretrain["kind"] == "pretrain" and finetune["pretrain_id"] == pretrain["job_id"]
    assert pretrain["collapsed_epochs"] == [] and not pretrain["health"]["collapsed"]
    health = pretrain["health"]
    assert health["embedding_std"] * math.sqrt(health["embedding_dim"]) > 0.2  # 4x threshold
    assert health["effective_rank"] > 10 and 0 < health["alignment"] < 2


def test_status_and_report_show_the_health_and_mark_the_collapsed_run(health_sweep, capsys):
    results, result = health_sweep
    assert main(["status", "--results", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    failed = next(line for line in lines if line.startswith("failed") and "pretrain-" in line)
    assert "CollapseError: embedding collapse" in failed and "; COLLAPSED (epochs 1, 2)" in failed
    healthy = next(line for line in lines if line.startswith("done") and "pretrain-simclr" in line)
    assert "health @ epoch 3: embedding_std x sqrt(d) = 0." in healthy
    assert "COLLAPSED" not in healthy and "rank " in healthy and "kNN " in healthy
    page, _ = build_report(RunStore(results))
    rows = re.findall(r'<tr class="([^"]*)">(.*?)</tr>', page)
    marked = [cells for classes, cells in rows if "collapsed" in classes.split()]
    assert len(marked) == 1 and "pretrain-no-negatives" in marked[0]
    section = page[page.index('<section id="health">') :]
    assert "a red cross at each collapsed epoch" in section
    image = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', section).group(1)
    svg = base64.b64decode(image).decode()
    # the collapsed run: labelled so, its line dashed, a red cross at each collapsed epoch
    assert "no-negatives synthetic seed 0 (collapsed)" in svg and "stroke-dasharray" in svg
    crosses = svg.count('stroke="red"') // 2 // 5  # two strokes a cross, five panels
    assert crosses == 2  # epochs 1 and 2; the run stopped after its second


@pytest.mark.slow
def test_a_healthy_method_is_not_flagged_in_the_quick_preset(dirs):
    """The quick preset as it is: 3 epochs of 16 steps of 64 images."""
    results, data = dirs
    job = pretrain_job("simclr")
    run_dir = results / job.job_id
    run_dir.mkdir(parents=True)
    record = run_pretraining(job, run_dir, data, device=torch.device("cpu"))
    assert record["collapsed_epochs"] == []


def test_health_settings_leave_job_ids_alone_and_are_checked():
    base = plan(SweepSpec(methods=("simclr",), fractions=(0.5,), seeds=(0,)))
    other = plan(
        SweepSpec(
            methods=("simclr",),
            fractions=(0.5,),
            seeds=(0,),
            overrides=(
                "pretrain.fail_fast_epochs=2",
                "pretrain.collapse_std=0.2",
                "pretrain.health_images=8",
            ),
        )
    )
    assert [j.job_id for j in base] == [j.job_id for j in other]
    with pytest.raises(ConfigError, match="fail_fast_epochs=2 needs the health pass"):
        overrides = ("pretrain.fail_fast_epochs=2", "pretrain.health_images=0")
        plan(SweepSpec(methods=("simclr",), overrides=overrides))
    fail_fast = {
        preset: plan(SweepSpec(methods=("simclr",), preset=preset))[0].pretrain.fail_fast_epochs
        for preset in ("quick", "cpu", "paper", "common")
    }
    assert fail_fast == {"quick": 0, "cpu": 3, "paper": 0, "common": 5}  # paper: as released
