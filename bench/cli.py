"""Command line: a thin argparse layer over the typed functions the tests also call
(``bench.run_sweep``, ``bench.sweep.plan``, ``bench.report.results_table``,
``bench.report.write_report``, ``bench.datasets.prepare_dataset``,
``bench.execution.status.job_statuses`` ...); it parses, calls one, and prints what it
returns. The sweep, method and dataset modules (torch, seconds to import) are imported by
the commands that use them, so ``table``, ``report``, ``plot`` and ``status`` start fast."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bench.collapse import health_note
from bench.config import COMPARED_PRESETS, PRESETS, ConfigError, shown
from bench.conventions import CONVENTIONS, default_convention
from bench.execution.executors import EXECUTORS
from bench.experiment import (
    LATEST,
    Experiment,
    check_experiment,
    load_experiment,
    record_experiment,
)
from bench.plugins import load_plugins
from bench.preemption import Preempted
from bench.protocols import PROTOCOLS, describe_overrides, protocol_overrides
from bench.report import (
    FORMATS,
    NO_RESULTS,
    PLOT_FORMATS,
    ansi_for,
    check_metrics,
    comparison_table,
    plot_fraction_curves,
    read_results,
    render,
    results_table,
    table_format,
    write_report,
)
from bench.report.index import paused_gc
from bench.states import JobState, summary
from bench.store import (
    RunStore,
    UnreadableRecord,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
    describe_storage_fault,
    read_log,
    storage_fault,
)
from bench.sweep_spec import SweepSpec

log = logging.getLogger("bench")

# Exit codes (README "When things go wrong")
FAILED_JOBS = 1  # some jobs failed or were skipped
BAD_INPUT = 2  # one line says what is wrong; nothing was written
INCOMPLETE = 3  # unreadable records were left out of a table, plot or status
STORAGE_FAULT = 4  # a full, read-only or forbidden filesystem stopped the command
INTERRUPTED = 130
STOPPED = 143


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and the exit code of bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


# ----------------------------------------------------------------------------------------
# Arguments shared by several commands
# ----------------------------------------------------------------------------------------
def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _list_of(kind: type, what: str):
    """An argparse type: comma-separated values of ``kind``."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in _names(text))
        except ValueError:
            message = f"expected comma-separated {what}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return parse


_floats, _ints = _list_of(float, "numbers"), _list_of(int, "integers")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_experiment_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "experiment",
        nargs="?",
        type=Path,
        default=None,
        metavar="EXPERIMENT.yaml",
        help="an experiment file (experiments/*.yaml, or the experiment.yaml `run` writes into "
        "a results folder): every option below in one file; options given as well override "
        "the file's values (--set and --slurm add to its settings, key by key)",
    )


_OVERRIDE_NOTE = "options given beside EXPERIMENT.yaml override its values (README: experiments)"


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_argument(parser)
    parser.add_argument(
        "--methods",
        type=_names,
        default=None,
        help="comma-separated methods (default: all registered that can run here; see `list`)",
    )
    parser.add_argument(
        "--datasets",
        type=_names,
        default=None,
        help=f"comma-separated datasets (default: {','.join(SweepSpec.datasets)})",
    )
    parser.add_argument(
        "--fractions",
        type=_floats,
        default=None,
        help=f"label fractions in (0, 1] (default: {','.join(map(str, SweepSpec.fractions))})",
    )
    parser.add_argument(
        "--seeds", type=_ints, default=None, help="comma-separated seeds (default: the preset's)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help=f"one of: {', '.join(PRESETS.names())} (default: {SweepSpec.preset})",
    )
    _add_set_option(parser, "override a setting, e.g. --set pretrain.epochs=10 (repeatable)")
    _add_results_option(parser)
    for logger, where in (("wandb", "offline unless WANDB_MODE"), ("mlflow", "<results>/mlruns")):
        parser.add_argument(
            f"--{logger}",
            action="store_true",
            help=f"also log every run to {logger} ({where}); the same as --set "
            f"pretrain.{logger}=true --set finetune.{logger}=true",
        )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="data folder (default: $BENCH_DATA_ROOT, then ./data)",
    )


