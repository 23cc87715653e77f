"""Tables and plots from a fixture results folder of real result.json files.

The fixture has a failed run, a missing seed, a seed with a NaN class IoU, a method with one
seed, a method that was never run on a dataset, an all-failed cell, ties for best and for
second best, and names with LaTeX specials (``loveda_urban``, ``my_method``).

Golden files live in tests/golden/; after an intended change of the output, rewrite them with
``BENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_report.py`` (those tests then skip, so a
rewrite never passes silently) and review the diff.
"""

from __future__ import annotations

import io
import json
import math
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.config import ConfigError
from bench.datasets.loveda import LOVEDA_CLASSES
from bench.datasets.synthetic_scene import CLASS_NAMES
from bench.report import (
    MIN_PAIRED_SEEDS,
    Cell,
    build_table,
    comparison_table,
    latex_escape,
    method_order,
    paired_test,
    per_class_table,
    plot_fraction_curves,
    record_columns,
    records_frame,
    render,
)
from bench.report.columns import FRAME_COLUMNS
from bench.store import RunStore, failed_record

GOLDEN = Path(__file__).parent / "golden"
SYNTHETIC_CLASSES = CLASS_NAMES
# Per-class IoU = mIoU + these offsets (they sum to zero, so the classes average to the mIoU).
OFFSETS = (0.10, -0.05, 0.02, -0.02, -0.10, 0.03, 0.02)

# (method, dataset, fraction) -> {seed: (miou, kappa)}; absent seeds were never run.
FINISHED = {
    ("random", "synthetic", 0.01): {0: (0.30, 0.20), 1: (0.32, 0.22), 2: (0.31, 0.23)},
    # simclr and moco tie for the best 1% mIoU (both 36.33); simclr is better on every seed
    ("simclr", "synthetic", 0.01): {0: (0.35, 0.25), 1: (0.38, 0.27), 2: (0.36, 0.26)},
    ("moco", "synthetic", 0.01): {0: (0.36, 0.24), 1: (0.37, 0.25), 2: (0.36, 0.24)},
    ("byol", "synthetic", 0.01): {0: (0.33, 0.21), 2: (0.34, 0.22)},  # seed 1 missing
    ("my_method", "synthetic", 0.01): {0: (0.20, 0.10)},  # one seed only
    ("random", "synthetic", 0.1): {0: (0.50, 0.40), 1: (0.52, 0.41), 2: (0.51, 0.42)},
    ("simclr", "synthetic", 0.1): {0: (0.55, 0.45), 1: (0.56, 0.46), 2: (0.54, 0.44)},
    ("moco", "synthetic", 0.1): {0: (0.53, 0.39), 1: (0.52, 0.38)},  # seed 2 failed
    # byol ties random for the second best 10% Kappa (41.00)
    ("byol", "synthetic", 0.1): {0: (0.51, 0.41), 1: (0.50, 0.40), 2: (0.53, 0.42)},
    ("random", "loveda_urban", 0.1): {0: (0.40, 0.30), 1: (0.42, 0.31), 2: (0.41, 0.29)},
    # 60.1233 vs 60.1200: equal as shown (60.12), so both are best
    ("simclr", "loveda_urban", 0.1): {0: (0.60, 0.50), 1: (0.61, 0.52), 2: (0.59367, 0.51)},
    ("moco", "loveda_urban", 0.1): {0: (0.60, 0.49), 1: (0.60, 0.50), 2: (0.6036, 0.48)},
}
FAILED = [("moco", "synthetic", 0.1, 2)] + [("byol", "loveda_urban", 0.1, s) for s in range(3)]
NAN_CLASS = ("random", "synthetic", 0.1, 0, "car")  # a class absent from one test split


def _job(method: str, dataset: str, fraction: float, seed: int) -> SimpleNamespace:
    job_id = f"finetune-{method}-{dataset}-f{fraction:g}-s{seed}-fixture0"
    return SimpleNamespace(
        kind="finetune", job_id=job_id, method=method, dataset=dataset, seed=seed, fraction=fraction
    )


