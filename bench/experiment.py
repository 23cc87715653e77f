"""Experiment files: everything a sweep command line says, in one versioned YAML file.

A paper's table should point at one file anyone can rerun (Hydra, LightningCLI and VISSL
configs serve that purpose in the releases we reproduce). An experiment file holds the
sweep (methods, datasets, fractions, seeds, preset, settings by section, plugins), where it
runs (results folder, data root, executor, cluster profile and ``--slurm`` values) and the
table's options (metric, baseline)::

    methods: [random, simclr, glcnet]
    datasets: [potsdam]
    fractions: [0.01]
    preset: paper
    settings:
      finetune: {protocol: glcnet}
    results: results/glcnet
    table: {metric: [miou, kappa], baseline: random}

It is read into the same typed :class:`bench.sweep_spec.SweepSpec` the command line builds, so
every name and value is checked by the same code with the same message; the file's own
problems (YAML syntax, a duplicate or unknown key, a value of the wrong type) are one line
that names the file. Flags given beside a file override its values (``--set`` and
``--slurm`` values are added after the file's, so they win key by key).

``bench run`` writes the resolved experiment (every list explicit) into the results folder
as ``experiment.yaml`` and as ``experiments/<hash>.yaml``, the file each job's spec.json
names, so ``bench run results/experiment.yaml`` reruns exactly what made the table.
This is a small typed loader rather than a configuration framework: the settings already
have a typed schema (:mod:`bench.config`), and the loader only maps keys onto it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from bench.config import ConfigError, parse_overrides
from bench.execution.cluster import Profile, check_settings, load_profile, parse_cluster_overrides
from bench.execution.executors import EXECUTORS, get_executor
from bench.report import AUTO, check_baseline, check_metrics
from bench.store import RunStore, atomic_write_bytes
from bench.sweep_spec import SweepSpec

LATEST = "experiment.yaml"  # in a results folder: the experiment `run` ran last
BY_HASH = "experiments"  # in a results folder: every experiment run there, by content


@dataclass(frozen=True)
class Experiment:
    """A sweep and how to run and tabulate it; ``source``: the file it was read from."""

    sweep: SweepSpec = field(default_factory=SweepSpec)
    results: Path = Path("results")
    data_root: Path | None = None
    executor: str = "inline"
    wait: bool = False
    cluster: Path | None = None
    slurm: dict[str, Any] = field(default_factory=dict)  # checked cluster settings
    metric: tuple[str, ...] = ("miou", "kappa")
    baseline: str = AUTO
    source: Path | None = None

    def profile(self) -> Profile | None:
        """The cluster profile with the ``slurm`` values on top (None when neither is given)."""
        if self.cluster is None and not self.slurm:
            return None
        return load_profile(self.cluster, self.slurm)


SWEEP_FIELDS = tuple(f.name for f in fields(SweepSpec) if f.name != "experiment")
# The names a command line gives values under (argparse dests), besides SWEEP_FIELDS:
# None, an empty list or False means "not given". wandb and mlflow are --set shorthands.
FLAGS = (*SWEEP_FIELDS, "results", "data_root", "executor", "wait", "cluster", "slurm")
FLAGS += ("metric", "baseline", "wandb", "mlflow")


# ----------------------------------------------------------------------------------------
# Reading a file
# ----------------------------------------------------------------------------------------
class _Wrong(Exception):
    """A value that is not of the expected kind (``expected`` says which)."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _list_of(kind: type | tuple[type, ...], what: str) -> Callable[[Any], tuple]:
    def read(value: Any) -> tuple:
        if not isinstance(value, list) or not all(_is(item, kind) for item in value):
            raise _Wrong(f"a list of {what}, e.g. [{'a, b' if kind is str else '1, 2'}]")
        # names as plain text (a _Bool's too: `false` is a method), numbers as floats
        return tuple(float(v) if kind == (int, float) else _name_or(v) for v in value)

    return read


def _name_or(value: Any) -> Any:
    return str(value) if isinstance(value, str) else value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Wrong("a name (text)")
    return str(value)  # a plain str, also from a _Bool


def _path(value: Any) -> Path | None:
    if value is not None and not isinstance(value, str):
        raise _Wrong("a path (text) or null")
    return None if value is None else Path(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, _Bool):
        raise _Wrong("true or false")
    return yaml.safe_load(value)


def _executor(value: Any) -> str:
    name = _text(value)
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    return name


def _scalar_text(value: Any) -> str:
    """A YAML value as the text ``--set`` would give (the typed parser reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(_scalar_text(item) for item in value)
    if isinstance(value, (dict, set)):
        raise _Wrong("a value or a list of values")
    return str(value)


def _settings(value: Any) -> tuple[str, ...]:
    """``{section: {key: value}}`` -> ``("section.key=value", ...)`` (``--set`` items)."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise _Wrong("a mapping of sections to mappings of settings, e.g. {pretrain: {epochs: 5}}")
    items = []
    for section, values in value.items():
        for key, setting in values.items():
            try:
                items.append(f"{section}.{key}={_scalar_text(setting)}")
            except _Wrong as wrong:
                raise _Wrong(f"{wrong.expected} under settings.{section}.{key}") from None
    return tuple(items)