def _add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"results folder (default: ./{Experiment.results})",
    )


def _experiment(args: argparse.Namespace) -> Experiment:
    """The command's experiment: its file (if one is given), then the options given."""
    return load_experiment(args.experiment, vars(args))


def _plugin_modules(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for value in values for name in _names(value)))


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        type=Path,
        default=None,
        metavar="PROFILE.yaml",
        help="cluster profile (see slurm/example.yaml) for the slurm/local executors",
    )
    parser.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a cluster profile setting, e.g. --slurm partition=gpu (repeatable)",
    )


def _add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric",
        type=_names,
        default=None,
        help="metrics in the table: miou, kappa, oa, mean_f1 "
        f"(default: {','.join(Experiment.metric)})",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="method the Δ columns and paired t-tests compare with, or none "
        "(default: random when it has records)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="one wide table (default: a block per dataset, and per metric where wide)",
    )


def _warn_unreadable(unreadable: list[UnreadableRecord]) -> int:
    """Name each unreadable record on stderr; the exit code that says so."""
    for bad in unreadable:
        print(f"warning: left out {bad}", file=sys.stderr)
    return INCOMPLETE if unreadable else 0


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from bench.execution.sweeps import run_sweep, submit_sweep

    start = time.perf_counter()
    experiment = _experiment(args)
    check_experiment(experiment)  # the table's options and the profile, before any compute
    executor, results = experiment.executor, experiment.results
    if executor != "slurm" and (experiment.cluster or experiment.slurm):
        log.info("--cluster/--slurm: the %s executor uses timeout_min, etc. only", executor)
    experiment = record_experiment(experiment)
    spec, data_root, profile = experiment.sweep, experiment.data_root, experiment.profile()
    if executor == "slurm" and not experiment.wait:
        jobs, report = submit_sweep(spec, results, data_root, profile)
        print(f"{len(jobs)} jobs: {report.summary()}")
        for job_id, why in report.held_back.items():
            print(f"HELD    {job_id}: {why}")
        print(f"follow them with: python -m bench status --results {results}")
        return 0
    result = run_sweep(spec, results, data_root, executor, profile)
    print()
    records, ansi = result.finetune_records(), ansi_for(sys.stdout)
    metrics, baseline = experiment.metric, experiment.baseline
    print(comparison_table(records, metrics, baseline, "text", args.wide, ansi))
    elapsed = time.perf_counter() - start
    print(f"\n{len(result.jobs)} jobs in {elapsed:.1f}s; results in {results}")
    print(f"the experiment: {results / LATEST} (rerun it with python -m bench run FILE)")
    for status in ("failed", "skipped"):
        for record in result.by_status(status):
            why = record.get("storage_fault") or record["error"]
            print(f"{status.upper():<7} {record['job_id']}: {why}")
    faults = [r["storage_fault"] for r in result.by_status("failed") if r.get("storage_fault")]
    if faults:
        print(f"stopped at a storage fault: {faults[0]}; then rerun this command (finished "
              "jobs are kept, nothing half-written is read as done)")  # fmt: skip
        return STORAGE_FAULT
    return 0 if result.ok else FAILED_JOBS


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.cost import estimate_cost, format_estimate, throughput_table
    from bench.execution.sweeps import sweep_status
    from bench.sweep import data_problems, plan

    experiment = _experiment(args)
    spec, data_root = experiment.sweep, experiment.data_root
    rates = throughput_table(args.perf)
    jobs = plan(spec)
    statuses = sweep_status(jobs, experiment.results)
    for job in jobs:
        after = ",".join(job.depends_on) or "-"
        print(f"{statuses[job.job_id].state!s:<8} {job.kind:<9} {job.job_id:<58} after {after}")
    print(f"\n{summary(statuses.values())}")
    for cfg in dict.fromkeys(job.finetune for job in jobs if job.kind == "finetune"):
        overrides = describe_overrides(protocol_overrides(cfg))
        print(
            f"fine-tuning protocol {cfg.protocol}"
            + (f", overridden: {overrides}" if overrides else "")
            + f"; head: {'DeepLabV3+ ' if cfg.decoder == 'deeplabv3plus' else ''}{cfg.head}"
            + f"; scored on test {cfg.evaluation}"
        )
    print()
    print(format_estimate(estimate_cost(jobs, data_root, rates)))
    if spec.preset in COMPARED_PRESETS:
        print_preset_differences(spec, COMPARED_PRESETS[spec.preset])
    if args.show_settings:
        print_settings(spec)
    for problem in data_problems(jobs, data_root):
        print(f"note (`run` refuses this sweep until it is fixed): {problem}")
    return 0


