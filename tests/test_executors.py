"""Executors other than inline, and cluster profiles, without a SLURM cluster."""

import shutil
from pathlib import Path

import pytest

from bench import SweepSpec, run_sweep
from bench.cli import main
from bench.config import ConfigError
from bench.execution.cluster import executor_parameters, load_profile, parse_cluster_overrides
from bench.execution.submitit_adapter import sbatch_script
from bench.report import comparison_table

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "example-profile.sbatch"


def test_profile_maps_onto_submitit_parameters_and_overrides_win():
    profile = load_profile(
        ROOT / "slurm" / "example.yaml", parse_cluster_overrides(["partition=debug", "mem_gb=8"])
    )
    params = executor_parameters(profile)
    assert params["slurm_partition"] == "debug"  # the command line wins over the file
    assert params["mem_gb"] == 8.0 and params["timeout_min"] == 240
    assert params["slurm_account"] == "my-project" and params["gpus_per_node"] == 1
    assert params["slurm_setup"][0] == "module load cuda/12.1"
    assert params["slurm_additional_parameters"] == {"kill-on-invalid-dep": "yes"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partiton: gpu\n", "unknown cluster setting(s) partiton"),
        ("mem_gb: lots\n", "'mem_gb' must be float"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_profiles_fail_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_profile(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_cluster_overrides(["partition"])


@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SLURM executor needs srun")
def test_example_profile_renders_the_golden_sbatch_script():
    """What submitit would submit for an array of 4 jobs with slurm/example.yaml (written by
    submitit itself, nothing is submitted). Update the golden file only on purpose."""
    profile = load_profile(ROOT / "slurm" / "example.yaml", {"python": "python"})
    script = sbatch_script(profile, "/results/.submitit/%j", array_size=4)
    assert script == GOLDEN.read_text()


def test_debug_executor_gives_the_inline_table(dirs, tiny_overrides):
    """submitit's DebugExecutor runs the pickled JobSubmission in this process: same records."""
    results, data = dirs
    spec = SweepSpec(methods=("simclr", "random"), fractions=(0.5,), overrides=tiny_overrides)
    inline = run_sweep(spec, results / "inline", data)
    debug = run_sweep(spec, results / "debug", data, executor="debug")
    assert debug.ok and len(debug.records) == 3
    assert comparison_table(debug.finetune_records()) == comparison_table(inline.finetune_records())
    assert (results / "debug" / ".submitit").is_dir()  # it went through submitit


def test_unknown_executor_is_a_clean_error(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--executor", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_local_executor_runs_jobs_as_processes_with_the_inline_table(dirs, tiny_overrides):
    results, data = dirs
    spec = SweepSpec(methods=("simclr", "random"), fractions=(0.5,), overrides=tiny_overrides)
    inline = run_sweep(spec, results / "inline", data)
    local = run_sweep(spec, results / "local", data, executor="local")
    assert local.ok
    assert comparison_table(local.finetune_records()) == comparison_table(inline.finetune_records())