def _finished_record(job: SimpleNamespace, miou: float, kappa: float) -> dict:
    names = SYNTHETIC_CLASSES if job.dataset == "synthetic" else LOVEDA_CLASSES
    ious = [miou + offset for offset in OFFSETS]
    if (job.method, job.dataset, job.fraction, job.seed) == NAN_CLASS[:4]:
        ious[names.index(NAN_CLASS[4])] = math.nan
    return {
        "status": "ok",
        "kind": "finetune",
        "job_id": job.job_id,
        "pretrain_id": None,
        "method": job.method,
        "dataset": job.dataset,
        "fraction": job.fraction,
        "seed": job.seed,
        "preset": "quick",
        "protocol": "full",
        "class_names": list(names),
        "ignore_index": 255,
        "miou": miou,
        "kappa": kappa,
        "oa": miou + 0.25,
        "mean_f1": miou + 0.1,
        "per_class_iou": ious,
        "per_class_f1": [min(1.0, v + 0.1) for v in ious],
        "pixels": 1000,
    }


def write_fixture(root: Path) -> Path:
    """The fixture records as result.json files, written by the run store."""
    store = RunStore(root)
    store.open_for_writing()
    for (method, dataset, fraction), seeds in FINISHED.items():
        for seed, (miou, kappa) in seeds.items():
            job = _job(method, dataset, fraction, seed)
            store.write_record(job.job_id, _finished_record(job, miou, kappa))
    for method, dataset, fraction, seed in FAILED:
        job = _job(method, dataset, fraction, seed)
        store.write_record(job.job_id, failed_record(job, RuntimeError("CUDA OOM"), "Traceback"))
    return root


@pytest.fixture
def results(tmp_path) -> Path:
    return write_fixture(tmp_path / "results")


def _records(results: Path) -> list[dict]:
    return list(RunStore(results).records())


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.write_text(text)
        pytest.skip(f"rewrote {path}; review the diff and rerun without BENCH_UPDATE_GOLDEN")
    assert path.exists(), f"{path} is missing; write it with BENCH_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("md", "table.md"), ("latex", "table.tex"), ("csv", "table.csv"), ("html", "table.html")],
)
def test_table_matches_golden(results, fmt, name):
    _check_golden(name, comparison_table(_records(results), ("miou", "kappa"), "random", fmt))


def test_per_class_table_matches_golden(results):
    table = per_class_table(_records(results), "synthetic", 0.1)
    _check_golden("per_class.md", render(table, "md"))


def _independent_frame(results: Path) -> pd.DataFrame:
    """The finished runs, read with json and pandas only, metrics in percent."""
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*/result.json"))]
    frame = pd.DataFrame(rows)
    frame = frame[frame["status"] == "ok"].copy()
    frame[["miou", "kappa"]] = frame[["miou", "kappa"]] * 100
    return frame


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_mean_std_delta_and_tests_agree_with_pandas_and_scipy(results):
    frame = _independent_frame(results)
    table = build_table(_records(results), ("miou", "kappa"), "random")
    stats_by_cell = frame.groupby(["method", "dataset", "fraction"])[["miou", "kappa"]]
    means, stds, counts = stats_by_cell.mean(), stats_by_cell.std(), stats_by_cell.count()
    checked = 0
    for column in table.columns:
        for method in table.methods:
            cell = table.cell(method, column)
            key = (method, column.dataset, column.fraction)
            if key not in means.index:
                assert cell.mean is None and cell.n == 0
                continue
            assert cell.n == counts.loc[key, column.metric]
            assert cell.mean == pytest.approx(means.loc[key, column.metric], abs=1e-9)
            if cell.n > 1:
                assert cell.std == pytest.approx(stds.loc[key, column.metric], abs=1e-9)
            else:
                assert cell.std is None and math.isnan(stds.loc[key, column.metric])
            base = ("random", column.dataset, column.fraction)
            if method == "random":
                assert cell.delta is None and cell.p_value is None
                continue
            expected = means.loc[key, column.metric] - means.loc[base, column.metric]
            assert cell.delta == pytest.approx(expected, abs=1e-9)
            ours = frame.set_index(["method", "dataset", "fraction", "seed"])[column.metric]
            mine, theirs = ours.loc[key], ours.loc[base]
            common = sorted(set(mine.index) & set(theirs.index))
            assert cell.pairs == len(common)
            if len(common) >= MIN_PAIRED_SEEDS:
                direct = stats.ttest_rel(mine.loc[common], theirs.loc[common]).pvalue
                assert cell.p_value == pytest.approx(direct, rel=1e-9)
                checked += 1
            else:
                assert cell.p_value is None
    assert checked >= 4  # the fixture has tested and untested comparisons
    simclr_1pct = table.cell("simclr", table.columns[0])
    assert simclr_1pct.significant and simclr_1pct.p_value < 0.05  # better on every seed


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_paired_test_is_scipys_ttest_rel():
    rng = np.random.default_rng(0)
    for n in range(2, 8):
        for _ in range(20):
            ours, theirs = rng.normal(50, 2, n), rng.normal(49, 2, n)
            direct = stats.ttest_rel(ours, theirs).pvalue
            assert paired_test(list(ours), list(theirs)) == pytest.approx(direct, rel=1e-9)
    assert stats.ttest_rel([2, 3, 4], [1, 2, 3]).pvalue == paired_test([2, 3, 4], [1, 2, 3]) == 0
    assert paired_test([1, 2, 3], [1, 2, 3]) is None  # scipy: NaN, nothing to test


