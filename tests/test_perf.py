"""`bench perf` measures the harness against bare loops doing the same computation."""

from bench.cli import main
from bench.perf import PerfSettings, Run, Steady, metric_rates, run_perf

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
        assert row["fixed_seconds"]["harness"] > 0 and row["cpu_per_wall"]["bare"] > 0
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


def test_metric_rates_check_the_matrices_agree():
    rates = metric_rates(repeats=1, pixels=10_000)  # raises if ours and sklearn's differ
    assert rates["bench"] > 0 and rates["sklearn"] > 0


def test_perf_cli_rejects_baselines(tmp_path, capsys):
    assert main(["perf", "--methods", "random", "--output", str(tmp_path / "p.json")]) == 2
    assert "not one: random" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
