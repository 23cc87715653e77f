"""Experiment files (bench.experiment): every ready experiment parses and plans; a file and
the equivalent command line plan the same jobs; a bad file is one line, exit 2, nothing
run; a rerun from the experiment `run` wrote skips every finished job; the cost estimate
counts the steps the jobs run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, file_tree

sys.path.insert(0, str(Path(__file__).parent / "datasets"))  # as pytest does for its tests
from fake_raw import (  # noqa: E402
    write_deepglobe,
    write_folder,
    write_loveda,
    write_potsdam,
    write_vaihingen,
)

from bench.cli import BAD_INPUT, main  # noqa: E402
from bench.cost import DEFAULT_RATES, estimate_cost, perf_rates
from bench.datasets import prepare_dataset
from bench.experiment import BY_HASH, LATEST, experiment_text, load_experiment
from bench.perf import PerfSettings, row, write_perf_report
from bench.store import RECORD, SPEC, RunStore
from bench.sweep import SweepSpec, plan

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
JOB_ID = re.compile(r"^\w+\s+(?:pretrain|finetune)\s+(\S+)", re.M)

# dataset -> its fake raw release in the real layout (tests/datasets/fake_raw.py)
FAKE_RELEASES = {
    "potsdam": write_potsdam,
    "vaihingen": write_vaihingen,
    "deepglobe": write_deepglobe,
    "loveda_urban": lambda raw: write_loveda(raw, "Urban"),
    "loveda_rural": lambda raw: write_loveda(raw, "Rural"),
    "xiangtan": write_folder,
}
PATCH = 32  # the fake releases' tiles are 36 to 72 px


def job_ids(out: str) -> list[str]:
    return JOB_ID.findall(out)


def _flags(option: str, items) -> list[str]:
    return [arg for item in items for arg in (option, item)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Every real dataset the experiments name, prepared by `prepare` from a tiny fake
    release at 32 px patches."""
    root = tmp_path_factory.mktemp("prepared")
    for name, write in FAKE_RELEASES.items():
        write(root / "raw" / name)
        settings = {"patch_size": PATCH}
        prepare_dataset(name, root / "raw" / name, root / "data", settings, seeds=(0,))
    return root / "data"