def print_preset_differences(spec, other: str) -> None:
    from bench.sweep import preset_differences

    """What the chosen preset sets differently from ``other``, method by method."""
    print(f"\nsettings where the {spec.preset} preset differs from the {other} preset:")
    for method, rows in preset_differences(spec, other).items():
        if not rows:
            print(f"  {method}: none")
            continue
        print(f"  {method}:")
        width = max(len(key) for key, _, _ in rows)
        values = max(len(shown(mine)) for _, mine, _ in rows)
        for key, mine, theirs in rows:
            print(f"    {key:<{width}}  {shown(mine):<{values}}  ({other}: {shown(theirs)})")
    print(f"  ('-': a setting that recipe does not use; {spec.preset} values first)")


def print_settings(spec: SweepSpec) -> None:
    from bench.sweep import setting_rows, sweep_settings

    """Every section's resolved settings; those that differ from the defaults marked."""
    print(
        f"\nresolved settings ({spec.preset} preset and --set; '*' differs from the default, "
        "shown in brackets; 'unused': this recipe does not use it):"
    )
    for section, values in sweep_settings(spec):
        rows = setting_rows(values)
        print(f"  [{section}]" + ("" if rows else " no settings"))
        width = max((len(name) for name, *_ in rows), default=0)
        for name, value, default, unused in rows:
            mark = "*" if value != default else " "
            line = f"    {mark} {name:<{width}}  {shown(value)}"
            line += f"  (default {shown(default)})" if value != default else ""
            print(line + ("  unused" if unused else ""))


def cmd_list(args: argparse.Namespace) -> int:
    from bench.datasets import DATASETS
    from bench.methods import METHODS

    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        kind = "pretraining" if cls.pretrains else "baseline"
        print(f"  {name:<12} {kind:<12} {cls.summary}{_from_plugin(METHODS, name)}")
    print("datasets:")
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        names = cls.class_names if isinstance(cls.class_names, tuple) else None
        classes = f"{len(names)} classes: {', '.join(names)}" if names else "classes from its file"
        about = cls.summary or (cls.__doc__ or name).strip().splitlines()[0]
        print(f"  {name:<12} {about}; {classes}{_from_plugin(DATASETS, name)}")
    print("presets:")
    for preset in map(PRESETS.get, PRESETS.names()):
        print(f"  {preset.name:<12} {preset.description}")
    print("downstream protocols (--set finetune.protocol=...):")
    for protocol in map(PROTOCOLS.get, PROTOCOLS.names()):
        print(f"  {protocol.name:<12} {protocol.summary}; from {protocol.source}")
    _list_conventions()
    return 0


def _list_conventions() -> None:
    print("scoring conventions (table --convention ...; * the dataset's default):")
    for convention in map(CONVENTIONS.get, CONVENTIONS.names()):
        datasets = [
            f"{d}*" if default_convention(d) is convention else d for d in convention.datasets
        ]
        where = f"for {', '.join(datasets)}" if datasets else "for any dataset"
        print(
            f"  {convention.name:<20} {convention.summary}; {where}; from {convention.source}"
            f"{_from_plugin(CONVENTIONS, convention.name)}"
        )


def _from_plugin(registry, name: str) -> str:
    plugin = registry.plugin(name)
    return f" [plugin: {plugin}]" if plugin else ""


def _print_contracts(contracts) -> int:
    """Print each contract's line as it completes; 0 if all passed, else FAILED_JOBS."""
    logger, results = logging.getLogger("bench"), []
    level = logger.level
    logger.setLevel(logging.WARNING)  # the lines are the report, not the loops' progress
    try:
        for contract in contracts:
            print(contract, flush=True)
            results.append(contract)
    finally:
        logger.setLevel(level)
    passing = sum(c.ok for c in results)
    print(f"\n{passing} of {len(results)} contracts pass")
    return 0 if passing == len(results) else FAILED_JOBS


