"""Job ids are the names of finished results: a change that renames them orphans every
results folder. These are the ids the harness planned before plugins existed (#21); update
tests/golden/job_ids.json only when a change means to give some job a new identity."""

import json
from pathlib import Path

import pytest

from bench import SweepSpec, plan

GOLDEN = json.loads((Path(__file__).parent / "golden" / "job_ids.json").read_text())
METHODS = ("random", "simclr", "moco", "byol", "false", "grass", "glcnet", "multitask")


@pytest.mark.parametrize("preset", ["quick", "cpu", "paper", "common"])
def test_every_preset_plans_the_same_job_ids(preset):
    assert [job.job_id for job in plan(SweepSpec(methods=METHODS, preset=preset))] == GOLDEN[preset]


def test_the_default_sweep_plans_the_same_job_ids():
    # imagenet joins the default sweep only where its weights file is; leave it out
    jobs = [job for job in plan(SweepSpec()) if job.method != "imagenet"]
    assert [job.job_id for job in jobs] == GOLDEN["default"]
