"""The one-page HTML report of a tiny real sweep (two methods, two seeds, a failed
pretraining): what it holds, that it is built from the table and status functions, that it
needs nothing outside itself, bad input, and a real headless browser opening it."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import TINY, file_tree

import bench.methods.byol
from bench import SweepSpec, run_sweep
from bench.cli import main
from bench.execution.status import job_statuses
from bench.report import build_table, per_class_table, write_report
from bench.report.formats import DETAILS, to_html
from bench.report.html import reported_metrics
from bench.states import JobState
from bench.store import RECORD, RunStore, failed_record

FAILURE = "CUDA out of memory (simulated)"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class Page(HTMLParser):
    """The tags, ids, links and images of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """simclr and random over seeds 0 and 1, then a BYOL sweep whose pretraining fails at
    its first step, into one results folder."""
    root = tmp_path_factory.mktemp("report")
    results = root / "results"
    spec = SweepSpec(methods=("simclr", "random"), fractions=(0.5,), seeds=(0, 1), overrides=TINY)
    assert run_sweep(spec, results, root / "data").ok

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(FAILURE)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.methods.byol.BYOL, "training_step", out_of_memory)
        failing = SweepSpec(methods=("byol",), fractions=(0.5,), overrides=TINY)
        assert not run_sweep(failing, results, root / "data").ok
    return results


def test_report_holds_tables_plots_losses_jobs_and_settings(results, tmp_path):
    output, unreadable = write_report(results, tmp_path / "report.html")
    text = output.read_text()
    page = Page(text)
    store = RunStore(results)
    records = store.records()
    metrics = reported_metrics(records)
    assert metrics == ("miou", "kappa", "oa", "mean_f1", "image_miou") and not unreadable
    table = build_table(records, metrics)
    for metric in metrics:  # the table functions' own rendering, every metric
        part = table.select(c for c in table.columns if c.metric == metric)
        assert to_html(part, parts=(DETAILS,)) in text
    assert to_html(per_class_table(records, "synthetic", 0.5), parts=(DETAILS,)) in text
    assert "MDD, synthetic 50% mIoU: simclr" in text  # two shared seeds: an MDD per column
    # what cells, marks and the test mean: once per section of tables, not once per table
    assert text.count("Rows: methods, baselines first") == 3
    assert text.count("Bold</b>: best mean in its column") == 3
    # one figure per metric, the loss curves and the health curves, each an SVG image
    assert len(page.images) == len(metrics) + 2
    for src in page.images:
        svg = base64.b64decode(src.removeprefix("data:image/svg+xml;base64,"))
        assert svg.startswith(b"<svg xmlns=") and svg.endswith(b"</svg>")
    statuses = job_statuses(store, store.run_ids())
    failed = [job_id for job_id, s in statuses.items() if s.state is JobState.FAILED]
    assert len(failed) == 1 and failed[0].startswith("pretrain-byol")
    error = store.read_record(failed[0])["error"]
    assert FAILURE in error and html.escape(error) in text
    for job_id in store.run_ids():
        assert text.count(job_id) >= 2  # its status row and its settings
        assert html.escape((store.run_dir(job_id) / "spec.json").read_text()) in text
    assert html.escape(records[0]["torch_version"]) in text and records[0]["host"] in text
    # nothing outside the page: links are anchors to its own sections, no scripts
    assert page.links and all(link.startswith("#") or link == "data:," for link in page.links)
    assert {link[1:] for link in page.links if link.startswith("#")} <= page.ids
    assert "<script" not in text and not re.search(r"(src|href)=\"(https?:|//)", text)


SECTIONS = [
    "results", "metrics", "per-class", "losses", "health", "environment", "settings", "jobs"
]  # fmt: skip


def test_report_leads_with_the_answer(results, tmp_path):
    """Headline, then the main figure and table; the job list last and folded."""
    text = write_report(results, tmp_path / "report.html")[0].read_text()
    assert [m for m in re.findall(r'<section id="([a-z-]+)">', text)] == SECTIONS
    headline = re.search(r'<p class="headline">(.*?)</p>', text).group(1)
    # byol's pretraining failed, so it has no fine-tuning record and no column
    for fact in ("1 dataset (synthetic)", "2 methods (random, simclr)", "2 seeds (0, 1)"):
        assert fact in headline
    assert "preset quick" in headline and "protocol harness" in headline
    assert "7 jobs: 6 done, 1 failed" in headline and "label fractions 50%" in headline
    assert text.index("<h1>") < text.index('class="headline"') < text.index("<section")
    results_section = text[
        text.index('<section id="results">') : text.index('<section id="metrics">')
    ]
    assert results_section.index("<img") < results_section.index("<table>")  # figure, table
    assert "<h3>mIoU</h3>" in results_section and "<h3>Kappa</h3>" not in results_section
    jobs = text[text.index('<section id="jobs">') :]
    assert jobs.index("<details><summary>7 jobs:") < jobs.index("<table>")  # folded