def cmd_check_method(args: argparse.Namespace) -> int:
    from bench.conformance import iter_check_method

    contracts = iter_check_method(args.name, args.overrides, args.plugins, args.only)
    return _print_contracts(contracts)


def cmd_check_dataset(args: argparse.Namespace) -> int:
    from bench.conformance import iter_check_dataset

    contracts = iter_check_dataset(
        args.name, args.overrides, args.data_root, args.raw, args.plugins, args.only
    )
    return _print_contracts(contracts)


def cmd_prepare(args: argparse.Namespace) -> int:
    from bench.datasets import prepare_dataset
    from bench.datasets.prepared import class_count_table

    given = {"patch_size": args.patch_size, "stride": args.stride, "name": args.name}
    dataset, manifest = prepare_dataset(
        args.dataset,
        args.raw,
        args.data_root,
        settings={k: v for k, v in given.items() if v is not None},
        overrides=args.overrides,
        seeds=args.seeds,
        fractions=args.fractions,
        force=args.force,
    )
    if manifest is None:
        print(f"{args.dataset} is generated, not read from files; cached in {dataset.prepared_dir}")
        return 0
    print(class_count_table(manifest))
    print(f"\n{args.dataset} prepared in {dataset.prepared_dir}")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import (
        PerfSettings,
        format_report,
        pretraining_methods,
        run_perf,
        write_perf_report,
    )

    settings = PerfSettings(
        methods=args.methods or pretraining_methods(),
        short=args.warmup_steps,
        steady=args.steps,
        rounds=args.rounds,
        repeats=args.repeats,
        overrides=tuple(args.overrides),
    )
    report = run_perf(settings)
    print(format_report(report))
    write_perf_report(report, args.output)
    print(f"\nreport written to {args.output}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_file(args.output)
    fmt = table_format(args.format, args.output)
    experiment = _experiment(args)
    with paused_gc():  # a short command over up to millions of JSON objects (no cycles)
        table, unreadable = results_table(
            experiment.results,
            experiment.metric,
            experiment.baseline,
            args.per_class,
            args.dataset,
            args.fraction,
            args.convention,
        )
    code = _warn_unreadable(unreadable)
    ansi = args.output is None and ansi_for(sys.stdout)
    text = NO_RESULTS if table is None else render(table, fmt, args.wide, ansi)
    if args.output is None or table is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        atomic_write_bytes(args.output, (text.rstrip("\n") + "\n").encode())
        print(f"wrote {args.output}")
    return code


def cmd_plot(args: argparse.Namespace) -> int:
    output_dir = args.output_dir or args.results / "plots"
    check_metrics(args.metric)
    RunStore(args.results).check_exists()
    check_output_dir(output_dir)
    records, unreadable = read_results(args.results)
    code = _warn_unreadable(unreadable)
    for path in plot_fraction_curves(records, output_dir, args.metric, args.format):
        print(f"wrote {path}")
    return code


def cmd_report(args: argparse.Namespace) -> int:
    experiment = _experiment(args)
    with paused_gc():  # as in cmd_table
        path, unreadable = write_report(experiment.results, args.output, args.convention)
    code = _warn_unreadable(unreadable)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from bench.execution.status import job_statuses

    experiment = _experiment(args)
    store = RunStore(experiment.results)
    store.check_exists()
    statuses = job_statuses(store, store.run_ids())
    for job_id, status in statuses.items():
        line = f"{status.state!s:<8} {job_id:<58} {status.scheduler_job_id or '-':<10}"
        # a pretraining's last health pass; a finished fine-tuning's log has none to read
        finetuned = (status.record or {}).get("kind") == "finetune"
        health = "" if finetuned else health_note(read_log(store.run_dir(job_id)))
        detail = "; ".join(text for text in (status.detail, health) if text)
        print(f"{line} {detail}".rstrip())
    print(f"\n{summary(statuses.values())}")
    if args.rerun_failed:
        from bench.execution.sweeps import rerun_failed

        report, unknown = rerun_failed(experiment.results, experiment.profile())
        print(f"resubmitted {len(report.submitted)} failed job(s) to SLURM")
        for line in unknown:
            print(f"NOT RESUBMITTED {line}")
        return 1 if unknown else 0
    return INCOMPLETE if any(s.state is JobState.CORRUPT for s in statuses.values()) else 0


# ----------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------
def _run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_sweep_arguments(parser)
    _add_table_arguments(parser)
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="inline: here, one job after another (default); slurm: submit to SLURM through "
        "submitit and return; local: parallel processes here; debug: submitit, in-process",
    )
    parser.add_argument(
        "--wait", action="store_true", help="slurm: follow the jobs until done, then the table"
    )
    _add_cluster_arguments(parser)


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    _add_sweep_arguments(parser)
    parser.add_argument(
        "--show-settings",
        action="store_true",
        help="print every section's resolved settings and what differs from the defaults",
    )
    parser.add_argument(
        "--perf",
        type=Path,
        default=None,
        metavar="PERF.json",
        help="throughput for the cost estimate from `bench perf --output PERF.json` run on your "
        "GPU (default: the estimates in bench/cost.py, which say their source)",
    )


