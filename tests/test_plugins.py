"""Plugins: methods and datasets from outside the repository (bench.plugins), by module or by
entry point, and how their jobs reach worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, TINY

from bench import SweepSpec, plan
from bench.cli import main
from bench.config import ConfigError
from bench.jobs import execute
from bench.methods import METHODS
from bench.plugins import PluginError, load_plugins

EXAMPLE = EXAMPLES / "plugins" / "bench-example-plugin"

# A method in a module of its own whose Params live in the harness: unpickling its jobs does
# not import the module, so only the job's ``plugins`` can register it in a worker.
PLUGGED = """
from bench.methods import register_method
from bench.methods.simclr import SimCLR

@register_method("plugged")
class Plugged(SimCLR):
    summary = "SimCLR under another name, from a plugin module"
"""


def write_module(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch, registries):
    """A folder on the path for plugin modules; what they register is forgotten after."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_plugin_module_registers_its_method_and_its_jobs_name_it(plugin_dir):
    write_module(plugin_dir, "plugged_method", PLUGGED)
    jobs = plan(SweepSpec(methods=("plugged", "simclr"), plugins=("plugged_method",)))
    assert METHODS.plugin("plugged") == "plugged_method" and METHODS.plugin("simclr") is None
    plugins = {job.method: job.plugins for job in jobs}
    assert plugins == {"plugged": ("plugged_method",), "simclr": ()}
    # not part of the id: the same job without it has the same id
    job = jobs[0]
    assert type(job)(**{**job.__dict__, "plugins": ()}).job_id == job.job_id


def test_execute_imports_the_job_plugins_first_as_a_worker_must(plugin_dir, tmp_path):
    write_module(plugin_dir, "plugged_method", PLUGGED)
    overrides = (*TINY, "pretrain.epochs=1")
    spec = SweepSpec(methods=("plugged",), fractions=(1.0,), overrides=overrides)
    job = plan(SweepSpec(**{**spec.__dict__, "plugins": ("plugged_method",)}))[0]
    METHODS.unregister("plugged")  # a fresh worker process: nothing imported yet
    del sys.modules["plugged_method"]
    record = execute(job, tmp_path / "results", tmp_path / "data")
    assert record["status"] == "ok", record.get("error")
    assert "plugged" in METHODS


def test_a_plugin_that_takes_a_registered_name_is_refused_naming_both(plugin_dir):
    write_module(plugin_dir, "clash", PLUGGED.replace('"plugged"', '"simclr"'))
    with pytest.raises(ConfigError) as raised:
        load_plugins(["clash"])
    message = str(raised.value)
    assert "plugin 'clash' (--plugin) registers method 'simclr'" in message
    assert "bench.methods.simclr already registered" in message and "\n" not in message
    assert METHODS.get("simclr").__module__ == "bench.methods.simclr"


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(plugin_dir, capsys, tmp_path):
    write_module(plugin_dir, "broken_plugin", "import no_such_dependency_xyz\n")
    with pytest.raises(PluginError, match="plugin 'broken_plugin' .* failed to import: "):
        load_plugins(["broken_plugin"])
    results = tmp_path / "results"
    assert main(["plan", "--plugin", "broken_plugin", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: plugin 'broken_plugin' (--plugin) failed to import: ModuleNotFoundError: "
        "No module named 'no_such_dependency_xyz'"
    )
    assert not results.exists()


NOT_A_METHOD = """
from bench.methods import register_method

@register_method("notamethod")
class NotAMethod:
    summary = "a class that does not derive from Method"
"""


@pytest.mark.parametrize("command", [["list"], ["check-method", "notamethod"], ["plan"]])
def test_a_plugin_registering_a_class_that_is_not_a_method_is_one_line(plugin_dir, capsys, command):
    write_module(plugin_dir, "wrong_base", NOT_A_METHOD)
    assert main(["--plugin", "wrong_base", *command]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in out + err
    assert "plugin 'wrong_base' (--plugin) registers <class 'wrong_base.NotAMethod'>" in err
    assert "not a subclass of bench.methods.base.Method" in err


@pytest.mark.parametrize("given", ["./mine.py", "mine.py", "plugins/mine.py"])
def test_a_plugin_named_by_its_file_path_says_to_name_the_module(capsys, given):
    assert main(["--plugin", given, "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "a plugin is named by its module, not by a file path" in err
    assert "--plugin mine " in err and "PYTHONPATH=" in err


def test_plugin_option_before_or_after_the_command_and_comma_lists(plugin_dir, capsys):
    write_module(plugin_dir, "plugged_method", PLUGGED)
    write_module(plugin_dir, "other_plugin", PLUGGED.replace("plugged", "plugged_too"))
    assert main(["list", "--plugin", "plugged_method,other_plugin"]) == 0
    out = capsys.readouterr().out
    assert "plugged " in out and "[plugin: plugged_method]" in out and "plugged_too" in out
    assert main(["--plugin", "plugged_method", "plan", "--methods", "plugged"]) == 0
    assert "pretrain-plugged-synthetic-s0-" in capsys.readouterr().out


def _run(args: list[str], path: list[Path], **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*path, REPO])), **env}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environment, timeout=600
    )


def _fake_distribution(folder: Path, module: str, text: str) -> None:
    """An installed distribution in ``folder`` (its metadata as pip writes it) whose entry
    point in bench.methods names ``module``."""
    info = folder / "fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench.methods]\nfake = {module}\n")
    write_module(folder, module, text)


