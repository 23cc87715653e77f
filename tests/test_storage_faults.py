"""Storage faults injected for real: a sweep on a small tmpfs that fills up, a tmpfs remounted
read-only while a pretraining runs, a disk full when the record is written. Each fault fails
its job in one line naming the path and the cause, leaves no file that reads as complete and
no temporary file, stops the sweep, shows the job as failed in ``status``, and a rerun once
fixed gives the table of an uninterrupted sweep.

Mounting needs root (CI runs as root); elsewhere these tests skip and say so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY

from bench.cli import STORAGE_FAULT
from bench.execution.executors import collect_records
from bench.jobs import job_spec, keep_record
from bench.states import JobState, record_status
from bench.store import (
    ATTEMPT,
    RunStore,
    atomic_write_bytes,
    remove_stale_temporaries,
    storage_fault,
)
from bench.sweep import SweepSpec, plan

# TINY with a pretraining long enough to remount under it, and no TensorBoard writer
# (an open file makes a read-only remount fail with EBUSY)
SETTINGS = (
    *(item for item in TINY if not item.startswith("pretrain.epochs")),
    "pretrain.epochs=6",
    "pretrain.tensorboard=false",
    "finetune.tensorboard=false",
)
SWEEP = ("--methods", "random,simclr", "--fractions", "0.1")


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` at ``folder`` while active (skips the test where mounting is not
    allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, option: str) -> None:
    """Remount ``folder``'s tmpfs with ``option``: a size (``64m``), ``ro`` or ``rw``."""
    flag = option if option in ("ro", "rw") else f"size={option}"
    done = _mount(["-o", f"remount,{flag}", str(folder)])
    assert done.returncode == 0, done.stderr


def fill(folder: Path) -> None:
    """Write a file into ``folder`` until the filesystem is full."""
    with open(folder / "filler", "wb") as handle:
        chunk = b"\0" * 65536
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with contextlib.suppress(OSError), open(folder / "filler", "ab") as handle:
        while True:  # the last partial block
            handle.write(b"\0")
            handle.flush()


def bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bench", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def run_args(results: Path) -> list[str]:
    settings = [part for item in SETTINGS for part in ("--set", item)]
    return ["-q", "run", *SWEEP, "--results", str(results), *settings]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data root and the table of the same sweep run without a fault."""
    root = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "BENCH_DATA_ROOT": str(root / "data")}
    done = bench(*run_args(root / "results"), env=env)
    assert done.returncode == 0, done.stderr
    table = bench("table", "--results", str(root / "results"), env=env)
    return env, table.stdout


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def assert_one_clear_failure(done: subprocess.CompletedProcess, cause: str) -> str:
    """The sweep stopped with the storage-fault code, one FAILED line naming the path and
    the cause, the rest skipped, and no traceback; returns the failed job's id."""
    assert done.returncode == STORAGE_FAULT, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and cause in failed[0] and " writing /" in failed[0], done.stdout
    assert (
        "SKIPPED finetune-simclr" in done.stdout and "stopped at the storage fault" in done.stdout
    )
    return failed[0].split()[1].rstrip(":")


@pytest.mark.slow
@needs_root
def test_disk_full_fails_one_job_cleanly_and_the_rerun_gives_the_same_table(tmp_path, reference):
    env, table = reference
    with mounted_tmpfs(tmp_path / "fs", "100m") as fs:  # the checkpoint needs more
        done = bench(*run_args(fs / "results"), env=env)
        job_id = assert_one_clear_failure(done, "no space left on device (ENOSPC)")
        assert job_id.startswith("pretrain-simclr") and "checkpoint.pt" in done.stdout
        assert temporaries(fs) == []
        status = bench("status", "--results", str(fs / "results"), env=env)
        line = next(x for x in status.stdout.splitlines() if job_id in x)
        assert line.startswith("failed") and "no space left on device" in line
        remount(fs, "600m")
        again = bench(*run_args(fs / "results"), env=env)
        assert again.returncode == 0, again.stderr
        assert bench("table", "--results", str(fs / "results"), env=env).stdout == table
        assert temporaries(fs) == []


def remount_read_only_when(marker_glob: str, folder: Path, stop: threading.Event) -> None:
    """Once a file matching ``marker_glob`` exists under ``folder``, remount it read-only
    (retried while a file is open for writing there)."""
    while not stop.is_set():
        if (
            list(folder.glob(marker_glob))
            and _mount(["-o", "remount,ro", str(folder)]).returncode == 0
        ):
            return
        time.sleep(0.02)


