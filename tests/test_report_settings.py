"""The report's settings summary: per (kind, method) what runs share and what varies."""

from __future__ import annotations

import html
import json

from bench.report.settings import SHOWN_VALUES, SettingsSummary


def spec(seed: int, fraction: float, lr: float = 0.01, method: str = "simclr") -> dict:
    return {
        "kind": "finetune", "method": method, "seed": seed, "fraction": fraction,
        "job_id": f"finetune-{method}-s{seed}-f{fraction}",
        "finetune": {"lr": lr, "steps": 100, "betas": [0.9, 0.999]},
        "pretrain_job": {"seed": seed, "pretrain": {"epochs": 3}},
    }  # fmt: skip


def test_varying_keys_are_found_one_level_down_and_shared_ones_shown_once():
    summary = SettingsSummary()
    for seed in (0, 1, 2):
        for fraction in (0.01, 0.1):
            summary.add(spec(seed, fraction))
    summary.add(spec(0, 0.01, method="byol"))
    simclr = summary.groups[("finetune", "simclr")]
    assert simclr.runs == 6 and summary.groups[("finetune", "byol")].runs == 1
    assert set(simclr.varying) == {"seed", "fraction", "job_id", "pretrain_job.seed"}
    assert simclr.varying["seed"] == {0, 1, 2} and simclr.varying["fraction"] == {0.01, 0.1}
    page = summary.html()
    assert "finetune simclr: 6 runs" in page and "finetune byol: 1 run</h3>" in page
    assert "<code>seed</code>: 0, 1, 2</li>" in page
    shared = json.loads(html.unescape(page.split("<pre>")[1].split("</pre>")[0]))
    # what every run shares: the settings that did not vary, without the varying ones
    assert shared["finetune"] == {"lr": 0.01, "steps": 100, "betas": [0.9, 0.999]}
    assert shared["pretrain_job"] == {"pretrain": {"epochs": 3}} and "seed" not in shared


def test_a_setting_that_differs_in_one_run_is_listed_and_many_values_are_counted():
    summary = SettingsSummary()
    for seed in range(SHOWN_VALUES + 3):
        summary.add(spec(seed, 0.1, lr=0.02 if seed == 4 else 0.01))
    group = summary.groups[("finetune", "simclr")]
    assert group.varying["finetune.lr"] == {0.01, 0.02}
    page = summary.html()
    assert "<code>finetune.lr</code>: 0.01, 0.02</li>" in page
    assert f"... ({SHOWN_VALUES + 3} values)" in page  # the seeds: the first ones and a count
