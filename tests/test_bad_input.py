"""Every bad input is refused before any work: exit code 2, one line that says what is wrong
and what is valid, no traceback, and not one file written or changed (the folder trees are
compared before and after). Unreadable result records are named, left out and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, file_tree
from test_report import write_fixture

from bench.cli import BAD_INPUT, INCOMPLETE, main
from bench.config import ConfigError
from bench.execution.sweeps import run_sweep
from bench.store import RECORD, RunStore
from bench.sweep import SweepSpec, plan

RESULTS, FILE, MISSING, RAW = "<results>", "<file>", "<missing>", "<raw>"

# (argv, what the one line must say); placeholders are paths in the test's folder
CASES = [
    # lists: duplicates, empty, out of range, unparsable
    (["run", "--fractions", "0.1,0.1"], "label fraction 0.1 is given twice"),
    (["run", "--fractions", "0"], "label fraction must be in (0, 1]"),
    (["run", "--fractions", "x"], "expected comma-separated numbers"),
    (["run", "--seeds", "0,0"], "seed 0 is given twice"),
    (["run", "--seeds=-1"], "seeds must be non-negative integers, got -1"),
    (["run", "--seeds", "1.5"], "expected comma-separated integers"),
    (["run", "--methods", "simclr,simclr"], "method simclr is given twice"),
    (["run", "--methods", "simclrr"], "unknown method 'simclrr'; valid methods: random"),
    (["run", "--datasets", "synthetic,synthetic"], "dataset synthetic is given twice"),
    (["run", "--datasets", ""], "no datasets given; valid datasets: synthetic"),
    (["run", "--preset", "huge"], "valid presets: quick, cpu, paper"),
    # settings of every type, generic and per method / dataset
    (["run", "--set", "pretrain.log_every=0"], "pretrain.log_every must be >= 1, got 0"),
    (["run", "--set", "pretrain.view_size=0"], "pretrain.view_size must be >= 8, got 0"),
    (["run", "--set", "pretrain.momentum=1"], "pretrain.momentum must satisfy 0 <= momentum < 1"),
    (["run", "--set", "pretrain.lr=-1"], "pretrain.lr must be > 0, got -1.0"),
    (["run", "--set", "pretrain.lr=nan"], "pretrain.lr: expected a finite number"),
    (["run", "--set", "pretrain.epochs=two"], "pretrain.epochs: expected int"),
    (["run", "--set", "pretrain.gpus=0"], "pretrain.gpus must be >= 1, got 0"),
    (["run", "--set", "pretrain.optimizer=adagrad"], "is not one of adam, adamw, sgd, lars"),
    (["run", "--set", "pretrain.amp=maybe"], "pretrain.amp: expected true or false"),
    (["run", "--set", "finetune.checkpoint_every=-1"], "finetune.checkpoint_every must be >= 0"),
    (["run", "--set", "finetune.output_stride=4"], "'4' is not one of 8, 16"),
    # downstream protocols
    (
        ["run", "--set", "finetune.protocol=mmseg"],
        "unknown protocol 'mmseg' for finetune.protocol; valid protocols: harness, glcnet, false",
    ),
    (["run", "--set", "finetune.eval_stride=0"], "finetune.eval_stride must be >= 1, got 0"),
    (
        ["run", "--set", "finetune.eval_window=64"],
        "eval_stride=128 is larger than eval_window=64",
    ),
    (
        ["run", "--set", "finetune.protocol=false", "--set", "finetune.load=all"],
        "load=all would load a pretrained decoder too",
    ),
    (["run", "--set", "finetune.evaluation=tiles"], "synthetic has none"),
    (["run", "--set", "finetune.labels=stratified"], "need a dataset cut from tiles"),
    (
        ["run", "--preset", "paper", "--set", "finetune.steps=10"],
        "finetune.steps has no effect: protocol glcnet counts epochs",
    ),
    (
        ["run", "--set", "simclr.crop_scale=1,0.08"],
        "simclr.crop_scale must satisfy 0 < low <= high",
    ),
    (["run", "--set", "simclr.crop_scale=0.2"], "expected 2 comma-separated values"),
    (["run", "--set", "moco.blur_prob=1.5"], "moco.blur_prob must satisfy 0 <= blur_prob <= 1"),
    (["run", "--set", "byol.blur_probs=0.5,-0.1"], "byol.blur_probs must satisfy 0 <= each value"),
    (["run", "--set", "false.alpha=0"], "false.alpha must satisfy 0 < alpha <= 1, got 0.0"),
    (["run", "--set", "grass.warmup_epochs=-1"], "grass.warmup_epochs must be >= 0, got -1"),
    (["run", "--set", "multitask.decoder_channels=0,1,1,1,1"], "must have each value >= 1"),
    (["run", "--set", "glcnet.hue=0.7"], "glcnet.hue must satisfy 0 <= hue <= 0.5"),
    (["run", "--set", "synthetic.n_train=0"], "synthetic.n_train must be >= 1, got 0"),
    (["run", "--set", "potsdam.labels=eroded"], "'eroded' is not one of full, no_boundary"),
    (["run", "--set", "nosection.x=1"], "unknown settings section 'nosection'"),
    (["run", "--set", "pretrain.epoch=3"], "unknown setting pretrain.epoch; valid keys"),
    (["run", "--set", "pretrain.epochs"], "expected section.field=value"),
    # checked against the data before the first job
    (["run", "--set", "pretrain.batch_size=4096"], "exceeds the 1024 training patches"),
    (
        ["run", "--methods", "moco", "--set", "moco.queue_size=4096"],
        "is not smaller than the 1024 pretraining images",
    ),
    (["run", "--datasets", "potsdam"], "dataset potsdam is not prepared"),
    # the table of `run`, before the sweep
    (["run", "--metric", "accuracy"], "unknown metric 'accuracy'; valid metrics: miou, kappa"),
    (["run", "--metric", "miou,miou"], "metric miou is given twice"),
    (["run", "--methods", "random", "--baseline", "simclrr"], "valid baselines: random, none"),
    (["run", "--executor", "nope"], "invalid choice: 'nope'"),
    (["run", "--executor", "slurm", "--cluster", MISSING], "does not exist; see slurm/"),
    (["run", "--executor", "slurm", "--slurm", "partitionx=gpu"], "unknown cluster setting"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    # the same sweep checks in plan
    (["plan", "--seeds", "0,0"], "seed 0 is given twice"),
    (["plan", "--set", "simclr.jitter_prob=2"], "simclr.jitter_prob must satisfy 0 <="),
    # table, plot, status
    (["table", "--results", RESULTS, "--metric", "accuracy"], "valid metrics: miou, kappa"),
    (["table", "--results", RESULTS, "--metric", "miou,miou"], "metric miou is given twice"),
    (["table", "--results", RESULTS, "--baseline", "simclrr"], "has no fine-tuning records"),
    (["table", "--results", RESULTS, "--format", "xlsx"], "valid formats: md, latex, csv"),
    (["table", "--results", RESULTS, "--output", "x.txt"], "cannot tell the table format"),
    (["table", "--results", RESULTS, "--output", f"{MISSING}/t.md"], "does not exist"),
    (["table", "--results", RESULTS, "--output", f"{FILE}/t.md"], "is not a folder"),
    (["table", "--results", RESULTS, "--output", RESULTS], "is a folder; give a file name"),
    (["table", "--results", RESULTS, "--fraction", "0.1"], "choose the --per-class table"),
    (["table", "--results", FILE], f"results folder {FILE} is not a folder"),
    (["table", "--results", MISSING], f"results folder {MISSING} does not exist"),
    (["plot", "--results", RESULTS, "--output-dir", FILE], "is a file, not a folder"),
    (["plot", "--results", RESULTS, "--output-dir", f"{MISSING}/plots"], "does not exist"),
    (["plot", "--results", RESULTS, "--metric", "miou,accuracy"], "unknown metric 'accuracy'"),
    (["plot", "--results", RESULTS, "--metric", "miou,miou"], "metric miou is given twice"),
    (["plot", "--results", RESULTS, "--format", "pdf"], "unknown plot format 'pdf'"),
    (["plot", "--results", MISSING], f"results folder {MISSING} does not exist"),
    (["status", "--results", FILE], f"results folder {FILE} is not a folder"),
    (["status", "--results", MISSING, "-q"], f"results folder {MISSING} does not exist"),
    # prepare and perf
    (["prepare", "potsdam", "--raw", RAW, "--seeds=-1"], "seeds must be non-negative"),
    (["prepare", "potsdam", "--raw", RAW, "--fractions", "0.1,0.1"], "0.1 is given twice"),
    (["prepare", "potsdam", "--raw", RAW, "--patch-size", "2"], "potsdam.patch_size must be >="),
    (["prepare", "potsdamm", "--raw", RAW], "unknown dataset 'potsdamm'; valid datasets:"),
    (["perf", "--steps", "0"], "--steps: expected a positive integer, got '0'"),
    (["perf", "--methods", "random"], "perf measures pretraining methods"),
    # plugins and conformance checks
    (["plan", "--plugin", "no_such_plugin_xyz"], "plugin 'no_such_plugin_xyz' (--plugin) failed"),
    (["check-method", "simclrr"], "unknown method 'simclrr'; valid methods:"),
    (["check-method", "simclr", "--only", "resum"], "unknown contract 'resum'; valid contracts"),
    (["check-method", "simclr", "--set", "simclr.temperature=0"], "simclr.temperature must be"),
    (["check-dataset", "synthetic", "--raw", RAW], "dataset synthetic is generated"),
    (["check-dataset", "synthetic", "--set", "pretrain.lr=1"], "takes only --set synthetic.KEY"),
    (["check-dataset", "potsdamm"], "unknown dataset 'potsdamm'"),
    # paths checked before anything changes; metrics the records do not have
    (["check-dataset", "potsdam", "--raw", FILE], f"raw folder {FILE} is a file, not a folder"),
    (["prepare", "potsdam", "--raw", FILE], f"raw folder {FILE} is a file, not a folder"),
    (["prepare", "potsdam", "--raw", MISSING, "--force"], f"raw folder {MISSING} does not exist"),
    (
        ["table", "--results", RESULTS, "--metric", "miou,image_miou"],
        "no finished fine-tuning record has metric 'image_miou' (records written before it "
        "existed lack it); metrics these records have: miou, kappa",
    ),
    (["--plugin", "./mine.py", "plan"], "a plugin is named by its module, not by a file path"),
]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A results folder with records, a file, a raw folder; the working and data folders
    inside the test's folder, so anything a command wrote would show in the tree."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    write_fixture(tmp_path / "results")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "raw").mkdir()
    return {
        RESULTS: str(tmp_path / "results"),
        FILE: str(tmp_path / "a-file"),
        MISSING: str(tmp_path / "missing"),
        RAW: str(tmp_path / "raw"),
    }


def _fill(text: str, paths: dict[str, str]) -> str:
    for placeholder, path in paths.items():
        text = text.replace(placeholder, path)
    return text


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_refused_before_any_work(workspace, tmp_path, capsys, argv, message):
    argv = [_fill(arg, workspace) for arg in argv]
    before = file_tree(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's errors exit; others return
        raise SystemExit(main(argv))
    assert exited.value.code == BAD_INPUT
    out, err = capsys.readouterr()
    first, *rest = err.strip().splitlines()
    assert first.startswith("error: ") and _fill(message, workspace) in first, err
    assert "Traceback" not in err + out
    # more lines only where the message shows a command or a layout to follow
    assert not rest or argv[1:3] == ["--datasets", "potsdam"] or "layout:" in first, err
    assert file_tree(tmp_path) == before, "a refused command wrote or changed a file"


@pytest.mark.parametrize(
    "spec,message",
    [
        (SweepSpec(fractions=(0.1, 0.1)), "label fraction 0.1 is given twice"),
        (SweepSpec(seeds=(-1,)), "seeds must be non-negative integers, got -1"),
        (SweepSpec(methods=("moco", "moco")), "method moco is given twice"),
        (SweepSpec(overrides=("pretrain.log_every=0",)), "pretrain.log_every must be >= 1, got 0"),
    ],
)
def test_python_api_refuses_with_the_cli_message(tmp_path, capsys, spec, message):
    with pytest.raises(ConfigError) as raised:
        plan(spec)
    assert message in str(raised.value)
    with pytest.raises(
        ConfigError, match=str(raised.value).replace("(", r"\(").replace(")", r"\)")
    ):
        run_sweep(spec, tmp_path / "results", tmp_path / "data")
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------- unreadable records
def _first_record(results: Path) -> Path:
    return next(results.glob(f"finetune-simclr-synthetic-f0.01-s0-*/{RECORD}"))


def _edit_record(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


CORRUPTIONS = {
    "invalid JSON": (lambda p: p.write_text('{"status": "ok", "miou": 0.3'), "is not valid JSON"),
    "a list at the top": (lambda p: p.write_text("[1, 2]"), "holds a JSON list, not a record"),
    "text fraction": (
        lambda p: _edit_record(p, lambda r: r.update(fraction="0.01")),
        "field 'fraction' is '0.01', expected int or float",
    ),
    "text seed": (
        lambda p: _edit_record(p, lambda r: r.update(seed="0")),
        "field 'seed' is '0', expected int",
    ),
    "missing metric": (lambda p: _edit_record(p, lambda r: r.pop("miou")), "has no field 'miou'"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_unreadable_records_are_named_counted_and_left_out(tmp_path, capsys, kind):
    results = write_fixture(tmp_path / "results")
    path = _first_record(results)
    corrupt, reason = CORRUPTIONS[kind]
    corrupt(path)
    job_id = path.parent.name

    assert main(["table", "--results", str(results), "--wide"]) == INCOMPLETE  # one row each
    out, err = capsys.readouterr()
    assert f"warning: left out {path}: {reason}" in err
    assert "unreadable records left out: 1." in out
    simclr = next(row for row in out.splitlines() if row.startswith("| simclr"))
    assert "37.00 ± 1.41 (n=2)" in simclr  # 1% mIoU of seeds 1 and 2 only

    assert main(["table", "--results", str(results), "--per-class", "--dataset", "synthetic",
                 "--fraction", "0.01"]) == INCOMPLETE  # fmt: skip
    assert "unreadable records left out: 1." in capsys.readouterr().out

    assert main(["plot", "--results", str(results), "--format", "svg"]) == INCOMPLETE
    out, err = capsys.readouterr()
    assert f"left out {path}" in err and "miou_vs_fraction.svg" in out

    assert main(["status", "--results", str(results)]) == INCOMPLETE
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if job_id in row)
    assert line.startswith("corrupt") and reason in line and "1 corrupt" in out


def test_report_names_a_corrupt_spec_and_exits_3(tmp_path, capsys):
    results = write_fixture(tmp_path / "results")
    spec = _first_record(results).parent / "spec.json"
    spec.write_text('{"job_id": ')
    assert main(["report", "--results", str(results)]) == INCOMPLETE
    out, err = capsys.readouterr()
    assert f"warning: left out {spec}: is not valid JSON" in err and "Traceback" not in err
    page = (results / "report.html").read_text()
    assert f"left out, not a valid record: {spec}" in page


def test_a_rerun_redoes_a_job_whose_record_is_unreadable(dirs, capsys):
    results, data = dirs
    spec = SweepSpec(methods=("random",), fractions=(0.5,), overrides=TINY)
    record = run_sweep(spec, results, data).finetune_records()[0]
    path = results / record["job_id"] / RECORD
    path.write_text("[]")
    args = ["--methods", "random", "--fractions", "0.5", "--results", str(results)]
    args += [item for pair in (("--set", s) for s in TINY) for item in pair]
    assert main(["plan", *args]) == 0
    assert "corrupt" in capsys.readouterr().out
    assert main(["-q", "run", *args]) == 0
    redone = RunStore(results).read_record(record["job_id"])
    assert redone is not None and redone["miou"] == record["miou"]  # the same run again
