"""A prepared real-layout dataset through the CLI: prepare, then a sweep uses it."""

from __future__ import annotations

import torch
from conftest import TINY
from fake_raw import write_loveda, write_potsdam

from bench.cli import main
from bench.datasets.subsets import subset_file
from bench.store import BACKBONE, RunStore

TRAINING = [item for item in TINY if not item.startswith("synthetic.")]


def sweep_args(results, data, *extra):
    args = ["-q", "run", "--results", str(results), "--data-root", str(data), *extra]
    for item in TRAINING:
        args += ["--set", item]
    return args


def test_run_before_prepare_names_the_command(tmp_path, capsys):
    code = main(sweep_args(tmp_path / "r", tmp_path / "d", "--datasets", "potsdam"))
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset potsdam is not prepared" in err
    assert "python -m bench prepare potsdam --raw <folder of the raw release>" in err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*/result.json"))


def test_prepare_then_sweep_on_four_band_potsdam(tmp_path, capsys):
    raw, data, results = tmp_path / "raw", tmp_path / "data", tmp_path / "results"
    write_potsdam(raw)
    args = ["prepare", "potsdam", "--raw", str(raw), "--data-root", str(data)]
    assert main([*args, "--patch-size", "32", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "low vegetation" in out and "patches" in out and "216" in out
    prepared = data / "potsdam" / "patch32_stride32"
    listed = subset_file(prepared, 0.1, 0).read_text()

    choice = ["--set", "potsdam.patch_size=32", "--set", "data.bands=rgbir"]
    run = sweep_args(results, data, "--datasets", "potsdam", "--methods", "random,simclr")
    assert main([*run, "--fractions", "0.1", *choice]) == 0
    records = [r for r in RunStore(results).records() if r.get("kind", "") != "pretrain"]
    finetunes = [r for r in records if "fraction" in r]
    assert len(finetunes) == 2 and all(r["status"] == "ok" for r in finetunes)
    assert {r["dataset"] for r in finetunes} == {"potsdam"}
    assert all(r["n_labelled"] == 22 for r in finetunes)  # ceil(0.1 * 216)
    assert subset_file(prepared, 0.1, 0).read_text() == listed  # the same labelled patches
    backbone = next(results.glob(f"pretrain-simclr-potsdam-*/{BACKBONE}"))
    weights = torch.load(backbone, weights_only=True)
    assert weights["conv1.weight"].shape[1] == 4  # R, G, B, IR reach the backbone

    assert main([*run, "--fractions", "0.001", *choice]) == 2
    err = capsys.readouterr().err
    assert "smallest usable fraction for potsdam is 0.00463" in err


def test_prepare_cli_errors(tmp_path, capsys):
    assert main(["prepare", "potsdam", "--data-root", str(tmp_path)]) == 2
    assert "needs --raw" in capsys.readouterr().err
    assert main(["prepare", "nowhere", "--raw", str(tmp_path)]) == 2
    assert "unknown dataset 'nowhere'" in capsys.readouterr().err
    write_loveda(tmp_path / "raw")
    args = ["prepare", "loveda_urban", "--raw", str(tmp_path / "raw")]
    assert main([*args, "--data-root", str(tmp_path / "d"), "--set", "loveda_urban.sizes=3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main([*args, "--data-root", str(tmp_path / "d"), "--patch-size", "3"]) == 2
    assert "loveda_urban.patch_size must be >= 8, got 3" in capsys.readouterr().err
