"""Planning sweeps: from a :class:`SweepSpec` to checked, planned jobs (running them is
:mod:`bench.execution.sweeps`).

Pretrain once, fine-tune many: a pretraining job depends on (method, data, seed,
hyperparameters) but not on the label fraction, so M methods x D datasets x F fractions x S
seeds cost M*D*S pretrainings and M*D*F*S fine-tunings; baselines need no pretraining.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from bench.config import (
    LOAD_MODES,
    PRESETS,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    Preset,
    PretrainConfig,
    build_section,
    check_unique,
    get_preset,
    parse_overrides,
)
from bench.datasets import DATASETS, create_dataset
from bench.datasets.base import check_fraction_usable
from bench.datasets.subsets import check_fractions, check_seeds
from bench.jobs import FinetuneJob, Job, PretrainJob
from bench.methods import METHODS
from bench.plugins import load_plugins
from bench.protocols import finetune_settings
from bench.sweep_spec import SweepSpec
from bench.tracking import check_logger_packages

log = logging.getLogger(__name__)

GENERIC_SECTIONS = ("data", "pretrain", "finetune")


@dataclass(frozen=True)
class CheckedSpec:
    """A :class:`SweepSpec` whose names, lists and ``--set`` values were checked."""

    preset: Preset
    methods: dict[str, type]  # name -> registry class, in the order given
    datasets: dict[str, type]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    user: dict[str, dict[str, str]]  # --set values by section
    methods_named: bool  # the user named the methods (else: every registered one)


def check_spec(spec: SweepSpec) -> CheckedSpec:
    """Every name, list and setting of ``spec`` checked before any work: unknown names,
    empty lists, duplicates, fractions outside (0, 1], negative seeds and settings outside
    their ranges raise :class:`ConfigError` naming the valid choices. The spec's plugins
    are imported first."""
    load_plugins(spec.plugins)
    preset = get_preset(spec.preset)
    methods = spec.methods if spec.methods is not None else tuple(METHODS.names())
    check_names("method", methods, METHODS)
    check_names("dataset", spec.datasets, DATASETS)
    fractions = check_fractions(spec.fractions)
    seeds = check_seeds(preset.seeds if spec.seeds is None else spec.seeds)
    user = parse_overrides(spec.overrides)
    check_overrides(user)
    return CheckedSpec(
        preset=preset,
        methods={m: METHODS.get(m) for m in methods},
        datasets={d: DATASETS.get(d) for d in spec.datasets},
        fractions=fractions,
        seeds=seeds,
        user=user,
        methods_named=spec.methods is not None,
    )


def check_names(kind: str, names: tuple[str, ...], registry) -> None:
    """``names`` are not empty, all registered and each given once."""
    if not names:
        raise ConfigError(f"no {kind}s given; valid {kind}s: {', '.join(registry.names())}")
    for name in names:
        registry.get(name)  # UnknownNameError (a ConfigError) lists the valid names
    check_unique(kind, names)


def check_overrides(user: dict[str, dict[str, str]]) -> None:
    """Every ``--set`` section exists and every value is valid, also in sections this sweep
    does not use (a typo there would otherwise pass silently)."""
    known = [*GENERIC_SECTIONS, *METHODS.names(), *DATASETS.names()]
    for section, values in user.items():
        if section not in known:
            raise ConfigError(
                f"unknown settings section {section!r} in --set; valid sections: "
                + ", ".join(known)
            )
        if section in METHODS:
            build_section(METHODS.get(section).Params, section, values)
        elif section in DATASETS:
            build_section(DATASETS.get(section).Params, section, values)


def plan(spec: SweepSpec) -> list[Job]:
    """The sweep's jobs in an order that respects dependencies (pretraining before its
    fine-tunings). Unknown names or bad settings raise ConfigError listing the valid ones."""
    sweep = check_spec(spec)
    data, finetune = shared_sections(sweep)
    explicit = "load" in sweep.user.get("finetune", {})
    check_load_mode(finetune.load, sweep.methods, explicit)
    jobs: list[Job] = []
    for dataset, dataset_cls in sweep.datasets.items():
        dataset_params = dataset_section(sweep, dataset, dataset_cls)
        common = {"dataset": dataset, "dataset_params": dataset_params, "data": data}
        common["experiment"] = spec.experiment
        for method, method_cls in sweep.methods.items():
            jobs += _method_jobs(sweep, method, method_cls, common, finetune)
    for job in jobs:  # W&B or MLflow asked for and not installed: say so before any work
        check_logger_packages(job.kind, job.pretrain if job.kind == "pretrain" else job.finetune)
    return jobs


def _method_jobs(
    sweep: CheckedSpec, method: str, method_cls: type, common: dict[str, Any], finetune
) -> list[Job]:
    """One method's jobs on one dataset: per seed its pretraining (if any), then one
    fine-tuning per fraction; none, with a warning, for a method that cannot run here and
    that the user did not name."""
    preset, user = sweep.preset, sweep.user
    method_params, pretrain = method_sections(preset, user, method, method_cls)
    check_pretrained_head(method, method_cls, method_params, finetune)
    reason = method_cls.unavailable_reason(method_params, pretrain.backbone)
    if reason and sweep.methods_named:
        raise ConfigError(f"method {method!r} cannot run here: {reason}")
    if reason:
        log.warning("leaving %s out of the default sweep: %s", method, reason)
        return []
    common = {
        **common,
        "method": method,
        "method_params": method_params,
        "preset": preset.name,
        "plugins": plugin_modules(method, common["dataset"]),
    }
    jobs: list[Job] = []
    for seed in sweep.seeds:
        pretrain_job = None
        if method_cls.pretrains:
            pretrain_job = PretrainJob(pretrain=pretrain, seed=seed, **common)
            jobs.append(pretrain_job)
        jobs += [
            FinetuneJob(
                pretrain_job=pretrain_job,
                finetune=finetune,
                backbone=pretrain.backbone,
                fraction=fraction,
                seed=seed,
                **common,
            )
            for fraction in sweep.fractions
        ]
    return jobs


def shared_sections(sweep: CheckedSpec) -> tuple[DataConfig, FinetuneConfig]:
    """The ``data`` and ``finetune`` sections of every job of a sweep."""
    preset, user = sweep.preset, sweep.user
    data = build_section(DataConfig, "data", preset.values.get("data"), user.get("data"))
    return data, finetune_settings(preset.values.get("finetune"), user.get("finetune"))


def dataset_section(sweep: CheckedSpec, dataset: str, dataset_cls: type):
    """A dataset's own settings: defaults < preset < the user's ``--set`` values."""
    preset, user = sweep.preset, sweep.user
    return build_section(dataset_cls.Params, dataset, preset.values.get(dataset), user.get(dataset))


def plugin_modules(method: str, dataset: str) -> tuple[str, ...]:
    """The modules a worker process imports to find ``method`` and ``dataset`` registered
    (none for the harness's own)."""
    origins = (METHODS.origin(method), DATASETS.origin(dataset))
    return tuple(dict.fromkeys(module for module in origins if module))


def check_preset_keys(method: str, method_cls: type) -> None:
    """A method's per-preset values name registered presets (a misspelt one would
    silently never apply)."""
    for attribute in ("preset_params", "preset_pretrain"):
        for key in getattr(method_cls, attribute):
            if key not in PRESETS:
                raise ConfigError(
                    f"method {method}: {attribute} names preset {key!r}, which is not "
                    f"registered; valid presets: {', '.join(PRESETS.names())}"
                )


def method_sections(preset: Preset, user: dict, method: str, method_cls: type):
    """A method's own settings and its pretraining loop's under ``preset`` and the user's
    ``--set`` values: defaults < preset < the method's values for that preset < the user's."""
    check_preset_keys(method, method_cls)
    params = build_section(
        method_cls.Params, method, method_cls.preset_params.get(preset.name), user.get(method)
    )
    pretrain = build_section(
        PretrainConfig,
        "pretrain",
        preset.values.get("pretrain"),
        method_cls.preset_pretrain.get(preset.name),
        user.get("pretrain"),
    )
    return params, pretrain


UNUSED = "-"  # a setting the recipe does not use


def sweep_settings(spec: SweepSpec) -> list[tuple[str, Any]]:
    """Every settings section the jobs of ``spec`` run with, resolved as :func:`plan`
    resolves them: ``data``, ``finetune``, each dataset's, each method's own, then the
    pretraining loop's, one section per group of methods that share it (labelled
    ``pretrain: simclr, moco``)."""
    sweep = check_spec(spec)
    data, finetune = shared_sections(sweep)
    sections: list[tuple[str, Any]] = [("data", data), ("finetune", finetune)]
    sections += [(d, dataset_section(sweep, d, cls)) for d, cls in sweep.datasets.items()]
    loops: dict[PretrainConfig, list[str]] = {}
    for method, method_cls in sweep.methods.items():
        params, pretrain = method_sections(sweep.preset, sweep.user, method, method_cls)
        sections.append((method, params))
        if method_cls.pretrains:
            loops.setdefault(pretrain, []).append(method)
    sections += [(f"pretrain: {', '.join(names)}", cfg) for cfg, names in loops.items()]
    return sections


def setting_rows(section: Any) -> list[tuple[str, Any, Any, bool]]:
    """Each field of a settings section: (name, value, the dataclass default, whether the
    section's other choices leave it unused)."""
    unused = section.unused_fields()
    rows = []
    for f in fields(section):
        default = f.default if f.default is not MISSING else f.default_factory()
        rows.append((f.name, getattr(section, f.name), default, f.name in unused))
    return rows


def preset_differences(spec: SweepSpec, other: str) -> dict[str, list[tuple[str, Any, Any]]]:
    """Per method of ``spec``, the settings (``section.field``, value under ``spec.preset``,
    value under ``other``) that differ between the two presets, the user's ``--set`` values
    applied to both; :data:`UNUSED` stands for a setting that one recipe does not use (LARS's
    trust with Adam), and settings neither uses are left out."""
    sweep, theirs = check_spec(spec), get_preset(other)
    differences = {}
    for method, method_cls in sweep.methods.items():
        if not method_cls.pretrains:
            continue
        pairs = zip(
            method_sections(sweep.preset, sweep.user, method, method_cls),
            method_sections(theirs, sweep.user, method, method_cls),
            strict=True,
        )
        rows = []
        for section, sections in zip((method, "pretrain"), pairs, strict=True):
            unused = [s.unused_fields() for s in sections]
            for f in fields(sections[0]):
                shown = [
                    UNUSED if f.name in u else getattr(s, f.name)
                    for s, u in zip(sections, unused, strict=True)
                ]
                if shown[0] != shown[1]:
                    rows.append((f"{section}.{f.name}", *shown))
        differences[method] = rows
    return differences


def check_pretrained_head(method: str, method_cls: type, params, finetune: FinetuneConfig) -> None:
    """Fine-tuning that loads a method's pretrained ASPP or decoder must build the head the
    method pretrained (same convolutions, width and output stride)."""
    pretrained = method_cls.head(params)
    mode = LOAD_MODES[min(LOAD_MODES.index(finetune.load), LOAD_MODES.index(method_cls.transfers))]
    if pretrained is None or mode == "backbone" or pretrained == finetune.head:
        return
    raise ConfigError(
        f"finetune.load={finetune.load} loads the DeepLabV3+ {method} pretrained "
        f"({pretrained.describe()}) into a different head ({finetune.head.describe()}); set "
        f"finetune.output_stride/aspp_separable/decoder_channels to match, or "
        f"finetune.load=backbone"
    )


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


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def spec_from_dict(values: dict[str, Any]) -> SweepSpec:
    return SweepSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def check_data(jobs: list[Job], data_root: Path | str | None) -> None:
    """Before anything runs: every dataset is prepared (else the error names the prepare
    command), has the requested bands, every fraction labels at least one patch, every
    pretraining batch fits in the training patches and each method's settings fit them
    (e.g. MoCo's queue)."""
    datasets: dict[tuple, Any] = {}
    for job in jobs:
        key = (job.dataset, job.dataset_params, job.data)
        if key not in datasets:
            dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
            dataset.check_ready()
            datasets[key] = (dataset, dataset.train_size())
        dataset, train_size = datasets[key]
        if job.kind == "finetune":
            check_fraction_usable(job.dataset, job.fraction, train_size)
            check_tiles(job, dataset)
        elif job.pretrain.batch_size > train_size:
            raise ConfigError(
                f"pretrain.batch_size={job.pretrain.batch_size} exceeds the {train_size} "
                f"training patches of {job.dataset}: not one full batch per epoch"
            )
        else:
            METHODS.get(job.method).check_data(job.method_params, job.pretrain, train_size)


def check_tiles(job: FinetuneJob, dataset) -> None:
    """Stratified label lists and whole-tile evaluation need a dataset cut from tiles, and
    the sliding window must fit in every test tile."""
    cfg = job.finetune
    chosen = {"labels": cfg.labels, "evaluation": cfg.evaluation}
    needs = [f"finetune.{k}={v}" for k, v in chosen.items() if v in ("stratified", "tiles")]
    if not needs:
        return
    layouts = dataset.test_tiles()
    if layouts is None:
        raise ConfigError(
            f"{' and '.join(needs)} need a dataset cut from tiles; {job.dataset} has none "
            "(use finetune.labels=random and finetune.evaluation=patches)"
        )
    if cfg.evaluation == "tiles":
        from bench.evaluation import check_window

        check_window(layouts, cfg.eval_window, job.dataset)


def data_problems(jobs: list[Job], data_root: Path | str | None) -> list[str]:
    """What :func:`check_data` would refuse, one line per dataset (for ``plan``, which only
    shows the jobs)."""
    problems = []
    for dataset in dict.fromkeys(job.dataset for job in jobs):
        try:
            check_data([job for job in jobs if job.dataset == dataset], data_root)
        except ConfigError as error:
            problems.append(str(error))
    return problems
