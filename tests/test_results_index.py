"""The results folder's index: a later table or report reads what changed, and what it
shows is what reading every file shows."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import time
from pathlib import Path

import pytest

from bench.report.html import build_report
from bench.report.index import INDEX, INDEX_VERSION, RACY_SECONDS, ResultsIndex
from bench.report.records import scan_results
from bench.store import LOG, RECORD, SPEC, RunStore, append_log

ROOT = Path(__file__).resolve().parent.parent
RUNS = 240  # planned jobs of benchmarks/table_scale.py's study; over SPEC_TEXTS_KEPT, so the
# report does not read every spec.json for its text


def age(root: Path, seconds: float = 10 * RACY_SECONDS) -> None:
    """Date every file under ``root`` back by ``seconds`` (as files of a finished study)."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Specs, records and pretraining logs of real planned jobs (table_scale's writer)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import table_scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    root = tmp_path_factory.mktemp("study") / "results"
    table_scale.write_results(root, RUNS)
    age(root)
    return root


@pytest.fixture
def results(study, tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(study, copy)
    age(copy)
    return copy


def page(results: Path) -> str:
    text, _ = build_report(RunStore(results))
    return text


def index_data(results: Path) -> dict:
    """What the folder's index holds."""
    return marshal.loads((results / INDEX).read_bytes())


def reads(monkeypatch) -> list[str]:
    """The names of the run files opened from now on (result, spec and log)."""
    opened: list[str] = []
    real_open = open

    def counting(path, *args, **kwargs):
        if os.path.basename(str(path)) in (RECORD, SPEC, LOG):
            opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting)
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: counting(p).read())
    return opened


def test_a_report_from_the_index_is_the_report_from_the_files(results, monkeypatch):
    first = page(results)  # reads every file, writes the index
    index = index_data(results)
    assert len(index["runs"]) == RUNS and index["extra"]["settings"]
    opened = reads(monkeypatch)
    assert page(results) == first
    assert opened == []  # nothing changed: no run file was read again
    (results / INDEX).unlink()
    monkeypatch.undo()
    assert page(results) == first  # and the same as reading them all again


def test_a_changed_or_new_file_is_read_again_and_the_rest_comes_from_the_index(
    results, monkeypatch
):
    page(results)
    runs = sorted(p.name for p in results.iterdir() if p.is_dir())
    changed = next(r for r in runs if r.startswith("finetune-simclr"))
    record = json.loads((results / changed / RECORD).read_text())
    record["miou"] = 0.99
    (results / changed / RECORD).write_text(json.dumps(record))
    pretraining = next(r for r in runs if r.startswith("pretrain-"))
    append_log(results / pretraining, {"kind": "epoch", "epoch": 11, "loss": 0.25})
    gone = [r for r in runs if r.startswith("finetune-byol")][-1]  # not a settings reference
    shutil.rmtree(results / gone)
    opened = reads(monkeypatch)
    scan = scan_results(RunStore(results), specs=True)
    assert sorted(opened) == sorted(
        [str(results / changed / RECORD), str(results / pretraining / LOG)]
    )
    assert scan.records[changed]["miou"] == 0.99 and gone not in scan.records
    assert scan.logs[pretraining][-1] == {"kind": "epoch", "epoch": 11, "loss": 0.25}
    monkeypatch.undo()
    with_index = page(results)
    (results / INDEX).unlink()
    assert with_index == page(results)


def test_files_written_just_now_are_not_kept(results, monkeypatch):
    page(results)
    run = next(p for p in sorted(results.iterdir()) if p.name.startswith("finetune-moco"))
    record = json.loads((run / RECORD).read_text())
    (run / RECORD).write_text(json.dumps(record | {"miou": 0.5}))  # now: racy
    scan_results(RunStore(results))
    kept = ResultsIndex.load(str(results)).old
    assert RECORD not in kept[run.name]  # a rewrite within the clock tick could hide
    opened = reads(monkeypatch)
    scan_results(RunStore(results))
    assert opened == [str(run / RECORD)]