def _add_set_option(
    parser: argparse.ArgumentParser, help_text: str, metavar: str = "SECTION.KEY=VALUE"
) -> None:
    """``--set`` (repeatable, collected in ``overrides``): settings as the sweeps read them."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar=metavar, help=help_text
    )


def _check_arguments(kind: str):
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help=f"{kind} name (see `list`)")
        _add_set_option(parser, "a setting over the check's tiny ones (repeatable)")
        parser.add_argument(
            "--only", type=_names, default=None, help="comma-separated contracts to check"
        )
        if kind == "dataset":
            parser.add_argument(
                "--data-root",
                type=Path,
                default=None,
                help="where a prepared dataset is (default: $BENCH_DATA_ROOT, then ./data); "
                "generated datasets are checked in a temporary folder",
            )
            parser.add_argument(
                "--raw", type=Path, default=None, help="prepare it first from this raw release"
            )

    return add


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset name (see `list`)")
    parser.add_argument("--raw", type=Path, default=None, help="folder of the raw release")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where prepared data goes (default: $BENCH_DATA_ROOT, then ./data)",
    )
    parser.add_argument("--patch-size", type=int, default=None, help="patch side (default 256)")
    parser.add_argument(
        "--stride", type=int, default=None, help="patch grid step (default: the patch size)"
    )
    parser.add_argument("--name", default=None, help="folder dataset: name of this dataset")
    parser.add_argument(
        "--seeds", type=_ints, default=(0, 1, 2), help="seeds of the label-subset lists (0,1,2)"
    )
    parser.add_argument(
        "--fractions",
        type=_floats,
        default=(0.01, 0.1),
        help="label fractions of the subset lists to write (default 0.01,0.1)",
    )
    _add_set_option(
        parser, "a dataset setting, e.g. --set potsdam.labels=no_boundary", "DATASET.KEY=VALUE"
    )
    parser.add_argument("--force", action="store_true", help="discard and redo a prepared copy")


def _perf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=_names, default=None, help="pretraining methods")
    parser.add_argument(
        "--steps", type=_positive, default=50, help="steady-state steps (after the warm-up)"
    )
    parser.add_argument(
        "--warmup-steps", type=_positive, default=5, help="steps of the short run (warm-up)"
    )
    parser.add_argument(
        "--rounds", type=_positive, default=3, help="interleaved harness/bare rounds (median)"
    )
    parser.add_argument(
        "--repeats", type=_positive, default=2, help="metric and loader runs (best kept)"
    )
    _add_set_option(parser, "a setting of the measured jobs (quick preset), e.g. "
                    "pretrain.batch_size=8; repeatable")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("perf.json"), help="JSON report")


def _table_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_argument(parser)
    _add_results_option(parser)
    _add_table_arguments(parser)
    parser.add_argument(
        "--format",
        default=None,
        help=f"one of {', '.join(FORMATS)} (default: from --output's suffix, else md)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write to this file")
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="per-class IoU of one --dataset at one --fraction (each optional when unique)",
    )
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--fraction", type=float, default=None)
    _add_convention_argument(parser)


def _add_convention_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--convention",
        type=_names,
        default=(),
        help="score the records again under these scoring conventions, side by side "
        "(comma-separated; see `list`); default: the scores of each run",
    )


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--output-dir", type=Path, default=None, help="default: <results>/plots")
    parser.add_argument(
        "--format",
        type=_names,
        default=PLOT_FORMATS,
        help=f"comma-separated: {', '.join(PLOT_FORMATS)} (default: both)",
    )
    parser.add_argument(
        "--metric", type=_names, default=("miou",), help="one figure per metric (default: miou)"
    )


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_argument(parser)
    _add_results_option(parser)
    parser.add_argument(
        "--output", type=Path, default=None, help="the HTML file (default: <results>/report.html)"
    )
    _add_convention_argument(parser)


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_experiment_argument(parser)
    _add_results_option(parser)
    parser.add_argument(
        "--rerun-failed", action="store_true", help="submit the failed SLURM jobs again"
    )
    _add_cluster_arguments(parser)


# the commands that take an experiment file
EXPERIMENT_COMMANDS = ("run", "plan", "status", "table", "report")
# name -> (help, arguments, command)
COMMANDS = {
    "run": ("plan and run a sweep, then print its table", _run_arguments, cmd_run),
    "plan": ("print the planned jobs without running them", _plan_arguments, cmd_plan),
    "prepare": (
        "read a downloaded dataset release once into patches for every run",
        _prepare_arguments,
        cmd_prepare,
    ),
    "perf": (
        "measure harness overhead and throughput (ratios in one process)",
        _perf_arguments,
        cmd_perf,
    ),
    "list": ("methods, datasets, presets, protocols, conventions", lambda parser: None, cmd_list),
    "table": ("print or write the table of a results folder", _table_arguments, cmd_table),
    "plot": ("figures: a metric vs the label fraction, per dataset", _plot_arguments, cmd_plot),
    "report": (
        "one self-contained HTML page: tables, per-class IoU, plots, losses, jobs, settings",
        _report_arguments,
        cmd_report,
    ),
    "status": (
        "state of every job in a results folder (planned, queued, running, ...) and the "
        "health of each pretraining (embedding std, rank, alignment, uniformity, k-NN)",
        _status_arguments,
        cmd_status,
    ),
    "check-method": (
        "check a method's contracts with the harness on tiny data (about a minute on CPU)",
        _check_arguments("method"),
        cmd_check_method,
    ),
    "check-dataset": (
        "check a dataset's contracts with the harness",
        _check_arguments("dataset"),
        cmd_check_dataset,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m bench",
        description="Benchmark self-supervised pretraining for remote-sensing segmentation.",
    )
    quiet = {"action": "store_true", "help": "only warnings and the table"}
    parser.add_argument("-q", "--quiet", **quiet)
    plugin = {
        "dest": "plugins",
        "action": "append",
        "metavar": "MODULE",
        "help": "import this plugin module first (repeatable; see docs/PLUGINS.md)",
    }
    parser.add_argument("--plugin", default=[], **plugin)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, command) in COMMANDS.items():
        epilog = _OVERRIDE_NOTE if name in EXPERIMENT_COMMANDS else None
        command_parser = sub.add_parser(name, help=help_text, epilog=epilog)
        add_arguments(command_parser)
        # -q before or after the sub-command
        command_parser.add_argument("-q", "--quiet", default=argparse.SUPPRESS, **quiet)
        command_parser.add_argument("--plugin", default=argparse.SUPPRESS, **plugin)
        command_parser.set_defaults(func=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        args.plugins = load_plugins(_plugin_modules(args.plugins))
        return args.func(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    except OSError as error:
        fault = storage_fault(error)
        if fault is None:
            raise
        print(f"error: {describe_storage_fault(fault)}; then rerun", file=sys.stderr)
        return STORAGE_FAULT
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Preempted as stop:
        print(f"preempted: {stop}; rerun the same command to resume", file=sys.stderr)
        return STOPPED
