"""Sweeps: from a :class:`SweepSpec` to planned jobs, and the typed entry point ``run_sweep``.

Pretrain once, fine-tune many: a pretraining job depends on (method, data, seed,
hyperparameters) but not on the label fraction, so M methods x D datasets x F fractions x S
seeds cost M*D*S pretrainings and M*D*F*S fine-tunings; baselines need no pretraining.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cluster import Profile
from bench.config import (
    LOAD_MODES,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
    build_section,
    get_preset,
    parse_overrides,
)
from bench.datasets import DATASETS
from bench.datasets.base import check_fraction_usable
from bench.datasets.subsets import check_fraction
from bench.jobs import FinetuneJob, Job, PretrainJob
from bench.methods import METHODS
from bench.registry import UnknownNameError
from bench.store import RunStore

if TYPE_CHECKING:
    from bench.executors import SubmitReport

log = logging.getLogger(__name__)

GENERIC_SECTIONS = ("data", "pretrain", "finetune")


@dataclass(frozen=True)
class SweepSpec:
    """What to run. ``methods=None`` means every registered method that can run here;
    ``seeds=None`` means the preset's seeds; ``overrides`` are ``section.field=value``
    strings (``--set``). An explicitly empty list is an error."""

    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] = ("synthetic",)
    fractions: tuple[float, ...] = (0.01, 0.1)
    seeds: tuple[int, ...] | None = None
    preset: str = "quick"
    overrides: tuple[str, ...] = field(default_factory=tuple)


def _section(cls: type, name: str, *layers: dict[str, Any] | None) -> Any:
    try:
        return build_section(cls, name, *layers)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from None


def plan(spec: SweepSpec) -> list[Job]:
    """The sweep's jobs in an order that respects dependencies (pretraining before its
    fine-tunings). Unknown names or settings raise ConfigError listing the valid ones."""
    preset = get_preset(spec.preset)
    if spec.methods is not None and not spec.methods:
        raise ConfigError(f"no methods given; valid methods: {', '.join(METHODS.names())}")
    if not spec.datasets:
        raise ConfigError(f"no datasets given; valid datasets: {', '.join(DATASETS.names())}")
    methods = spec.methods if spec.methods is not None else tuple(METHODS.names())
    try:
        method_classes = {m: METHODS.get(m) for m in methods}
        dataset_classes = {d: DATASETS.get(d) for d in spec.datasets}
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None
    if len(set(methods)) != len(methods) or len(set(spec.datasets)) != len(spec.datasets):
        raise ConfigError("a method or dataset is named twice")
    try:
        fractions = tuple(check_fraction(f) for f in spec.fractions)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not fractions:
        raise ConfigError("no label fractions given")
    seeds = preset.seeds if spec.seeds is None else spec.seeds
    if not seeds:
        raise ConfigError("no seeds given")

    user = parse_overrides(spec.overrides)
    known = set(GENERIC_SECTIONS) | set(METHODS.names()) | set(DATASETS.names())
    for section in user:
        if section not in known:
            raise ConfigError(
                f"unknown settings section {section!r} in --set; valid sections: "
                + ", ".join([*GENERIC_SECTIONS, *METHODS.names(), *DATASETS.names()])
            )
    # Validate every override once, also for sections this sweep does not use.
    for name in user:
        if name in METHODS:
            _section(METHODS.get(name).Params, name, user[name])
        elif name in DATASETS:
            _section(DATASETS.get(name).Params, name, user[name])
    data = _section(DataConfig, "data", preset.values.get("data"), user.get("data"))
    finetune = _section(
        FinetuneConfig, "finetune", preset.values.get("finetune"), user.get("finetune")
    )
    check_load_mode(finetune.load, method_classes, explicit="load" in user.get("finetune", {}))

    jobs: list[Job] = []
    for dataset, dataset_cls in dataset_classes.items():
        dataset_params = _section(
            dataset_cls.Params, dataset, preset.values.get(dataset), user.get(dataset)
        )
        for method, method_cls in method_classes.items():
            method_params = _section(
                method_cls.Params,
                method,
                method_cls.preset_params.get(preset.name),
                user.get(method),
            )
            pretrain = _section(
                PretrainConfig,
                "pretrain",
                preset.values.get("pretrain"),
                method_cls.preset_pretrain.get(preset.name),
                user.get("pretrain"),
            )
            reason = method_cls.unavailable_reason(method_params, pretrain.backbone)
            if reason and spec.methods is not None:
                raise ConfigError(f"method {method!r} cannot run here: {reason}")
            if reason:
                log.warning("leaving %s out of the default sweep: %s", method, reason)
                continue
            for seed in seeds:
                pretrain_job = None
                if method_cls.pretrains:
                    pretrain_job = PretrainJob(
                        method=method,
                        method_params=method_params,
                        dataset=dataset,
                        dataset_params=dataset_params,
                        data=data,
                        pretrain=pretrain,
                        seed=seed,
                        preset=preset.name,
                    )
                    jobs.append(pretrain_job)
                for fraction in fractions:
                    jobs.append(
                        FinetuneJob(
                            method=method,
                            method_params=method_params,
                            pretrain_job=pretrain_job,
                            dataset=dataset,
                            dataset_params=dataset_params,
                            data=data,
                            finetune=finetune,
                            backbone=pretrain.backbone,
                            fraction=fraction,
                            seed=seed,
                            preset=preset.name,
                        )
                    )
    return jobs


def check_load_mode(load: str, method_classes: dict[str, type], explicit: bool) -> None:
    """A ``finetune.load`` the user set explicitly must be served by every method of the
    sweep; the default (``backbone+aspp``) silently loads just the backbone where that is all
    a method pretrains (the record's ``loaded`` says so)."""
    rank = LOAD_MODES.index(load)
    short = [m for m, cls in method_classes.items() if LOAD_MODES.index(cls.transfers) < rank]
    if explicit and short:
        able = [m for m, cls in method_classes.items() if m not in short]
        raise ConfigError(
            f"finetune.load={load} asks for more than {', '.join(short)} pretrain(s) "
            f"(backbone only); run {'those' if len(short) > 1 else 'it'} in a separate sweep "
            f"without --set finetune.load"
            + (f", or sweep only {', '.join(able)} with it" if able else "")
        )


@dataclass
class SweepResult:
    jobs: list[Job]
    records: dict[str, dict[str, Any]]  # job id -> record ("skipped" ones have no file)

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r.get("status") == status]

    @property
    def ok(self) -> bool:
        return all(r.get("status") == "ok" for r in self.records.values())

    def finetune_records(self) -> list[dict[str, Any]]:
        return [
            self.records[j.job_id]
            for j in self.jobs
            if j.kind == "finetune" and j.job_id in self.records
        ]


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def spec_from_dict(values: dict[str, Any]) -> SweepSpec:
    return SweepSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run_sweep(
    spec: SweepSpec,
    results_dir: Path | str = "results",
    data_root: Path | str | None = None,
    executor: str = "inline",
    profile: Profile | None = None,
    timeout_s: float | None = None,
) -> SweepResult:
    """Plan ``spec`` and run every job not already done, with ``executor`` (inline, slurm,
    local or debug; see ``bench.executors``); wait for all of them and return all records."""
    from bench.executors import get_executor

    jobs = plan(spec)
    check_data(jobs, data_root)
    executor_ = get_executor(executor, profile, {"sweep": spec_to_dict(spec)})
    RunStore(results_dir).open_for_writing()
    if executor == "inline":
        records = executor_.run(jobs, Path(results_dir), data_root)
    else:
        records = executor_.run(jobs, Path(results_dir), data_root, timeout_s=timeout_s)
    return SweepResult(jobs=jobs, records=records)