def test_the_ready_experiments_are_there():
    names = {path.stem for path in EXPERIMENTS}
    assert {"glcnet", "false", "grass", "multitask", "common"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_plans_with_its_datasets_prepared(path, prepared, tmp_path, capsys):
    experiment = load_experiment(path)
    datasets = experiment.sweep.datasets
    assert set(datasets) <= set(FAKE_RELEASES), "a dataset the fake releases do not cover"
    sizes = _flags("--set", [f"{name}.patch_size={PATCH}" for name in datasets])
    args = ["plan", str(path), "--data-root", str(prepared), "--results", str(tmp_path), *sizes]
    assert main(args) == 0
    out = capsys.readouterr().out
    planned = job_ids(out)
    assert planned and len(planned) == len(
        plan(load_experiment(path, {"overrides": sizes[1::2]}).sweep)
    )
    assert "is not prepared" not in out
    for name in datasets:  # the estimate counts the prepared patches
        assert re.search(rf"data: {name}: [\d,]+ train / [\d,]+ test patches \(prepared in ", out)
    assert "left out of the totals" not in out and "GPU-hours" in out


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_without_the_datasets_plan_names_each_missing_prepare(path, tmp_path, capsys):
    assert main(["plan", str(path), "--data-root", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    for name in load_experiment(path).sweep.datasets:
        assert f"dataset {name} is not prepared" in out
        assert f"python -m bench prepare {name} --raw <folder of the raw release>" in out


# ------------------------------------------------------------------ a file vs a command line
def test_glcnet_file_and_its_command_line_plan_the_same_job_ids(tmp_path, capsys):
    path = REPO / "experiments" / "glcnet.yaml"
    assert main(["plan", str(path), "--data-root", str(tmp_path)]) == 0
    from_file = job_ids(capsys.readouterr().out)
    line = ["plan", "--methods", "random,simclr,moco,byol,glcnet", "--datasets"]
    line += ["potsdam,deepglobe", "--fractions", "0.01", "--preset", "paper"]
    line += ["--set", "finetune.protocol=glcnet", "--data-root", str(tmp_path)]
    assert main(line) == 0
    from_flags = job_ids(capsys.readouterr().out)
    assert len(from_file) == 5 * 2 * 3 + 4 * 2 * 3  # fine-tunings + pretrainings, 3 seeds
    assert from_file == from_flags


def write_experiment(path: Path, results: Path, **extra) -> Path:
    """A tiny synthetic sweep as a file: TINY's settings by section."""
    settings: dict[str, dict] = {}
    for item in TINY:
        key, value = item.split("=")
        section, name = key.split(".")
        settings.setdefault(section, {})[name] = yaml.safe_load(value)
    values = {
        "methods": ["random", "simclr"],
        "datasets": ["synthetic"],
        "fractions": [0.5],
        "seeds": [0],
        "settings": settings,
        "results": str(results),
        **extra,
    }
    path.write_text(yaml.safe_dump(values))
    return path


def tiny_flags(results: Path) -> list[str]:
    line = ["--methods", "random,simclr", "--fractions", "0.5", "--seeds", "0"]
    return [*line, "--results", str(results), *_flags("--set", TINY)]


def test_a_file_and_the_same_flags_plan_the_same_jobs_and_flags_override_the_file(tmp_path, capsys):
    path = write_experiment(tmp_path / "tiny.yaml", tmp_path / "results")
    assert main(["plan", str(path)]) == 0
    from_file = job_ids(capsys.readouterr().out)
    assert main(["plan", *tiny_flags(tmp_path / "results")]) == 0
    assert from_file == job_ids(capsys.readouterr().out) and len(from_file) == 3

    # flags beside the file win: a list replaced, a setting added after the file's
    assert main(["plan", str(path), "--seeds", "4", "--set", "pretrain.epochs=3"]) == 0
    overridden = job_ids(capsys.readouterr().out)
    flags = [*tiny_flags(tmp_path / "results"), "--seeds", "4", "--set", "pretrain.epochs=3"]
    assert main(["plan", *flags]) == 0
    assert overridden == job_ids(capsys.readouterr().out)
    assert all("-s4-" in job for job in overridden) and set(overridden).isdisjoint(from_file)


def test_help_says_options_override_the_file(capsys):
    for command in ("run", "plan", "status", "table", "report"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "EXPERIMENT.yaml" in out and "override" in out


# ----------------------------------------------------------------------------- bad files
BAD_FILES = [
    ("methods: [simclr, random\n", "is not valid YAML: expected ',' or ']'"),
    ("methods: [simclr]\nmethods: [random]\n", "key 'methods' is given twice"),
    ("method: [simclr]\n", "unknown key 'method'; valid keys: methods, datasets, fractions"),
    (
        "table: {metrics: [miou]}\n",
        "unknown key 'table.metrics'; valid keys: table.metric, table.baseline",
    ),
    ("fractions: 0.1\n", "fractions: expected a list of numbers, e.g. [1, 2], got float 0.1"),
    ("seeds: [0, one]\n", "seeds: expected a list of integers"),
    ("preset: [paper]\n", "preset: expected a name (text), got list"),
    ("wait: 3\n", "wait: expected true or false, got int 3"),
    ("settings: {pretrain: 3}\n", "settings: expected a mapping of sections to mappings"),
    ("methods: [simclr, simclr]\n", "method simclr is given twice; give each method once"),
    ("methods: [simclrr]\n", "unknown method 'simclrr'; valid methods:"),
    ("settings: {pretrain: {epoch: 3}}\n", "unknown setting pretrain.epoch; valid keys"),
    ("settings: {pretrain: {epochs: three}}\n", "pretrain.epochs: expected int, got 'three'"),
    ("executor: cloud\n", "executor: unknown executor 'cloud'; valid executors: inline"),
    ("table: {metric: [accuracy]}\n", "unknown metric 'accuracy'; valid metrics"),
    ("- simclr\n", "holds a list; an experiment is a mapping of keys"),
    ("# nothing\n", "holds nothing; an experiment is a mapping of keys"),
]


@pytest.mark.parametrize("command", ["run", "plan", "table"])
@pytest.mark.parametrize("text,message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_a_bad_file_is_one_line_exit_2_and_nothing_runs(
    tmp_path, monkeypatch, capsys, command, text, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    path = tmp_path / "bad.yaml"
    whole = text.startswith(("-", "#"))  # not a mapping: nothing to add to
    path.write_text(text if whole else f"results: {tmp_path / 'results'}\n{text}")
    before = file_tree(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's errors exit; others return
        raise SystemExit(main([command, str(path)]))
    assert exited.value.code == BAD_INPUT
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {path}") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert file_tree(tmp_path) == before  # nothing run, nothing written


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.yaml")]) == BAD_INPUT
    assert (
        capsys.readouterr().err
        == f"error: experiment file {tmp_path / 'nope.yaml'} does not exist\n"
    )


def test_yaml_booleans_read_as_the_names_and_values_they_spell(tmp_path):
    """`false` is a method; `yes` a --set value the typed parser reads as true."""
    path = tmp_path / "e.yaml"
    path.write_text("methods: [false, random]\nsettings: {pretrain: {amp: no}}\nwait: yes\n")
    experiment = load_experiment(path)
    assert experiment.sweep.methods == ("false", "random") and experiment.wait is True
    jobs = plan(experiment.sweep)
    assert {job.method for job in jobs} == {"false", "random"}
    assert all(job.pretrain.amp is False for job in jobs if job.kind == "pretrain")
    written = tmp_path / "written.yaml"  # as `run` writes it: the same values read back
    written.write_text(experiment_text(experiment, jobs))
    again = load_experiment(written)
    assert again.sweep.methods == ("false", "random") and again.wait is True
    assert [job.job_id for job in plan(again.sweep)] == [job.job_id for job in jobs]


# ----------------------------------------------------------------- the written experiment
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny sweep run once from a file (its data root in the file): the file, its results."""
    root = tmp_path_factory.mktemp("tiny")
    extra = {"data_root": str(root / "data"), "table": {"baseline": "random"}}
    path = write_experiment(root / "tiny.yaml", root / "results", **extra)
    assert main(["-q", "run", str(path)]) == 0
    return path, root / "results"


def test_run_writes_the_resolved_experiment_and_each_job_names_it(tiny_run):
    path, results = tiny_run
    written = results / LATEST
    (by_hash,) = (results / BY_HASH).glob("*.yaml")
    assert by_hash.read_text() == written.read_text()
    store = RunStore(results)
    specs = [json.loads((store.run_dir(job) / SPEC).read_text()) for job in store.run_ids()]
    assert len(specs) == 3 and {s["experiment"] for s in specs} == {f"{BY_HASH}/{by_hash.name}"}
    resolved = load_experiment(written)
    assert resolved.sweep.methods == ("random", "simclr") and resolved.sweep.seeds == (0,)
    assert resolved.sweep.preset == "quick" and resolved.baseline == "random"
    planned = [job.job_id for job in plan(load_experiment(path).sweep)]
    assert [job.job_id for job in plan(resolved.sweep)] == planned
    assert sorted(planned) == store.run_ids()


def test_a_rerun_from_the_written_experiment_skips_every_finished_job(tiny_run, capsys):
    _, results = tiny_run
    written, store = results / LATEST, RunStore(results)
    records = {job: (store.run_dir(job) / RECORD).stat().st_mtime_ns for job in store.run_ids()}
    tree = file_tree(results)
    assert main(["-q", "run", str(written)]) == 0
    assert "| simclr" in capsys.readouterr().out
    assert {j: (store.run_dir(j) / RECORD).stat().st_mtime_ns for j in records} == records
    assert file_tree(results) == tree  # nothing run again, the same experiment kept
    for command in ("status", "plan"):
        assert main([command, str(written)]) == 0
        assert "3 jobs: 3 done" in capsys.readouterr().out
    assert main(["table", str(written)]) == 0
    assert "Δ" in capsys.readouterr().out  # the file's baseline


def test_a_refused_run_writes_no_experiment(tmp_path, capsys):
    path = write_experiment(tmp_path / "e.yaml", tmp_path / "results", datasets=["potsdam"])
    assert main(["run", str(path), "--data-root", str(tmp_path / "data")]) == BAD_INPUT
    assert "dataset potsdam is not prepared" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------ cost
def test_the_estimate_counts_the_steps_and_images_the_jobs_ran(tiny_run):
    path, results = tiny_run
    experiment = load_experiment(path)
    estimate = estimate_cost(plan(experiment.sweep), experiment.data_root, DEFAULT_RATES)
    assert {cost.job.kind for cost in estimate.jobs} == {"pretrain", "finetune"}
    for cost in estimate.jobs:
        record = RunStore(results).read_record(cost.job.job_id)
        assert cost.steps == record["steps"] and cost.hours > 0
        if cost.job.kind == "finetune":
            assert cost.scored == record["n_test"]
            assert cost.images == record["steps"] * cost.job.finetune.batch_size


def test_a_perf_report_gives_measured_rates_at_its_settings(tmp_path, capsys):
    settings = PerfSettings(methods=("simclr",))
    rows = [
        row("pretraining simclr (images/s)", 800.0, 810.0, ">= 0.95", True, "same final loss"),
        row("fine-tuning DeepLabV3+ (patches/s)", 200.0, 205.0, ">= 0.95", True, "batch 8"),
    ]
    machine = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}
    write_perf_report(
        {"settings": settings.__dict__, "machine": machine, "rows": rows}, tmp_path / "p.json"
    )
    rates = perf_rates(tmp_path / "p.json")
    simclr = rates.of("simclr")
    assert simclr.measured and simclr.per_second == 800.0 and rates.gpu
    assert not rates.of("moco").measured  # not in the report: the estimate stays

    spec = SweepSpec(methods=("simclr",), fractions=(0.5,))  # the perf run's preset: quick
    (pretrain,) = [
        c for c in estimate_cost(plan(spec), None, rates).jobs if c.job.kind == "pretrain"
    ]
    assert pretrain.hours * 3600 == pytest.approx(pretrain.images / 800.0)  # same settings
    assert main(["plan", "--methods", "simclr", "--perf", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "800.0 images/s  resnet18 48 px bf16  measured" in out and "NVIDIA H100" in out


def test_a_job_of_twice_the_view_side_in_float32_costs_eight_times_as_long():
    base = SweepSpec(methods=("simclr",), fractions=(0.5,))
    bigger = SweepSpec(
        **{**base.__dict__, "overrides": ("pretrain.view_size=96", "pretrain.amp=false")}
    )
    hours = [
        next(
            c for c in estimate_cost(plan(s), None, DEFAULT_RATES).jobs if c.job.kind == "pretrain"
        )
        for s in (base, bigger)
    ]
    assert hours[0].images == hours[1].images
    assert hours[1].hours == pytest.approx(hours[0].hours * 4 * 2)  # (96/48)^2, float32


def test_unprepared_datasets_of_unknown_size_are_left_out_and_named(tmp_path, capsys):
    line = ["plan", "--methods", "random", "--datasets", "potsdam,vaihingen", "--seeds", "0,1,2"]
    assert main([*line, "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data: potsdam: 13,824 train / 8,064 test patches (from the release's" in out
    assert "left out of the totals: 6 jobs on vaihingen" in out  # 2 fractions x 3 seeds