def test_csv_numbers_agree_with_pandas(results):
    frame = _independent_frame(results)
    csv = pd.read_csv(io.StringIO(comparison_table(_records(results), fmt="csv")))
    assert len(csv) == 5 * 3 * 2  # methods x (dataset, fraction) x metrics, missing included
    for row in csv.itertuples():
        runs = frame[
            (frame["method"] == row.method)
            & (frame["dataset"] == row.dataset)
            & (frame["fraction"] == row.fraction)
        ][row.metric]
        assert row.n == len(runs)
        if runs.empty:
            assert math.isnan(row.mean) and row.status in {"failed", "not run"}
            continue
        assert row.mean == pytest.approx(runs.mean(), abs=5e-5)
        assert row.status == ("ok" if len(runs) == 3 else "partial")
        base = frame[
            (frame["method"] == "random")
            & (frame["dataset"] == row.dataset)
            & (frame["fraction"] == row.fraction)
        ][row.metric]
        if row.method != "random":
            assert row.delta == pytest.approx(runs.mean() - base.mean(), abs=5e-5)


def test_ranks_ties_and_missing_cells(results):
    table = build_table(_records(results), ("miou", "kappa"), "random")
    by_header = {" ".join(table.header(c)): c for c in table.columns}

    def ranks(header: str) -> dict[str, int | None]:
        return {m: table.cell(m, by_header[header]).rank for m in table.methods}

    assert table.methods == ("random", "simclr", "moco", "byol", "my_method")
    assert ranks("synthetic 1% mIoU")["simclr"] == ranks("synthetic 1% mIoU")["moco"] == 1
    assert ranks("synthetic 1% mIoU")["byol"] == 2  # the next value after a tie is second
    assert ranks("synthetic 10% Kappa") == {
        "random": 2,
        "simclr": 1,
        "moco": None,
        "byol": 2,
        "my_method": None,
    }
    assert ranks("loveda_urban 10% mIoU")["simclr"] == ranks("loveda_urban 10% mIoU")["moco"] == 1
    missing = table.cell("byol", by_header["loveda_urban 10% mIoU"])
    assert missing.missing == "failed" and missing.failed == 3 and missing.mean is None
    assert table.cell("my_method", by_header["synthetic 10% mIoU"]).missing == "not run"
    assert table.missing_counts() == {"failed": 2, "not run": 4}
    assert table.failed_runs == 4
    text = render(table, "md", wide=True)  # one row per method, every column
    assert "Missing cells: 6 of 30 (2 failed, 4 not run)" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()[2:7]}
    assert [c.strip() for c in rows["byol"][:4]] == ["failed", "n/a", "failed", "n/a"]
    assert [c.strip() for c in rows["my_method"][8:10]] == ["not run", "n/a"]  # never a 0
    assert "paired t-test (as scipy.stats.ttest_rel) against random" in text


