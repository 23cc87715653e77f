"""benchmarks/gpu_check.py, the first-GPU-hour command (issue 33): it refuses to start
without CUDA, and its --dry-run runs the same code on the CPU at tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("pretraining", "finetuning", "sliding_window", "cuda_paths", "roofline")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def run(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def read(folder: Path) -> tuple[dict, str]:
    report = json.loads((folder / "gpu_check.json").read_text())
    return report, (folder / "gpu_check.md").read_text()


def check_statuses(report: dict, markdown: str) -> None:
    """Every section and row passed or was skipped with its reason; none is left pending."""
    assert tuple(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] in ("passed", "skipped"), (name, section)
        assert section["status"] == "passed" or section["reason"], (name, section)
        assert section["wall_s"] is not None
        assert section["title"] in markdown
        for row in section["rows"]:
            assert row["status"] in ("passed", "skipped"), (name, row)
            assert row["status"] == "passed" or row["reason"], (name, row)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    result = run("--output", str(tmp_path / "out"), timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "no CUDA device: nothing to check"
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_dry_run_of_the_quick_sections_writes_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    result = run(
        "--dry-run", "--output", str(out), "--sections", "finetuning,sliding_window,roofline"
    )
    assert result.returncode == 0, result.stderr
    report, markdown = read(out)
    check_statuses(report, markdown)
    sections = report["sections"]
    assert report["dry_run"] and "dry run" in markdown
    for name in ("pretraining", "cuda_paths"):
        assert sections[name]["status"] == "skipped"
        assert sections[name]["reason"].startswith("not selected")
    assert [r["loop"] for r in sections["finetuning"]["rows"]] == ["bare", "harness", "bare"]
    assert all(r["images_per_s"] > 0 and r["wall_s"] > 0 for r in sections["finetuning"]["rows"])
    tiles = sections["sliding_window"]["rows"]
    assert [r["windows"] for r in tiles] == [49, 49]  # 256 px, window 64, stride 32: 7 x 7
    (bound,) = sections["roofline"]["rows"]
    assert bound["name"] == "finetuning glcnet bf16" and bound["ratio_to_bound"] > 0


def test_a_spent_budget_skips_every_section_and_says_so(tmp_path):
    out = tmp_path / "out"
    result = run("--dry-run", "--budget-s", "0", "--output", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    report, markdown = read(out)
    check_statuses(report, markdown)
    for name in SECTIONS[:-1]:
        assert report["sections"][name]["reason"] == "skipped: budget"
    assert "skipped: budget" in markdown


@pytest.mark.slow
def test_dry_run_reaches_every_section_and_every_method(tmp_path):
    """The whole matrix on the CPU: about 2 minutes on 2 quiet cores, 8 when shared, so the
    budget is set out of the way."""
    out = tmp_path / "out"
    result = run("--dry-run", "--budget-s", "3600", "--output", str(out))
    assert result.returncode == 0, result.stderr
    report, markdown = read(out)
    check_statuses(report, markdown)
    sections = report["sections"]
    assert all(sections[name]["status"] == "passed" for name in SECTIONS)
    rows = sections["pretraining"]["rows"]
    harness = {(r["method"], r["preset"]) for r in rows if r["loop"] == "harness"}
    methods = {r["method"] for r in rows}
    assert harness == {(m, p) for m in methods for p in ("common", "paper")}
    (compiled,) = [r for r in rows if r["compile"]]
    assert compiled["status"] == "skipped" and compiled["reason"].startswith("cpu:")
    bare = [r for r in rows if r["loop"] == "bare" and not r["compile"]]
    assert bare and all(r["checkpoint_s"] > 0 and r["checkpoint_mb"] > 1 for r in bare)
    checks = {r["name"]: r for r in sections["cuda_paths"]["rows"]}
    assert len(checks) == 5 and all(r["status"] == "passed" for r in checks.values())
    assert len(sections["roofline"]["rows"]) == 2 * len(methods) + 1


def test_parallel_rendering_writes_what_the_dataset_renders(tmp_path, gpu_check):
    import gpu_check_sections as parts

    from bench.datasets import create_dataset

    job = parts.check_job(parts.dry_sizes())
    parts.render_synthetic(job, tmp_path / "pooled", workers=3)
    pooled = create_dataset(job.dataset, job.dataset_params, job.data, tmp_path / "pooled")
    own = create_dataset(job.dataset, job.dataset_params, job.data, tmp_path / "own")
    for split in ("train", "test"):
        a, b = pooled.load_split(split)[:], own.load_split(split)[:]
        assert np.array_equal(a[0].numpy(), b[0].numpy())
        assert np.array_equal(a[1].numpy(), b[1].numpy())
    params = (pooled.prepared_dir / "params.json").read_text()
    assert params == (own.prepared_dir / "params.json").read_text()


def test_roofline_pairs_each_harness_figure_with_its_bare_loop(gpu_check):
    def row(case, loop, rate, steady=None, status="passed"):
        return {"case": case, "loop": loop, "status": status, "images_per_s": rate,
                "steady_images_per_s": steady}  # fmt: skip

    sections = {
        "pretraining": {"rows": [row("simclr common bf16", "bare", 100.0, 125.0),
                                 row("simclr common bf16", "harness", 90.0),
                                 row("moco common bf16", "bare", 80.0, 90.0, "failed"),
                                 row("moco common bf16", "harness", 70.0)]},
        "finetuning": {"rows": []},
    }  # fmt: skip
    (bound,) = gpu_check.roofline_rows(sections)
    assert bound["name"] == "pretraining simclr common bf16"
    assert bound["ratio_same_steps"] == pytest.approx(0.9)
    assert bound["ratio_to_bound"] == pytest.approx(0.72)


def test_budget_refuses_what_would_end_past_it(gpu_check):
    budget = gpu_check.Budget(10.0, {"compile": 60.0})
    assert budget.allows(budget.estimate("bare")) and not budget.allows(budget.estimate("compile"))
    budget.observe("bare", 20.0)
    assert not budget.allows(budget.estimate("bare"))
    assert budget.estimate("harness") == 20.0  # a kind not seen yet: as the last one
    assert gpu_check.section_status([{"status": "skipped", "reason": "skipped: budget"}]) == (
        "skipped",
        "skipped: budget",
    )
    assert gpu_check.section_status([{"status": "passed"}, {"status": "failed"}])[0] == "failed"