@pytest.mark.slow
@needs_root
def test_read_only_remount_fails_one_job_and_the_rerun_gives_the_same_table(tmp_path, reference):
    env, table = reference
    with mounted_tmpfs(tmp_path / "fs", "600m") as fs:
        stop = threading.Event()
        watcher = threading.Thread(
            target=remount_read_only_when, args=(f"results/pretrain-*/{ATTEMPT}", fs, stop)
        )
        watcher.start()
        try:
            done = bench(*run_args(fs / "results"), env=env)
        finally:
            stop.set()
            watcher.join()
        job_id = assert_one_clear_failure(done, "read-only file system (EROFS)")
        status = bench("status", "--results", str(fs / "results"), env=env)
        line = next(x for x in status.stdout.splitlines() if job_id in x)
        assert line.startswith("failed") and "ended without a result record" in line
        remount(fs, "rw")
        again = bench(*run_args(fs / "results"), env=env)
        assert again.returncode == 0, again.stderr
        assert bench("table", "--results", str(fs / "results"), env=env).stdout == table
        assert temporaries(fs) == []


def planned_job(tmp_path):
    spec = SweepSpec(methods=("random",), fractions=(0.1,), overrides=TINY)
    return plan(spec)[0]


@needs_root
def test_a_record_that_cannot_be_written_leaves_its_cause_for_status(tmp_path):
    job = planned_job(tmp_path)
    with mounted_tmpfs(tmp_path / "fs", "1m") as fs:
        store = RunStore(fs / "results")
        store.prepare_run(job, job_spec(job))
        store.begin_attempt(job.job_id)
        fill(fs)
        record = {"status": "ok", "kind": job.kind, "job_id": job.job_id, "miou": 0.5}
        kept = keep_record(store, job, record)
        assert kept["status"] == "failed"
        assert kept["storage_fault"].startswith("no space left on device (ENOSPC) writing ")
        assert "result.json" in kept["storage_fault"]
        assert store.read(job.job_id) is None  # nothing reads as done
        assert temporaries(fs) == []
        status = record_status(store, job.job_id)
        assert status.state is JobState.FAILED
        assert "no space left on device" in status.detail and "no result record" in status.detail
        collected = collect_records([job], store)[job.job_id]
        assert collected["status"] == "failed" and collected["storage_fault"]


def test_attempt_of_a_live_process_is_running_and_of_a_dead_one_failed(tmp_path):
    job = planned_job(tmp_path)
    store = RunStore(tmp_path / "results")
    store.prepare_run(job, job_spec(job))
    assert record_status(store, job.job_id).state is JobState.PLANNED
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.begin_attempt(job.job_id)
        path = store.run_dir(job.job_id) / ATTEMPT
        text = path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {sleeper.pid}')
        path.write_text(text)
        assert record_status(store, job.job_id).state is JobState.RUNNING
    finally:
        sleeper.kill()
        sleeper.wait()
    status = record_status(store, job.job_id)
    assert status.state is JobState.FAILED and f"process {sleeper.pid}" in status.detail
    path.write_text(text.replace('"host": "', '"host": "elsewhere-'))
    status = record_status(store, job.job_id)
    assert status.state is JobState.RUNNING and "not checked from here" in status.detail
    store.end_attempt(job.job_id)
    assert record_status(store, job.job_id).state is JobState.PLANNED


def test_stale_temporaries_are_swept_and_a_live_writers_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    stale = folder / f".checkpoint.pt.{dead.pid}.tmp"
    live = folder / f".result.json.{os.getpid()}.tmp"
    tile = folder / f".2_10.{dead.pid}.tmp.npz"
    for path in (stale, live, tile):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(folder)) == sorted([stale, tile])
    assert live.exists() and not stale.exists() and not tile.exists()


@needs_root
def test_a_failed_atomic_write_removes_its_temporary_file_and_names_the_path(tmp_path):
    with mounted_tmpfs(tmp_path / "fs", "1m") as fs:
        target = fs / "big.bin"
        with pytest.raises(OSError) as raised:
            atomic_write_bytes(target, b"\0" * (2 << 20))
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
        assert storage_fault(raised.value) is raised.value
        assert list(fs.iterdir()) == []  # no partial temporary, no target
        remount(fs, "ro")
        with pytest.raises(OSError) as raised:
            atomic_write_bytes(target, b"x")
        assert raised.value.errno == errno.EROFS and storage_fault(raised.value)