def _cluster_values(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Wrong("a mapping of cluster settings, e.g. {partition: gpu}")
    return check_settings(_plain(value), "slurm")


# file key -> (Experiment or SweepSpec field, reader)
KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "methods": ("methods", _list_of(str, "method names")),
    "datasets": ("datasets", _list_of(str, "dataset names")),
    "fractions": ("fractions", _list_of((int, float), "numbers")),
    "seeds": ("seeds", _list_of(int, "integers")),
    "preset": ("preset", _text),
    "settings": ("overrides", _settings),
    "plugins": ("plugins", _list_of(str, "module names")),
    "results": ("results", _path),
    "data_root": ("data_root", _path),
    "executor": ("executor", _executor),
    "wait": ("wait", _flag),
    "cluster": ("cluster", _path),
    "slurm": ("slurm", _cluster_values),
}
TABLE_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "metric": ("metric", _list_of(str, "metric names")),
    "baseline": ("baseline", _text),
}


class _Bool(str):
    """A YAML boolean kept as the text it was written as: ``false`` is also a method's
    name, and ``--set`` values are text the typed parser reads (``yes`` is true)."""


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep
    the last silently: a second ``methods:`` would drop the first list), booleans read as
    :class:`_Bool`."""

    def construct_yaml_bool(self, node):
        return _Bool(self.construct_scalar(node))

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeys.add_constructor("tag:yaml.org,2002:bool", _UniqueKeys.construct_yaml_bool)


def _plain(value: Any) -> Any:
    """``value`` with each :class:`_Bool` as YAML means it where the text is not a name:
    a bool in a mapping or list of values (cluster settings), the plain text in a name."""
    if isinstance(value, _Bool):
        return yaml.safe_load(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping at the top of the file ``path``; every problem one line naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"experiment file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"experiment file {path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"experiment file {path} cannot be read ({error})") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506  (a safe loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(loaded, dict):
        shown = "nothing" if loaded is None else f"a {type(loaded).__name__}"
        raise ConfigError(f"{path} holds {shown}; an experiment is a mapping of keys ({_valid()})")
    return loaded


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _valid(keys=KEYS, table: bool = True) -> str:
    return ", ".join([*keys, *(["table"] if table else [])])


def file_values(path: Path) -> dict[str, Any]:
    """The values an experiment file gives, under the names of :data:`FLAGS` (unknown keys
    and values of the wrong type refused in one line naming the file and the key)."""
    values: dict[str, Any] = {}
    for key, value in read_yaml(path).items():
        if key == "table":
            values.update(_section_values(path, "table", value, TABLE_KEYS))
        elif key in KEYS:
            values.update(_section_values(path, "", {key: value}, KEYS))
        else:
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys: {_valid()}")
    return values


def _section_values(path: Path, section: str, given: Any, keys: dict) -> dict[str, Any]:
    prefix = f"{section}." if section else ""
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping with keys {_valid(keys, False)}")
    values = {}
    for key, value in given.items():
        if key not in keys:
            valid = ", ".join(f"{prefix}{k}" for k in keys)
            raise ConfigError(f"{path}: unknown key '{prefix}{key}'; valid keys: {valid}")
        name, read = keys[key]
        try:
            values[name] = read(value)
        except _Wrong as wrong:
            got = f"got {type(value).__name__} {value!r}"
            raise ConfigError(f"{path}: {prefix}{key}: expected {wrong.expected}, {got}") from None
        except ConfigError as error:
            raise ConfigError(f"{path}: {prefix}{key}: {error}") from None
    return values


# ----------------------------------------------------------------------------------------
# File and flags: one experiment
# ----------------------------------------------------------------------------------------
def flag_values(given: dict[str, Any]) -> dict[str, Any]:
    """The values of :data:`FLAGS` a command line gave (None, an empty list and False are
    not given); ``wandb``/``mlflow`` become their ``--set`` items, ``slurm`` its settings."""
    values = {k: v for k, v in given.items() if k in FLAGS and _given(k, v)}
    loggers = [name for name in ("wandb", "mlflow") if values.pop(name, False)]
    enabled = [f"{section}.{name}=true" for name in loggers for section in ("pretrain", "finetune")]
    if enabled or "overrides" in values:
        values["overrides"] = (*enabled, *values.get("overrides", ()))
    if "slurm" in values:
        values["slurm"] = parse_cluster_overrides(values["slurm"])
    for name in ("plugins", "overrides"):
        if name in values:
            values[name] = tuple(values[name])
    return values


def _given(name: str, value: Any) -> bool:
    """None: an option not given; an empty repeatable option or a false switch neither (an
    empty list given on purpose, ``--datasets ''``, is given: the sweep refuses it)."""
    if name in ("overrides", "plugins", "slurm"):
        return bool(value)
    return value is not None and value is not False


def combine(*layers: dict[str, Any], source: Path | None = None) -> Experiment:
    """One experiment from layers of values (later layers win; ``--set`` items, cluster
    settings and plugins of later layers are added to those of earlier ones)."""
    values: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            if name == "overrides":
                value = (*values.get(name, ()), *value)
            elif name == "plugins":
                value = tuple(dict.fromkeys((*values.get(name, ()), *value)))
            elif name == "slurm":
                value = {**values.get(name, {}), **value}
            values[name] = value
    sweep = SweepSpec(**{k: v for k, v in values.items() if k in SWEEP_FIELDS})
    rest = {k: v for k, v in values.items() if k not in SWEEP_FIELDS}
    return Experiment(sweep=sweep, source=source, **rest)


def load_experiment(path: Path | str | None, given: dict[str, Any] | None = None) -> Experiment:
    """The experiment of a command: the file at ``path`` (if any), checked on its own, then
    the flags ``given`` on top (:func:`flag_values`)."""
    flags = flag_values(given or {})
    if path is None:
        return combine(flags)
    path = Path(path)
    own = file_values(path)
    try:
        check_experiment(combine(own))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return combine(own, flags, source=path)


def check_experiment(experiment: Experiment) -> None:
    """Every name and setting of the sweep and the table's options, as a command checks
    them (ConfigError with the same message)."""
    from bench.sweep import check_spec, sweep_settings  # registries, torch: when checked

    sweep_settings(experiment.sweep)  # every section built: names, ranges, types
    check_metrics(experiment.metric)
    check_baseline(experiment.baseline, check_spec(experiment.sweep).methods)
    experiment.profile()


# ----------------------------------------------------------------------------------------
# The resolved experiment, written into the results folder
# ----------------------------------------------------------------------------------------
def resolved_values(experiment: Experiment, jobs: list) -> dict[str, Any]:
    """The file's keys with every list explicit: the methods the plan has, the seeds it runs
    (the preset's when none were given), the settings as one mapping by section."""
    from bench.sweep import check_spec  # registries, torch: when checked

    sweep, checked = experiment.sweep, check_spec(experiment.sweep)
    settings = {
        section: {key: _readable(text) for key, text in values.items()}
        for section, values in parse_overrides(sweep.overrides).items()
    }
    values = {
        "methods": list(dict.fromkeys(job.method for job in jobs)),
        "datasets": list(sweep.datasets),
        "fractions": list(checked.fractions),
        "seeds": list(checked.seeds),
        "preset": sweep.preset,
        "settings": settings,
        "plugins": list(sweep.plugins),
        "results": str(experiment.results),
        "data_root": None if experiment.data_root is None else str(experiment.data_root),
        "executor": experiment.executor,
        "wait": experiment.wait,
        "cluster": None if experiment.cluster is None else str(experiment.cluster),
        "slurm": dict(experiment.slurm),
        "table": {"metric": list(experiment.metric), "baseline": experiment.baseline},
    }
    return values


def _readable(text: str) -> Any:
    """``--set`` text as a YAML value when it reads back as the same text (``5``, ``true``),
    else the text itself (quoted), so writing and reading a file changes no value."""
    try:
        value = yaml.safe_load(text)
        return value if _scalar_text(value) == text else text
    except (yaml.YAMLError, _Wrong):
        return text


HEADER = """\
# The resolved experiment `python -m bench run` ran into this results folder: every list
# explicit. Rerun it (finished jobs are skipped), or follow it, with:
#   python -m bench run|plan|status|table|report THIS_FILE
"""


def experiment_text(experiment: Experiment, jobs: list) -> str:
    values = resolved_values(experiment, jobs)
    body = yaml.safe_dump(values, sort_keys=False, width=88, default_flow_style=None)
    return HEADER + body


def record_experiment(experiment: Experiment) -> Experiment:
    """Write the resolved experiment into its results folder (``experiment.yaml`` and
    ``experiments/<hash>.yaml``) once the sweep passed every check ``run_sweep`` makes before
    its first job, so a refused sweep writes nothing. Returns the experiment whose sweep
    names the hashed file, so that each job's spec.json points at it."""
    from bench.sweep import check_data, plan  # registries, torch: when checked

    jobs = plan(experiment.sweep)
    check_data(jobs, experiment.data_root)
    get_executor(experiment.executor, experiment.profile()).check_layouts(jobs)
    RunStore(experiment.results).open_for_writing()
    text = experiment_text(experiment, jobs).encode()
    name = f"{BY_HASH}/{hashlib.sha256(text).hexdigest()[:12]}.yaml"
    for path in (experiment.results / name, experiment.results / LATEST):
        if not path.is_file() or path.read_bytes() != text:
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, text)
    return replace(experiment, sweep=replace(experiment.sweep, experiment=name))