def test_a_column_of_equal_means_has_no_marks():
    records = [
        {"kind": "finetune", "status": "ok", "job_id": m, "method": m, "dataset": "synthetic"}
        | {"fraction": 0.1, "seed": 0, "miou": 0.5, "kappa": 0.1 * i}
        for i, m in enumerate(("random", "simclr", "moco"))
    ]
    table = build_table(records, ("miou", "kappa"))
    assert [table.cell(m, table.columns[0]).rank for m in table.methods] == [None] * 3
    assert [table.cell(m, table.columns[1]).rank for m in table.methods] == [None, 2, 1]


def test_latex_escapes_specials_and_balances_braces(results):
    assert latex_escape("loveda_urban 10% a&b #1 $x$ {y} ~^\\") == (
        r"loveda\_urban 10\% a\&b \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}"
        r"\textbackslash{}"
    )
    text = comparison_table(_records(results), fmt="latex")
    assert "loveda\\_urban" in text and "my\\_method" in text and "loveda_urban" not in text
    body = text.replace("\\{", "").replace("\\}", "")
    assert body.count("{") == body.count("}")
    assert text.count("\\begin{") == text.count("\\end{")
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    assert "\\textbf{" in text and "\\underline{" in text
    for line in text.splitlines()[1:]:  # unescaped % would comment out the rest of a line
        assert "%" not in line.replace("\\%", "")


def test_each_cells_mean_and_std_are_numpys_of_its_own_values_bit_for_bit(results):
    table = build_table(_records(results), ("miou", "kappa"), "random")
    cells = [cell for row in table.cells for cell in row if cell.values]
    assert {cell.n for cell in cells} >= {1, 2, 3}  # cells reduced together, by count
    for cell in cells:
        assert cell.mean == float(np.mean(cell.values))
        assert cell.std == (float(np.std(cell.values, ddof=1)) if cell.n > 1 else None)
    alone = Cell(seeds=(0, 1, 2), values=(30.5, 31.25, 29.0))  # computed when not given
    assert (alone.mean, alone.std) == (
        float(np.mean(alone.values)),
        float(np.std(alone.values, ddof=1)),
    )
    assert Cell().mean is None and Cell(values=(1.0,)).std is None


def test_one_run_per_seed_is_required(results):
    record = json.loads(
        next(results.glob("finetune-simclr-synthetic-f0.01-s0-*/result.json")).read_text()
    )
    original = record["job_id"]
    record["job_id"] = original.replace("fixture0", "othersettings")
    RunStore(results).write_record(record["job_id"], record)
    with pytest.raises(ConfigError, match="one run per seed") as raised:
        build_table(_records(results))
    ids = ", ".join(sorted([original, record["job_id"]]))
    assert str(raised.value).startswith(
        "2 fine-tuning records repeat a (method, dataset, fraction, seed), e.g. simclr on "
        f"synthetic at 0.01, seed 0: {ids}; "
    )


def test_records_frame_is_the_pandas_frame_of_the_fields_tables_read(results):
    records = _records(results)
    finetunes = [r for r in records if r["kind"] == "finetune"]
    frame = records_frame(records)
    expected = pd.DataFrame([{f: r.get(f) for f in FRAME_COLUMNS} for r in finetunes])
    pd.testing.assert_frame_equal(frame, expected)
    assert len(record_columns(records)) == len(finetunes) == len(frame)