def check_data(jobs: list[Job], data_root: Path | str | None) -> None:
    """Before anything runs: every dataset is prepared (else the error names the prepare
    command), has the requested bands, and every fraction labels at least one patch."""
    train_sizes: dict[tuple, int] = {}
    for job in jobs:
        key = (job.dataset, job.dataset_params, job.data)
        if key not in train_sizes:
            dataset = DATASETS.get(job.dataset)(job.dataset_params, job.data, data_root)
            dataset.check_ready()
            train_sizes[key] = dataset.train_size()
        if job.kind == "finetune":
            check_fraction_usable(job.dataset, job.fraction, train_sizes[key])


def submit_sweep(
    spec: SweepSpec,
    results_dir: Path | str = "results",
    data_root: Path | str | None = None,
    profile: Profile | None = None,
) -> tuple[list[Job], SubmitReport]:
    """Plan ``spec`` and submit to SLURM every job that is not queued, running or done;
    return at once (``bench status`` follows them)."""
    from bench.executors import SubmititExecutor

    jobs = plan(spec)
    check_data(jobs, data_root)
    RunStore(results_dir).open_for_writing()
    executor = SubmititExecutor("slurm", profile, {"sweep": spec_to_dict(spec)})
    return jobs, executor.submit(jobs, Path(results_dir), data_root)


def rerun_failed(
    results_dir: Path | str, profile_overrides: Profile | None = None
) -> tuple[SubmitReport, list[str]]:
    """Submit again, to SLURM, the failed jobs of the SLURM submissions in ``results_dir``
    (their sweep is re-planned from submission.json; their pretraining too if it failed).
    Returns the report and the failed job ids that could not be resubmitted (with why)."""
    from bench.executors import SubmititExecutor, SubmitReport
    from bench.submission import job_status, read_submission

    store = RunStore(results_dir)
    job_ids = store.run_ids()
    status = job_status(store, job_ids)
    report, unknown = SubmitReport(), []
    groups: dict[str, tuple[SweepSpec, dict[str, Any], list[str]]] = {}
    for job_id in job_ids:
        if status[job_id]["state"] != "failed":
            continue
        submission = read_submission(store, job_id)
        if not submission or "sweep" not in submission:
            unknown.append(f"{job_id}: not from a SLURM submission; rerun its `bench run`")
            continue
        key = json.dumps([submission["sweep"], submission.get("cluster_settings")], sort_keys=True)
        groups.setdefault(key, (spec_from_dict(submission["sweep"]), submission, []))[2].append(
            job_id
        )
    for spec, submission, failed in groups.values():
        jobs = plan(spec)
        missing = set(failed) - {job.job_id for job in jobs}
        unknown += [
            f"{job_id}: this code no longer plans it (settings changed)" for job_id in missing
        ]
        profile = profile_overrides or Profile(
            submission.get("cluster_profile", "(stored)"), submission.get("cluster_settings", {})
        )
        executor = SubmititExecutor("slurm", profile, {"sweep": submission["sweep"]})
        part = executor.submit(
            jobs, Path(results_dir), submission.get("data_root"), only_failed=True
        )
        report.submitted.update(part.submitted)
    return report, unknown


def job_states(jobs: list[Job], results_dir: Path | str) -> dict[str, str]:
    """``done``, ``failed`` or ``pending`` for each planned job, from the run store."""
    store = RunStore(results_dir)
    states = {}
    for job in jobs:
        record = store.read_record(job.job_id)
        states[job.job_id] = (
            "pending"
            if record is None
            else ("done" if record.get("status") == "ok" else str(record.get("status")))
        )
    return states