def test_entry_points_and_bench_plugins_load_at_the_first_registry_use(tmp_path, plugin_dir):
    """Not at ``import bench``: then the entry points, then ``$BENCH_PLUGINS``."""
    site = tmp_path / "site"
    _fake_distribution(site, "fake_plugin_mod", PLUGGED.replace('"plugged"', '"fake"'))
    write_module(plugin_dir, "plugged_method", PLUGGED)
    script = (
        "import sys, bench; loaded = 'fake_plugin_mod' in sys.modules; "
        "from bench.methods import METHODS; print(loaded, METHODS.names()[-2:], "
        "METHODS.plugin('fake'), METHODS.plugin('plugged'))"
    )
    done = _run(["-c", script], [site, plugin_dir], BENCH_PLUGINS="plugged_method")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [
        "False",
        "['fake',",
        "'plugged']",
        "fake_plugin_mod",
        "plugged_method",
    ]


def test_a_broken_entry_point_fails_every_command_naming_it(tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "fake_plugin_mod", "raise RuntimeError('half-installed')\n")
    done = _run(["-m", "bench", "list"], [site])
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: plugin 'fake_plugin_mod' (entry point 'fake' in bench.methods of fake-plugin) "
        "failed to import: RuntimeError: half-installed"
    )


# ---------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """The example plugin installed with pip, from a copy of its folder (the build writes
    next to the sources), into a folder of its own: a real distribution with entry points."""
    root = tmp_path_factory.mktemp("example")
    source = root / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--no-build-isolation", "--no-index", "--target", str(target), str(source)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "bench_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def test_installed_example_plugs_in_its_method_and_dataset(installed_example, tmp_path):
    """In a new process (entry points are read once per process): plan and check-dataset."""
    plan_args = ["plan", "--methods", "dcl,random", "--datasets", "toy_fields"]
    plan_args += ["--results", str(tmp_path / "results"), "--show-settings"]
    script = (
        "import sys; from bench.cli import main; "
        f"print('exit', main({plan_args!r}), main(['check-dataset', 'toy_fields']))"
    )
    done = _run(["-c", script], [installed_example])
    assert done.returncode == 0 and "exit 0 0" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "pretrain-dcl-toy_fields-s0-" in done.stdout and "[dcl]" in done.stdout
    assert "vmf_sigma" in done.stdout and "[toy_fields]" in done.stdout
    assert "8 of 8 contracts pass" in done.stdout


@pytest.mark.slow
def test_installed_example_runs_plan_run_table_and_check_method(installed_example, tmp_path):
    results, data = tmp_path / "results", tmp_path / "data"
    sweep = ["--methods", "dcl,simclr,random", "--datasets", "toy_fields", "--fractions", "0.5"]
    sweep += ["--results", str(results), "--data-root", str(data)]
    tiny = [s.replace("synthetic.", "toy_fields.") for s in TINY]
    for item in tiny:
        sweep += ["--set", item]
    done = _run(["-m", "bench", "plan", *sweep], [installed_example])
    assert done.returncode == 0 and "5 jobs: 5 planned" in done.stdout, done.stderr[-2000:]
    done = _run(["-m", "bench", "-q", "run", *sweep], [installed_example])
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    done = _run(["-m", "bench", "table", "--results", str(results)], [installed_example])
    assert done.returncode == 0 and "| dcl" in done.stdout and "| simclr" in done.stdout
    done = _run(["-m", "bench", "check-method", "dcl"], [installed_example])
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "8 of 8 contracts pass" in done.stdout


@pytest.mark.slow
def test_local_executor_workers_load_a_plugin_named_on_the_command_line(plugin_dir, dirs):
    """submitit's LocalExecutor runs each job in a new process that unpickles it: the method
    (a module on the path, no entry point) is registered there only through job.plugins."""
    write_module(plugin_dir, "plugged_method", PLUGGED)
    results, data = dirs
    args = ["-m", "bench", "-q", "run", "--executor", "local", "--methods", "plugged"]
    args += ["--plugin", "plugged_method", "--fractions", "0.5", "--results", str(results)]
    for item in TINY:
        args += ["--set", item]
    done = _run(args, [plugin_dir], BENCH_DATA_ROOT=str(data))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "| plugged" in done.stdout


def test_example_loss_matches_the_formula(registries, monkeypatch):
    """DCL against NumPy, written from Yeh et al.'s definition; with sigma 0 it is the
    harness's NT-Xent without the positive in the denominator (GLCNet's variant)."""
    import numpy as np
    import torch

    from bench.losses import nt_xent

    monkeypatch.syspath_prepend(str(EXAMPLE))
    from bench_example_plugin.dcl import decoupled_contrastive_loss

    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tau, sigma = 0.3, 0.5
    plain = decoupled_contrastive_loss(z, tau)
    assert torch.allclose(plain, nt_xent(z, tau, positive_in_denominator=False))

    u = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    cos, n = u @ u.T, len(u)
    partner = (np.arange(n) + n // 2) % n
    positive = cos[np.arange(n), partner]
    weight = 2 - np.exp(positive / sigma) / np.exp(positive / sigma).mean()
    terms = [
        -weight[i] * positive[i] / tau
        + np.log(sum(np.exp(cos[i, k] / tau) for k in range(n) if k not in (i, partner[i])))
        for i in range(n)
    ]
    assert float(decoupled_contrastive_loss(z, tau, sigma)) == pytest.approx(np.mean(terms))
