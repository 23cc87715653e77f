"""`prepare` under faults injected for real: SIGKILL of a `prepare` process at several
moments, a mistyped raw path with --force, damaged prepared files, a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, file_tree
from fake_raw import write_potsdam

from bench.cli import BAD_INPUT, STORAGE_FAULT, main
from bench.conformance import check_dataset
from bench.datasets import DatasetError, prepare_dataset
from bench.datasets.prepared import MANIFEST, STATE
from bench.sweep import SweepSpec, check_data, plan

TILES = 38  # tiles of the fake Potsdam release
PATCH = ("--patch-size", "32")


def prepared_dir(data: Path) -> Path:
    return data / "potsdam" / "patch32_stride32"


def prepare_command(raw: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "-q", "prepare", "potsdam", "--raw", str(raw),
            "--data-root", str(data), *PATCH]  # fmt: skip


def files_of(folder: Path) -> dict[str, bytes]:
    """Every prepared file's bytes; the manifest without ``seconds`` (how long that prepare
    took, the one field that differs between two prepares of the same release)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    manifest = json.loads(files.pop(MANIFEST))
    assert manifest.pop("seconds") >= 0
    return {**files, MANIFEST: json.dumps(manifest, sort_keys=True).encode()}


def kill_when(command: list[str], ready, timeout_s: float = 120.0) -> bool:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` holds; False when it ended
    before that moment came."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if process.poll() is not None:
                assert process.returncode == 0, process.stderr.read()
                return False
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        return True
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def tiles_done(data: Path) -> int:
    return len(list((prepared_dir(data) / "tiles").glob("*.json")))


def run_refusal(data: Path) -> str:
    """What `run` says of the half-prepared dataset (it must refuse)."""
    jobs = plan(SweepSpec(methods=("random",), datasets=("potsdam",),
                          overrides=("potsdam.patch_size=32",)))  # fmt: skip
    with pytest.raises(DatasetError) as refused:
        check_data(jobs, data)
    return str(refused.value)


@pytest.mark.slow
def test_prepare_killed_at_several_moments_resumes_to_identical_files(tmp_path):
    raw, data, clean = tmp_path / "raw", tmp_path / "data", tmp_path / "clean"
    write_potsdam(raw, size=256)
    moments = [
        lambda: tiles_done(data) >= TILES // 5,  # 20% of the tiles cut
        lambda: tiles_done(data) >= TILES // 2,
        lambda: tiles_done(data) >= TILES * 4 // 5,
        lambda: tiles_done(data) >= TILES,  # joining the splits (it may finish first)
    ]
    for number, ready in enumerate(moments):
        killed = kill_when(prepare_command(raw, data), ready)
        assert killed or number == len(moments) - 1
        if not killed:
            break
        assert not (prepared_dir(data) / MANIFEST).exists()
        message = run_refusal(data)
        assert "a prepare was interrupted there; rerun it to resume" in message
        assert "python -m bench prepare potsdam --raw" in message
    done = subprocess.run(prepare_command(raw, data), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    prepare_dataset("potsdam", raw, clean, {"patch_size": 32})
    assert files_of(prepared_dir(data)) == files_of(prepared_dir(clean))
    assert not (prepared_dir(data) / STATE).exists()


def test_force_with_a_mistyped_raw_path_deletes_nothing(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_potsdam(raw)
    prepare_dataset("potsdam", raw, data, {"patch_size": 32})
    (tmp_path / "afile").write_text("not a release\n")
    (tmp_path / "empty").mkdir()
    before = file_tree(data)
    for wrong, why in ((tmp_path / "afile", "is a file, not a folder"),
                       (tmp_path / "nowhere", "does not exist"),
                       (tmp_path / "empty", "expected files are missing")):  # fmt: skip
        argv = ["prepare", "potsdam", "--raw", str(wrong), "--data-root", str(data), *PATCH]
        assert main([*argv, "--force"]) == BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith("error: ") and why in err and "Traceback" not in err
        assert file_tree(data) == before, f"--force with {wrong} changed the prepared data"


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"{not json")


@pytest.mark.parametrize(
    "name,how,contract",
    [
        (MANIFEST, "garble", "ready"),
        (MANIFEST, "truncate", "ready"),
        ("train_images.npy", "truncate", "splits"),
        ("test_ids.txt", "binary", "splits"),
    ],
)
def test_damaged_prepared_files_are_named_with_the_fix(tmp_path, capsys, name, how, contract):
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_potsdam(raw)
    prepare_dataset("potsdam", raw, data, {"patch_size": 32})
    path = prepared_dir(data) / name
    if how == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    else:
        damage(path, how)
    settings = ("--set", "potsdam.patch_size=32")
    results = checked = None
    if contract == "ready":  # `run` refuses in one line that names the file
        results = ["-q", "run", "--datasets", "potsdam", "--methods", "random", *settings,
                   "--data-root", str(data), "--results", str(tmp_path / "r")]  # fmt: skip
        assert main(results) == BAD_INPUT
        err = capsys.readouterr().err
        assert str(path) in err and "--force" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    checked = check_dataset("potsdam", ("potsdam.patch_size=32",), data, only=(contract,))
    failing = [c for c in checked if c.status == "FAIL"]
    assert failing and failing[0].name == contract
    assert str(path) in failing[0].message and "prepare the dataset again" in failing[0].message


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_during_prepare_is_one_line_and_the_rerun_is_identical(tmp_path, capsys):
    from test_storage_faults import mounted_tmpfs, remount

    raw, clean = tmp_path / "raw", tmp_path / "clean"
    write_potsdam(raw, size=256)
    with mounted_tmpfs(tmp_path / "fs", "2m") as data:
        argv = ["-q", "prepare", "potsdam", "--raw", str(raw), "--data-root", str(data), *PATCH]
        assert main(argv) == STORAGE_FAULT
        err = capsys.readouterr().err
        assert err.startswith("error: no space left on device (ENOSPC) writing ")
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (prepared_dir(data) / MANIFEST).exists()
        remount(data, "64m")
        assert main(argv) == 0
        capsys.readouterr()
        prepare_dataset("potsdam", raw, clean, {"patch_size": 32})
        assert files_of(prepared_dir(data)) == files_of(prepared_dir(clean))
        assert not [p for p in data.rglob("*") if ".tmp" in p.name]


def test_check_dataset_raw_for_an_already_prepared_dataset_says_so(tmp_path, caplog):
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_potsdam(raw)
    prepare_dataset("potsdam", raw, data, {"patch_size": 32})
    settings = ("potsdam.patch_size=32",)
    with caplog.at_level("WARNING"):
        checked = check_dataset("potsdam", settings, data, raw, only=("ready",))
    assert [c.status for c in checked] == ["PASS"]
    assert "already prepared" in caplog.text and f"--raw {raw}" in caplog.text
    a_file = raw / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif"
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        check_dataset("potsdam", settings, data, a_file)