def test_report_text_is_escaped(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    job_id = next(p.parent.name for p in copy.glob(f"pretrain-byol-*/{RECORD}"))
    record = json.loads((copy / job_id / RECORD).read_text())
    record["error"] = "<script>alert('x')</script> & more"
    (copy / job_id / RECORD).write_text(json.dumps(record))
    text = write_report(copy)[0].read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert "<script" not in text


def test_cli_report_and_bad_input(results, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    assert main(["report", "--results", str(copy)]) == 0
    assert (copy / "report.html").stat().st_size > 10_000
    assert re.search(r"wrote .*report\.html \(\d+ KiB\)", capsys.readouterr().out)
    bad = [
        (["--results", str(tmp_path / "missing")], "does not exist"),
        (["--results", str(copy), "--output", str(tmp_path / "no" / "r.html")], "cannot write"),
        (["--results", str(copy), "--output", str(tmp_path)], "is a folder"),
    ]
    (tmp_path / "empty").mkdir()
    bad.append((["--results", str(tmp_path / "empty")], "has no runs"))
    for args, message in bad:
        before = file_tree(tmp_path)
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert file_tree(tmp_path) == before  # nothing written
    # an unreadable record is named, left out, and the exit code says so
    job = next(copy.glob("finetune-random-*"))
    (job / RECORD).write_text("{not json")
    assert main(["report", "--results", str(copy)]) == 3
    assert "left out" in capsys.readouterr().err
    assert "not a valid record" in (copy / "report.html").read_text()


def test_failed_records_written_by_hand_show_with_their_error(tmp_path):
    """A results folder of records only (no spec.json, no logs): the report still says what
    failed and why."""
    from types import SimpleNamespace

    store = RunStore(tmp_path / "results")
    store.open_for_writing()
    job = SimpleNamespace(
        kind="finetune", job_id="finetune-x-synthetic-f0.1-s0-0", method="x", dataset="synthetic"
    )
    job.seed, job.fraction = 0, 0.1
    store.write_record(job.job_id, failed_record(job, MemoryError("out of memory"), "Trace"))
    text = write_report(store.root)[0].read_text()
    assert "MemoryError: out of memory" in text and "no finished fine-tuning runs yet" in text


# ----------------------------------------------------------------------------------------
# A real browser
# ----------------------------------------------------------------------------------------
def browser():
    """Headless Debian Chromium through selenium, logging the console; skip without it."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"no browser: {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
            "chromium-driver) are needed"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    flags += "--disable-background-networking --disable-component-update --disable-sync"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def test_a_real_browser_shows_the_tables_and_images_without_errors(results, tmp_path):
    output, _ = write_report(results, tmp_path / "report.html")
    page = Page(output.read_text())
    driver = browser()
    try:
        driver.get(output.resolve().as_uri())
        assert driver.title == f"rs-sscl-bench report: {results}"
        tables = driver.find_elements("tag name", "table")
        assert len(tables) == page.tags["table"] >= 8  # 5 metrics, per-class, env, jobs
        folded = driver.find_elements("css selector", "#jobs details table")
        assert len(folded) == 1 and not folded[0].is_displayed()  # the job list, folded
        assert sum(table.is_displayed() for table in tables) == len(tables) - 1
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
        )
        assert len(images) == 7 and all(done and width > 100 for done, width in images)
        # what a reader sees first: the headline, then the main figure, then its table
        top = "return document.querySelector(arguments[0]).getBoundingClientRect().top"
        tops = [driver.execute_script(top, f"#{key}") for key in SECTIONS]
        assert tops == sorted(tops)
        order = [".headline", "#results img", "#results table", "#jobs"]
        positions = [driver.execute_script(top, selector) for selector in order]
        assert positions == sorted(positions) and positions[1] < 900  # on the first screen
        targets = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href^=\"#\"]'))"
            ".map(a => document.getElementById(a.getAttribute('href').slice(1)) !== null)"
        )
        assert targets and all(targets)  # no broken links
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        driver.quit()