def test_plot_writes_png_and_svg(results, tmp_path):
    paths = plot_fraction_curves(_records(results), tmp_path / "plots", ("miou", "kappa"))
    assert sorted(p.name for p in paths) == [
        "kappa_vs_fraction.png",
        "kappa_vs_fraction.svg",
        "miou_vs_fraction.png",
        "miou_vs_fraction.svg",
    ]
    png = (tmp_path / "plots" / "miou_vs_fraction.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    svg = (tmp_path / "plots" / "miou_vs_fraction.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for label in ("simclr", "my_method", "synthetic", "loveda_urban", "mIoU (%)", "10%"):
        assert label in svg  # text stays text (svg.fonttype none)


def test_cli_table_formats_outputs_and_errors(results, tmp_path, capsys):
    out = tmp_path / "table.tex"
    assert main(["table", "--results", str(results), "--output", str(out)]) == 0
    assert out.read_text().startswith("% generated by") and "wrote" in capsys.readouterr().out
    assert main(["table", "--results", str(results), "--format", "csv", "--metric", "oa"]) == 0
    assert capsys.readouterr().out.startswith("method,dataset,fraction,metric,class,status")
    assert main(["table", "--results", str(results), "--baseline", "none"]) == 0
    assert "Δ" not in capsys.readouterr().out
    assert main(["table", "--results", str(results), "--per-class", "--fraction", "0.1"]) == 2
    assert "give --dataset; the results have loveda_urban, synthetic" in capsys.readouterr().err
    args = ["--per-class", "--dataset", "loveda_urban", "--fraction", "0.1"]
    assert main(["table", "--results", str(results), *args]) == 0
    assert "| agriculture" in capsys.readouterr().out.replace("| Δ", "")
    assert main(["table", "--results", str(results), "--baseline", "byoll"]) == 2
    assert "baseline 'byoll' has no fine-tuning records" in capsys.readouterr().err
    assert main(["table", "--results", str(results), "--format", "xlsx"]) == 2
    assert "valid formats: md, latex, csv, html" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["table", "--results", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == "no fine-tuning results yet\n"


def test_cli_plot(results, tmp_path, capsys):
    assert main(["plot", "--results", str(results), "--output-dir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "miou_vs_fraction.svg").stat().st_size > 0
    assert "miou_vs_fraction.png" in capsys.readouterr().out
    assert main(["plot", "--results", str(results), "--format", "jpg"]) == 2
    assert "unknown plot format 'jpg'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# What the seeds can resolve: the minimum detectable difference and the seeds needed
# ----------------------------------------------------------------------------------------
def _paired_differences(frame: pd.DataFrame, method: str, column) -> np.ndarray:
    """The method's values minus the baseline's on their shared seeds, from the frame."""
    values = frame.set_index(["method", "dataset", "fraction", "seed"])[column.metric]
    mine = values.loc[(method, column.dataset, column.fraction)]
    theirs = values.loc[("random", column.dataset, column.fraction)]
    common = sorted(set(mine.index) & set(theirs.index))
    return mine.loc[common].to_numpy() - theirs.loc[common].to_numpy()


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
def test_mdd_and_seeds_needed_agree_with_statsmodels(results):
    power_analysis = pytest.importorskip("statsmodels.stats.power").TTestPower()
    frame = _independent_frame(results)
    table = build_table(_records(results), ("miou", "kappa"), "random")
    checked = {"mdd": 0, "zero spread": 0, "seeds": 0}
    for column in table.columns:
        for method in table.methods[1:]:
            cell = table.cell(method, column)
            if cell.mean is None:
                continue
            differences = _paired_differences(frame, method, column)
            if len(differences) < 2:
                assert cell.mdd is None and cell.seeds_needed is None
                continue
            sd = np.std(differences, ddof=1)
            if sd < 1e-6:  # equal differences: anything is detected
                assert cell.mdd == 0 and cell.seeds_needed == MIN_PAIRED_SEEDS
                checked["zero spread"] += 1
                continue
            effect = power_analysis.solve_power(
                nobs=len(differences), alpha=0.05, power=0.8, alternative="two-sided"
            )
            assert cell.mdd == pytest.approx(effect * sd, rel=1e-5)
            checked["mdd"] += 1
            gap = np.mean(differences)
            assert cell.gap == pytest.approx(gap, abs=1e-9)
            if abs(gap) < 1e-6:
                assert cell.seeds_needed is None
                continue
            n = power_analysis.solve_power(
                effect_size=abs(gap) / sd, alpha=0.05, power=0.8, alternative="two-sided"
            )
            if math.isnan(n):  # statsmodels' solver gives up on large effects (n < 2)
                assert cell.seeds_needed == MIN_PAIRED_SEEDS
                continue
            assert cell.seeds_needed == max(MIN_PAIRED_SEEDS, math.ceil(n - 1e-6))
            checked["seeds"] += 1
    assert checked["mdd"] >= 10 and checked["zero spread"] >= 1 and checked["seeds"] >= 3


def test_mdd_is_detected_with_power_08_in_a_simulation():
    """Paired differences whose true mean is the MDD are found significant by the table's
    test (scipy's ttest_1samp on the differences) in 80% of simulated experiments."""
    from bench.report.power import detectable_effect

    rng = np.random.default_rng(23)
    for n in (2, 3, 5, 10):
        effect = detectable_effect(n, 0.05, 0.8)
        draws = rng.normal(effect, 1.0, size=(40_000, n))
        rate = np.mean(stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05)
        assert rate == pytest.approx(0.8, abs=0.01), n


def test_mdd_is_shown_in_every_format(results):
    table = build_table(_records(results), ("miou", "kappa"), "random")
    shown = [
        (method, column, table.cell(method, column))
        for column in table.columns
        for method in table.methods[1:]
        if table.cell(method, column).mdd is not None
    ]
    assert len(shown) >= 10
    md, html_text, latex = (render(table, fmt) for fmt in ("md", "html", "latex"))
    for method, column, cell in shown:
        name = f"{column.dataset} {column.fraction_label} {column.label}"
        line = next(line for line in md.splitlines() if line.startswith(f"MDD, {name}:"))
        gap = f"{cell.gap:+.2f}" if round(cell.gap, 2) else "0.00"  # zero has no sign
        assert f"{method} {cell.mdd:.2f} ({cell.pairs} seeds; gap {gap}" in line
        if cell.seeds_needed is not None:
            assert f"{method} {cell.mdd:.2f}" in line and f"{cell.seeds_needed} seeds)" in line
        assert f"{method} {cell.mdd:.2f} ({cell.pairs} seeds" in html_text
        latex_name = latex_escape(method)
        assert f"{latex_name} {cell.mdd:.2f} ({cell.pairs} seeds" in latex
    assert "No † means not shown at this size" in md and "No $^\\dagger$ means" in latex
    csv = pd.read_csv(io.StringIO(render(table, "csv")))
    for method, column, cell in shown:
        row = csv[
            (csv["method"] == method)
            & (csv["dataset"] == column.dataset)
            & (csv["fraction"] == column.fraction)
            & (csv["metric"] == column.metric)
        ].iloc[0]
        assert row["mdd"] == pytest.approx(cell.mdd, abs=5e-5)
        expected = math.nan if cell.seeds_needed is None else cell.seeds_needed
        assert row["seeds_needed"] == pytest.approx(expected, nan_ok=True)
    assert csv[csv["method"] == "random"]["mdd"].isna().all()


def test_mdd_needs_a_baseline_and_two_shared_seeds(results):
    records = _records(results)
    assert "MDD" not in render(build_table(records, ("miou",), None), "md")
    one_seed = [r for r in records if r["seed"] == 0]
    text = render(build_table(one_seed, ("miou",), "random"), "md")
    assert "MDD: no method has values at 2 or more seeds where random has values" in text
    assert "MDD," not in text


def test_html_table_has_no_bare_angle_brackets_in_its_text(results):
    """Every '<' or '>' in the HTML is a tag's: the caption's "p < 0.05" is written &lt;."""
    page = comparison_table(_records(results), ("miou", "kappa"), "random", "html")
    text = re.sub(r"</?[a-zA-Z][^<>]*>", "", page)
    assert "<" not in text and ">" not in text
    assert "p &lt; 0.05" in page


# ----------------------------------------------------------------------------------------
# Terminal text, blocks, and what makes tables fast
# ----------------------------------------------------------------------------------------
TAG = re.compile(r"</?[a-zA-Z][^<>]*>")


def _study(root: Path, datasets: tuple[str, ...], fractions: tuple[float, ...]) -> Path:
    """Records of random and simclr on each dataset and fraction over 3 seeds, simclr better
    by a seed-dependent margin."""
    store = RunStore(root)
    store.open_for_writing()
    for dataset in datasets:
        for fraction in fractions:
            for seed in range(3):
                for method, gain in (("random", 0.0), ("simclr", 0.05 + 0.01 * seed)):
                    job = _job(method, dataset, fraction, seed)
                    miou = 0.3 + 0.1 * fraction + gain
                    store.write_record(job.job_id, _finished_record(job, miou, miou - 0.1))
    return root


def test_terminal_text_has_plain_marks_and_no_markup(results):
    text = comparison_table(_records(results), ("miou", "kappa"), "random", "text")
    assert not TAG.search(text) and "\x1b" not in text and "**" not in text
    # loveda_urban 10% mIoU: simclr and moco tie for best, random is second (golden table.md)
    first_block = text[: text.index("\nsynthetic\n")].splitlines()
    rows = {line.split("|")[1].strip(): line for line in first_block if line.startswith("|")}
    assert (
        text.startswith("loveda_urban\n| method")
        and "| 60.12 ± 0.82*" in rows["simclr"]
        and "| 60.12 ± 0.21*" in rows["moco"]
    )
    assert "| 41.00 ± 1.00^" in rows["random"]
    assert "*: best mean in its column; ^: second best;" in text


def test_ansi_marks_only_on_a_terminal(results, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["table", "--results", str(results)]) == 0
    shown = screen.getvalue()
    assert "\x1b[1m60.12 ± 0.82\x1b[22m" in shown and "\x1b[4m41.00 ± 1.00\x1b[24m" in shown
    assert "*: best" not in shown and not TAG.search(shown)
    monkeypatch.setenv("NO_COLOR", "1")  # no-color.org: the plain marks
    screen.truncate(0)
    assert main(["table", "--results", str(results)]) == 0
    assert "\x1b" not in screen.getvalue() and "60.12 ± 0.82*" in screen.getvalue()
    monkeypatch.undo()
    assert main(["table", "--results", str(results)]) == 0  # capsys: not a terminal
    piped = capsys.readouterr().out
    assert "\x1b" not in piped and "60.12 ± 0.82*" in piped and not TAG.search(piped)


def _bench_table(results: Path, stdout) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    command = [sys.executable, "-m", "bench", "table", "--results", str(results)]
    done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, env=environment)
    assert done.returncode == 0, done.stderr


def test_a_real_terminal_gets_ansi_and_a_pipe_does_not(results):
    """``bench table`` in a child process, its stdout a pseudo-terminal, then a pipe."""
    leader, follower = pty.openpty()
    try:
        _bench_table(results, follower)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert b"\x1b[1m60.12 \xc2\xb1 0.82\x1b[22m" in shown and not TAG.search(shown.decode())
    piped = subprocess.run(
        [sys.executable, "-m", "bench", "table", "--results", str(results)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"},
    )
    assert piped.returncode == 0 and "\x1b" not in piped.stdout
    assert "60.12 ± 0.82*" in piped.stdout


def test_three_datasets_give_three_blocks_and_wide_gives_one(tmp_path, capsys):
    datasets = ("loveda_urban", "potsdam", "synthetic")
    results = _study(tmp_path / "results", datasets, (0.01, 0.1))
    assert main(["table", "--results", str(results)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert sum(line.startswith("| method") for line in lines) == 3
    titles = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("| method")]
    assert titles == [*datasets]
    headers = [line.split("|")[2].strip() for line in lines if line.startswith("| method")]
    assert headers == ["1% mIoU"] * 3  # the dataset is the block's title, not in the header
    assert text.count("Rows: methods, baselines first") == 1  # the caption once, at the end
    assert text.index("Rows: methods") > text.rindex("| simclr")
    for fmt, heading in (("md", "**{}**"), ("latex", "\\textit{{{}}}"), ("html", "<caption>{}")):
        assert main(["table", "--results", str(results), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert [out.count(heading.format(latex_escape(d) if fmt == "latex" else d))
                for d in datasets] == [1, 1, 1]  # fmt: skip
        assert out.count("Rows: methods, baselines first") == 1
    assert main(["table", "--results", str(results), "--wide"]) == 0
    wide = capsys.readouterr().out
    assert sum(line.startswith("| method") for line in wide.splitlines()) == 1
    assert "| potsdam 10% mIoU" in wide
    for option in ([], ["--wide"]):  # CSV: one row per cell either way
        assert main(["table", "--results", str(results), "--format", "csv", *option]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1 + 2 * 3 * 2 * 2


def test_a_wide_dataset_is_split_per_metric(tmp_path):
    results = _study(tmp_path / "results", ("synthetic",), (0.01, 0.02, 0.05, 0.1))
    table = build_table(_records(results), ("miou", "kappa"), "random")
    blocks = table.blocks()
    assert [b.title for b in blocks] == ["mIoU", "Kappa"]  # 8 value columns > BLOCK_COLUMNS
    assert [len(b.table.columns) for b in blocks] == [4, 4]
    assert all(c.metric == "kappa" for c in blocks[1].table.columns)
    assert blocks[1].table.cell("simclr", blocks[1].table.columns[0]) == table.cell(
        "simclr", table.columns[1]
    )  # the same cell, with its rank, Δ and test
    assert [b.title for b in table.blocks(wide=True)] == [""]
    one_metric = build_table(_records(results), ("miou",), "random")  # 8 columns, one metric
    assert [b.title for b in one_metric.blocks()] == [""]


def test_builtin_method_order_is_the_registrys():
    from bench.methods import METHODS
    from bench.report.table import BUILTIN_METHODS

    own = [name for name in METHODS.names() if METHODS.plugin(name) is None]
    assert list(BUILTIN_METHODS) == [(name, METHODS.get(name).pretrains) for name in own]
    assert method_order(["simclr", "random", "zz", "imagenet"]) == [
        "random",
        "imagenet",
        "simclr",
        "zz",
    ]


def test_seeds_needed_many_is_seeds_needed_one_by_one():
    from bench.report import power

    rng = np.random.default_rng(5)
    gaps = [0.0, 1e-3, *rng.normal(0, 3, 150), *rng.normal(0, 0.05, 30)]
    spreads = [1.0, 2.0, *np.abs(rng.normal(2, 1.5, 180)) + 1e-3]
    together = power.seeds_needed_many(gaps, spreads, 0.05, 0.8, MIN_PAIRED_SEEDS)
    alone = [
        power.seeds_needed(g, s, 0.05, 0.8, MIN_PAIRED_SEEDS)
        for g, s in zip(gaps, spreads, strict=True)
    ]
    assert together == alone and len(set(alone)) > 20


def test_one_pass_reading_is_the_stores_scan(results):
    from bench.report.records import scan_results

    (results / "finetune-broken").mkdir()
    (results / "finetune-broken" / "result.json").write_text("{not json")
    other = next(results.glob("finetune-moco-*/result.json"))
    other.write_text(json.dumps(json.loads(other.read_text()) | {"job_id": "elsewhere"}))
    scan = scan_results(RunStore(results))
    assert (scan.valid, scan.unreadable) == RunStore(results).scan()
    assert len(scan.unreadable) == 2 and "belongs to job elsewhere" in str(scan.unreadable)


def test_fractions_get_a_log_axis_past_a_decade(results):
    from xml.etree import ElementTree

    from bench.report.plots import log_axis
    from bench.report.svg import fraction_svg

    assert not log_axis([10.0]) and not log_axis([5.0, 50.0]) and log_axis([1.0, 10.0, 100.0])
    table = build_table(_records(results), ("miou",), None)
    svg = ElementTree.fromstring(fraction_svg(table))  # well-formed, one panel per dataset
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert {"loveda_urban", "synthetic", "my_method", "1%", "10%", "mIoU (%)"} <= set(texts)