def test_when_the_settings_reference_run_changes_its_group_is_summarised_again(results):
    first = page(results)
    index = index_data(results)
    kind, method, (reference, _), _ = index["extra"]["settings"][0]
    spec_path = results / reference / SPEC
    spec = json.loads(spec_path.read_text())
    spec["note"] = "changed by hand"  # the reference run now differs from the others
    spec_path.write_text(json.dumps(spec))
    age(results)
    changed = page(results)
    assert changed != first and "<code>note</code>: None, changed by hand" in changed
    (results / INDEX).unlink()
    assert page(results) == changed


def test_a_bad_or_foreign_index_is_ignored_and_replaced(results):
    first = page(results)
    foreign = marshal.dumps({"version": -1, "runs": {}, "extra": {}})
    for content in (b"{not marshal", foreign, foreign[:-3], marshal.dumps([]), b""):
        (results / INDEX).write_bytes(content)
        assert page(results) == first
        assert index_data(results)["version"] == INDEX_VERSION


def test_the_json_index_of_version_1_is_removed_when_the_index_is_written(results):
    former = results / ".bench-index.json"
    former.write_text(json.dumps({"version": 1, "runs": {}, "extra": {}}))
    scan_results(RunStore(results))
    assert (results / INDEX).exists() and not former.exists()


def test_an_unchanged_folder_does_not_rewrite_its_index_and_a_changed_one_does(results):
    scan_results(RunStore(results), specs=True)
    written = (results / INDEX).stat().st_mtime_ns, (results / INDEX).stat().st_ino
    scan_results(RunStore(results), specs=True)
    assert ((results / INDEX).stat().st_mtime_ns, (results / INDEX).stat().st_ino) == written
    gone = next(p for p in sorted(results.iterdir()) if p.name.startswith("finetune-byol"))
    shutil.rmtree(gone)  # a run folder removed: its entries go
    scan_results(RunStore(results), specs=True)
    assert gone.name not in index_data(results)["runs"]
    assert len(index_data(results)["runs"]) == RUNS - 1


def test_a_folder_where_the_index_cannot_be_written_is_read_without_one(results, monkeypatch):
    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("bench.report.index.atomic_write_bytes", full_disk)
    first = page(results)
    assert not (results / INDEX).exists()
    monkeypatch.undo()
    assert page(results) == first


def test_a_record_the_rules_no_longer_accept_is_not_taken_from_the_index(results, monkeypatch):
    scan_results(RunStore(results))
    assert (results / INDEX).exists()
    monkeypatch.setitem(
        __import__("bench.store", fromlist=["RECORD_FIELDS"]).RECORD_FIELDS, "new_field", (str,)
    )
    scan = scan_results(RunStore(results))
    assert not scan.valid and len(scan.unreadable) == RUNS
    assert all("new_field" in bad.reason for bad in scan.unreadable)


def test_records_from_the_index_lack_only_what_re_scoring_reads_and_re_scoring_reads_files(
    results,
):
    from bench.conventions import RESCORING_INPUTS
    from bench.report import results_table

    before, _ = results_table(results, conventions=("all",))
    full = scan_results(RunStore(results), rescoring=True).records
    kept = scan_results(RunStore(results)).records  # writes the index
    assert (results / INDEX).exists()
    for job_id, record in full.items():
        if isinstance(record, dict):
            assert kept[job_id] == {k: v for k, v in record.items() if k not in RESCORING_INPUTS}
    assert any("confusion" in r for r in full.values() if isinstance(r, dict))
    after, _ = results_table(results, conventions=("all",))  # the index is there: files read
    assert after == before and after.conventions


def test_an_index_left_half_written_by_a_killed_reading_is_removed(results):
    dead = 2**22 + 12345  # above Linux's default pid_max: no live process
    stale = results / f".{INDEX}.{dead}.tmp"
    stale.write_bytes(b"{" * 1000)
    scan_results(RunStore(results))  # writes the index
    assert (results / INDEX).exists() and not stale.exists()
