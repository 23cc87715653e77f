"""`bench perf` measures the harness against bare loops doing the same computation."""

import math
import time

import pytest

from bench.cli import main
from bench.perf import (
    PerfSettings,
    Run,
    Steady,
    _finetune_job,
    bare_run,
    format_report,
    harness_run,
    metric_rates,
    run_perf,
    steady_row,
    step_clock,
)

TINY_PERF = ("synthetic.patch_size=32", "pretrain.view_size=32", "pretrain.batch_size=8")


def test_bare_loops_compute_what_the_harness_computes(tmp_path):
    settings = PerfSettings(
        methods=("simclr", "byol"), short=2, steady=2, rounds=2, repeats=1, overrides=TINY_PERF
    )
    report = run_perf(settings, progress=lambda m: None)
    rows = {row["measure"]: row for row in report["rows"]}
    for method in ("simclr", "byol"):
        row = rows[f"pretraining {method} (images/s)"]
        assert row["note"] == "same final loss"  # identical computation, bit for bit
        assert row["harness"] > 0 and row["reference"] > 0
        # the median of the rounds' ratios (two rounds: their mean), within their spread
        assert len(row["rounds"]) == 2 and row["spread"] == [min(row["rounds"]), max(row["rounds"])]
        assert abs(row["ratio"] - sum(row["rounds"]) / 2) < 1e-12
        assert row["ratio"] == pytest.approx(row["harness"] / row["reference"], rel=0.5)
        assert row["between_ms"]["harness"] > 0 and row["inside_ms"]["bare"] > 0
        # slopes from the rounds whose long runs outlasted their short ones (2 steps apart:
        # on a loaded machine one round may not; test_a_slope_within_the_noise_is_not_a_rate)
        assert len(row["slope_rounds"]) <= 2 and all(ratio > 0 for ratio in row["slope_rounds"])
        assert row["fixed_seconds"]["harness"] > 0 or math.isnan(row["fixed_seconds"]["harness"])
        assert not row["cpu_per_wall"]["bare"] <= 0  # positive, or NaN when no round measured
    assert rows["step cost simclr / simclr"]["ratio"] == 1.0
    assert rows["fine-tuning DeepLabV3+ (patches/s)"]["ratio"] > 0
    assert rows["prepared data loader vs pretraining step (patches/s)"]["harness"] > 0
    assert report["machine"]["device"] == "cpu"


def test_steady_state_is_the_slope_and_fixed_cost_the_intercept():
    # 2 s of set-up, 0.1 s a step of 8 images: runs of 5 and 55 steps
    short, long = Run(2.5, 5.0, None), Run(7.5, 15.0, None)
    steady = Steady.of(short, long, short_steps=5, steady_steps=50, batch=8)
    assert abs(steady.rate - 80.0) < 1e-9 and abs(steady.fixed - 2.0) < 1e-9
    assert abs(steady.cpu_per_wall - 2.0) < 1e-9  # two cores busy during the steps


def test_a_slope_within_the_noise_is_not_a_rate():
    # the long run (5 more steps) ended sooner than the short one: the steps were shorter
    # than the runs' noise, so no rate, set-up cost or CPU/wall comes of them
    steps = tuple((0.1 * k, 0.1 * k + 0.05) for k in range(8))
    noisy = Steady.of(Run(3.0, 6.0, None), Run(2.9, 5.0, None, steps), 3, 5, batch=8)
    assert math.isnan(noisy.rate) and math.isnan(noisy.fixed) and math.isnan(noisy.cpu_per_wall)
    assert noisy.period == pytest.approx(0.1)  # the step clock still measured the steps
    measured = Steady.of(Run(2.5, 5.0, None), Run(7.5, 15.0, None, steps), 5, 50, batch=8)
    line = steady_row("m", {"harness": [noisy, measured], "bare": [measured, measured]}, "")
    assert line["slope_rounds"] == [1.0] and line["slope_ratio"] == 1.0  # the measured round
    assert line["cpu_per_wall"]["harness"] == pytest.approx(2.0)  # NaN rounds left out
    alone = steady_row("m", {"harness": [noisy], "bare": [measured]}, "")
    assert math.isnan(alone["slope_ratio"]) and math.isnan(alone["fixed_seconds"]["harness"])
    assert "nan" in format_report({"rows": [alone], "machine": {}})  # shown, not a crash


def test_step_times_are_medians_inside_and_between_steps_after_the_warm_up():
    # a warm-up step of 1 s, then steps of 0.1 s 0.01 s apart, one of them stalled 2 s
    steps = ((0.0, 1.0), (1.01, 1.11), (1.12, 1.22), (1.23, 3.33), (3.34, 3.44), (3.45, 3.55))
    run = Run(4.0, 4.0, None, steps)
    inside, between = run.step_times(skip=1)
    assert inside == pytest.approx(0.1) and between == pytest.approx(0.01)  # not the stall
    assert Run(1.0, 1.0, None, ((0.0, 1.0), (1.0, 2.0))).step_times(skip=1) is None
    steady = Steady.of(Run(2.5, 5.0, None), run, short_steps=1, steady_steps=5, batch=8)
    assert steady.period == pytest.approx(0.11) and steady.step_rate == pytest.approx(8 / 0.11)


def test_the_ratio_is_the_harness_step_with_the_bare_work_between_steps():
    def steady(inside: float, between: float) -> Steady:
        return Steady(rate=1.0, fixed=1.0, cpu_per_wall=1.0, inside=inside, between=between)

    # the machine was 20% slower during the harness run: its step took 0.12 s, not 0.1 s;
    # the harness adds 2 ms between steps to the bare loop's 1 ms
    line = steady_row("m", {"harness": [steady(0.12, 0.003)], "bare": [steady(0.1, 0.001)]}, "")
    assert line["ratio"] == pytest.approx(0.121 / 0.123)  # the harness's own work only
    assert line["period_ratio"] == pytest.approx(0.101 / 0.123)  # the drift in it
    assert line["between_ms"] == pytest.approx({"harness": 3.0, "bare": 1.0})


def test_step_clock_times_the_engine_steps_of_harness_and_bare_runs(tmp_path):
    job = _finetune_job(PerfSettings(overrides=TINY_PERF), steps=3)
    harness, bare = harness_run(job, tmp_path), bare_run(job, tmp_path)
    for run in (harness, bare):
        assert len(run.steps) == 3
        assert all(start < end for start, end in run.steps)
        assert all(run.steps[k][1] <= run.steps[k + 1][0] for k in range(2))
    with step_clock() as steps:
        time.sleep(0)
    assert steps == []  # the clock is off outside the runs: nothing stepped
    assert len(harness_run(job, tmp_path).steps) == 3  # each run its own clock


def test_metric_rates_check_the_matrices_agree():
    rates = metric_rates(repeats=1, pixels=10_000)  # raises if ours and sklearn's differ
    assert rates["bench"] > 0 and rates["sklearn"] > 0


def test_perf_cli_rejects_baselines(tmp_path, capsys):
    assert main(["perf", "--methods", "random", "--output", str(tmp_path / "p.json")]) == 2
    assert "not one: random" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
