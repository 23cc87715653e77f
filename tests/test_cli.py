"""The CLI is a thin layer: it parses, calls the typed functions and reports errors cleanly."""

import subprocess
import sys

from bench.cli import main


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "random" in out and "synthetic" in out and "quick" in out


def test_plan_then_run_then_table(dirs, tiny_overrides, capsys):
    results, data = dirs
    common = ["--methods", "simclr,random", "--fractions", "0.5", "--results", str(results)]
    for item in tiny_overrides:
        common += ["--set", item]
    assert main(["plan", *common]) == 0
    out = capsys.readouterr().out
    assert "3 jobs: 3 planned" in out and "pretrain-simclr-synthetic-s0-" in out
    assert main(["-q", "run", *common]) == 0
    out = capsys.readouterr().out
    assert "| simclr" in out and "50% mIoU" in out
    assert main(["plan", *common]) == 0
    assert "3 jobs: 3 done" in capsys.readouterr().out
    assert main(["table", "--results", str(results), "--metric", "oa"]) == 0
    assert "50% OA" in capsys.readouterr().out
    assert main(["status", "--results", str(results)]) == 0
    assert "3 jobs: 3 done" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["plan", "--methods", "simclr,byoll"]) == 2
    assert "error: unknown method 'byoll'; valid methods:" in capsys.readouterr().err
    assert main(["plan", "--set", "pretrain.lrr=1"]) == 2
    assert "valid keys for pretrain" in capsys.readouterr().err
    assert main(["table", "--results", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "bench", "list"], capture_output=True, text=True)
    assert done.returncode == 0 and "methods:" in done.stdout


def test_plan_of_the_paper_and_common_presets_shows_what_differs(tmp_path, capsys):
    args = ["plan", "--methods", "simclr,moco,random", "--results", str(tmp_path)]
    assert main([*args, "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("settings where the paper preset differs from the common") :]
    simclr = section[section.index("  simclr:") : section.index("  moco:")]
    assert "pretrain.optimizer" in simclr and "lars" in simclr and "(common: adam)" in simclr
    assert "simclr.projector_relu" in simclr and "(common: True)" in simclr
    moco = section[section.index("  moco:") :]
    assert "pretrain.momentum" in moco and "(common: -)" in moco  # SGD's, unused by Adam
    assert "random" not in section  # nothing to pretrain, nothing to compare
    assert main([*args, "--preset", "common"]) == 0
    assert "(paper: lars)" in capsys.readouterr().out
    assert main([*args]) == 0  # quick: compared with nothing
    assert "settings where" not in capsys.readouterr().out


def test_plan_show_settings_prints_every_section_and_marks_what_differs(capsys):
    args = ["plan", "--methods", "simclr,moco,random", "--set", "simclr.temperature=0.2"]
    assert main([*args, "--set", "pretrain.epochs=5", "--show-settings"]) == 0
    out = capsys.readouterr().out
    settings = out[out.index("resolved settings (quick preset") :]
    sections = [line.strip() for line in settings.splitlines() if line.startswith("  [")]
    assert sections == [
        "[data]",
        "[finetune]",
        "[synthetic]",
        "[simclr]",
        "[moco]",
        "[random] no settings",
        "[pretrain: simclr, moco]",  # one loop shared by both under this preset
    ]
    lines = [line.split() for line in settings.splitlines()]
    assert ["*", "temperature", "0.2", "(default", "0.5)"] in lines
    assert ["temperature", "0.2"] in lines  # moco's own, at its default: not marked
    assert ["*", "epochs", "5", "(default", "3)"] in lines
    assert ["lars_trust", "0.001", "unused"] in lines  # with Adam


def test_plan_without_show_settings_prints_no_settings(capsys):
    assert main(["plan", "--methods", "random"]) == 0
    assert "resolved settings" not in capsys.readouterr().out
