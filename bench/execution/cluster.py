"""Cluster profiles (YAML in ``slurm/``) and what the harness asks of SLURM.

A profile names the resources of every job of a sweep; :func:`load_profile` checks it and
:func:`executor_parameters` maps it onto submitit's ``AutoExecutor.update_parameters``
(generic names where submitit has them, ``slurm_``-prefixed ones otherwise). Command-line
overrides (``--slurm key=value``) win over the file. Everything that calls submitit itself
is in :mod:`bench.submitit_adapter`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.config import ConfigError

# profile key -> (AutoExecutor parameter, type). Generic submitit names carry over to the
# local executor too (timeout_min, cpus_per_task, gpus_per_node, mem_gb).
PROFILE_KEYS: dict[str, tuple[str, type]] = {
    "partition": ("slurm_partition", str),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
    "exclude": ("slurm_exclude", str),
    "gpus_per_node": ("gpus_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
    "timeout_min": ("timeout_min", int),
    "array_parallelism": ("slurm_array_parallelism", int),
    "signal_delay_s": ("slurm_signal_delay_s", int),
    "setup": ("slurm_setup", list),
    "additional_parameters": ("slurm_additional_parameters", dict),
    "python": ("python", str),  # command that runs Python on the nodes (default: this one)
    # Data-parallel pretraining (bench.distributed): processes (GPUs) per node and nodes of
    # every pretraining job, unless --set pretrain.gpus / pretrain.nodes say otherwise.
    "pretrain_gpus": ("", int),
    "pretrain_nodes": ("", int),
}
HARNESS_KEYS = {"python", "pretrain_gpus", "pretrain_nodes"}  # not submitit parameters

# Every job asks SLURM to cancel it when its dependency failed, instead of leaving it
# pending forever with Reason=DependencyNeverSatisfied.
ALWAYS_SBATCH = {"kill-on-invalid-dep": "yes"}


@dataclass(frozen=True)
class Profile:
    """A checked cluster profile: where it came from and its settings."""

    source: str
    settings: dict[str, Any]


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, str):
        return [value]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"cluster setting {key!r} must be {kind.__name__}, got {value!r}")
    if kind is list and not all(isinstance(line, str) for line in value):
        raise ConfigError(f"cluster setting {key!r} must be a list of shell lines")
    return value


def check_settings(settings: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown cluster setting(s) {', '.join(unknown)} in {source}; valid settings: "
            + ", ".join(PROFILE_KEYS)
        )
    return {k: _coerce(k, v, PROFILE_KEYS[k][1]) for k, v in settings.items() if v is not None}


def parse_cluster_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` strings (``--slurm``); values are read as YAML (numbers, lists)."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return check_settings(settings, "--slurm")


def load_profile(path: Path | str | None, overrides: dict[str, Any] | None = None) -> Profile:
    """The profile at ``path`` (or an empty one), with ``overrides`` on top."""
    settings: dict[str, Any] = {}
    source = "(no profile)"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"cluster profile {path} does not exist; see slurm/") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"cluster profile {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"cluster profile {path} must be a mapping of settings")
        settings = check_settings(loaded or {}, source)
    settings.update(overrides or {})
    return Profile(source=source, settings=settings)


def executor_parameters(profile: Profile) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for ``profile`` (without ``python``)."""
    params = {
        PROFILE_KEYS[key][0]: value
        for key, value in profile.settings.items()
        if key not in HARNESS_KEYS
    }
    params["slurm_additional_parameters"] = {
        **ALWAYS_SBATCH,
        **params.get("slurm_additional_parameters", {}),
    }
    return params


def pretrain_layout(job, profile: Profile) -> tuple[int, int]:
    """(processes per node, nodes) of a job: ``pretrain.gpus`` / ``pretrain.nodes``, else the
    profile's ``pretrain_gpus`` / ``pretrain_nodes``, else one; (1, 1) for fine-tuning."""
    if job.kind != "pretrain":
        return 1, 1
    per_node = job.pretrain.gpus or profile.settings.get("pretrain_gpus") or 1
    nodes = job.pretrain.nodes or profile.settings.get("pretrain_nodes") or 1
    if per_node < 1 or nodes < 1:
        raise ConfigError("pretrain_gpus and pretrain_nodes must be >= 1")
    if job.pretrain.batch_size % (per_node * nodes):
        raise ConfigError(
            f"{job.job_id}: pretrain.batch_size={job.pretrain.batch_size} (the global batch) "
            f"does not split evenly over {per_node * nodes} processes ({per_node} per node x "
            f"{nodes} nodes); change pretrain.batch_size or pretrain.gpus / pretrain.nodes"
        )
    return per_node, nodes


def layout_parameters(profile: Profile, per_node: int, nodes: int) -> dict[str, Any]:
    """``update_parameters`` keywords for a job of ``per_node`` processes on each of
    ``nodes`` nodes: one task per process, one GPU per task where the profile asks for GPUs
    (CPU processes otherwise), and srun kills every task when one fails (the others would
    wait for it in a collective until the timeout)."""
    params: dict[str, Any] = {"nodes": nodes, "tasks_per_node": per_node}
    gpus = profile.settings.get("gpus_per_node")
    if gpus:
        params["gpus_per_node"] = per_node if per_node * nodes > 1 else gpus
    params["slurm_srun_args"] = ["--kill-on-bad-exit=1"] if per_node * nodes > 1 else []
    return params


def slurm_available() -> str | None:
    """None when ``sinfo`` answers, else why SLURM cannot be used here."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (start a cluster: slurm/local-cluster.sh start)"
    try:
        done = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if done.returncode != 0:
        return f"sinfo failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return None
