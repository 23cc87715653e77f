"""Command line: a thin argparse layer over the typed functions (``bench.run_sweep`` ...)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bench.cluster import Profile, load_profile, parse_cluster_overrides
from bench.config import PRESETS, ConfigError, DataConfig, build_section, parse_overrides
from bench.datasets import DATASETS, default_data_root
from bench.datasets.prepared import PreparedDataset, class_count_table
from bench.executors import EXECUTORS
from bench.methods import METHODS
from bench.preemption import Preempted
from bench.report import (
    AUTO,
    FORMATS,
    NO_RESULTS,
    PLOT_FORMATS,
    SUFFIXES,
    build_table,
    check_baseline,
    check_format,
    check_metrics,
    comparison_table,
    per_class_table,
    plot_fraction_curves,
    render,
)
from bench.store import (
    RunStore,
    UnreadableRecord,
    atomic_write_bytes,
    check_output_dir,
    check_output_file,
)
from bench.submission import job_status
from bench.sweep import (
    SweepSpec,
    check_fractions,
    check_seeds,
    check_spec,
    data_problems,
    job_states,
    plan,
    rerun_failed,
    run_sweep,
    submit_sweep,
)

log = logging.getLogger("bench")

# Exit codes (README "When things go wrong")
FAILED_JOBS = 1  # some jobs failed or were skipped
BAD_INPUT = 2  # one line says what is wrong; nothing was written
INCOMPLETE = 3  # unreadable records were left out of a table, plot or status
INTERRUPTED = 130
STOPPED = 143


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and the exit code of bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(BAD_INPUT)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        type=_names,
        default=None,
        help="comma-separated methods (default: all registered that can run here; see `list`)",
    )
    parser.add_argument(
        "--datasets",
        type=_names,
        default=("synthetic",),
        help="comma-separated datasets (default: synthetic)",
    )
    parser.add_argument(
        "--fractions",
        type=_floats,
        default=(0.01, 0.1),
        help="label fractions in (0, 1] (default: 0.01,0.1)",
    )
    parser.add_argument(
        "--seeds", type=_ints, default=None, help="comma-separated seeds (default: the preset's)"
    )
    parser.add_argument("--preset", default="quick", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting, e.g. --set pretrain.epochs=10 (repeatable)",
    )
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder (default: ./results)"
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="data folder (default: $BENCH_DATA_ROOT, then ./data)",
    )


def _spec(args: argparse.Namespace) -> SweepSpec:
    return SweepSpec(
        methods=args.methods,
        datasets=args.datasets,
        fractions=args.fractions,
        seeds=args.seeds,
        preset=args.preset,
        overrides=tuple(args.overrides),
    )


def _profile(args: argparse.Namespace) -> Profile | None:
    overrides = parse_cluster_overrides(args.slurm)
    if args.cluster is None and not overrides:
        return None
    return load_profile(args.cluster, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    spec = _spec(args)
    check_metrics(args.metric)  # the table's options, before any compute
    check_baseline(args.baseline, check_spec(spec).methods)
    if args.executor != "slurm" and (args.cluster or args.slurm):
        log.info(
            "--cluster/--slurm settings: %s executor uses timeout_min, etc. only", args.executor
        )
    if args.executor == "slurm" and not args.wait:
        jobs, report = submit_sweep(spec, args.results, args.data_root, _profile(args))
        print(f"{len(jobs)} jobs: {report.summary()}")
        for job_id, why in report.held_back.items():
            print(f"HELD    {job_id}: {why}")
        print(f"follow them with: python -m bench status --results {args.results}")
        return 0
    result = run_sweep(spec, args.results, args.data_root, args.executor, _profile(args))
    print()
    print(comparison_table(result.finetune_records(), args.metric, args.baseline))
    failed, skipped = result.by_status("failed"), result.by_status("skipped")
    elapsed = time.perf_counter() - start
    print(f"\n{len(result.jobs)} jobs in {elapsed:.1f}s; results in {args.results}")
    for record in failed:
        print(f"FAILED  {record['job_id']}: {record['error']}")
    for record in skipped:
        print(f"SKIPPED {record['job_id']}: {record['error']}")
    return 0 if result.ok else FAILED_JOBS


def cmd_plan(args: argparse.Namespace) -> int:
    jobs = plan(_spec(args))
    states = job_states(jobs, args.results)
    rows = []
    for job in jobs:
        after = ",".join(job.depends_on) or "-"
        rows.append(f"{states[job.job_id]:<8} {job.kind:<9} {job.job_id:<58} after {after}")
    print("\n".join(rows))
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    print(f"\n{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for problem in data_problems(jobs, args.data_root):
        print(f"note (`run` refuses this sweep until it is fixed): {problem}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        kind = "pretraining" if cls.pretrains else "baseline"
        print(f"  {name:<12} {kind:<12} {cls.summary}")
    print("datasets:")
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        names = cls.class_names if isinstance(cls.class_names, tuple) else None
        classes = f"{len(names)} classes: {', '.join(names)}" if names else "classes from its file"
        print(f"  {name:<12} {cls.summary or cls.__doc__.splitlines()[0]}; {classes}")
    print("presets:")
    for preset in PRESETS.values():
        print(f"  {preset.name:<12} {preset.description}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    cls = DATASETS.get(args.dataset)
    check_seeds(args.seeds)
    check_fractions(args.fractions)
    given = {"patch_size": args.patch_size, "stride": args.stride, "name": args.name}
    given = {k: v for k, v in given.items() if v is not None}
    user = parse_overrides(args.overrides)
    for section in user:
        if section != args.dataset:
            raise ConfigError(f"prepare {args.dataset} takes only --set {args.dataset}.KEY=VALUE")
    params = build_section(cls.Params, args.dataset, given, user.get(args.dataset))
    data_root = args.data_root if args.data_root is not None else default_data_root()
    dataset = cls(params, DataConfig(), data_root)
    if not isinstance(dataset, PreparedDataset):
        for split in ("train", "test"):
            dataset.load_split(split)
        print(f"{args.dataset} is generated, not read from files; cached in {dataset.prepared_dir}")
        return 0
    if args.raw is None:
        raise ConfigError(
            f"prepare {args.dataset} needs --raw FOLDER; expected layout:\n{cls.layout}"
        )
    manifest = dataset.prepare(args.raw, args.seeds, args.fractions, force=args.force)
    print(class_count_table(manifest))
    print(f"\n{args.dataset} prepared in {dataset.prepared_dir}")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import PerfSettings, format_report, run_perf, write_report

    settings = PerfSettings(
        methods=args.methods or PerfSettings.methods,
        pretrain_steps=args.steps,
        finetune_steps=args.finetune_steps,
        repeats=args.repeats,
    )
    unknown = [m for m in settings.methods if m not in METHODS or not METHODS.get(m).pretrains]
    if unknown:
        raise ConfigError(f"perf measures pretraining methods; not one: {', '.join(unknown)}")
    report = run_perf(settings)
    print(format_report(report))
    write_report(report, args.output)
    print(f"\nreport written to {args.output}")
    return 0


def _check_results_folder(results: Path) -> None:
    if not results.is_dir():
        state = "is not a folder" if results.exists() else "does not exist"
        raise ConfigError(f"results folder {results} {state}")


def _results_records(results: Path) -> tuple[list[dict], list[UnreadableRecord]]:
    """The valid records of ``results``; each unreadable one is named on stderr (it is left
    out, and the command exits with INCOMPLETE)."""
    _check_results_folder(results)
    records, unreadable = RunStore(results).scan()
    for bad in unreadable:
        print(f"warning: left out {bad}", file=sys.stderr)
    return records, unreadable


def _table_format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return check_format(args.format)
    if args.output is None:
        return "md"
    suffix = args.output.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"cannot tell the table format from {args.output.name!r}; name the file "
            f"{' or '.join(SUFFIXES)}, or give --format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def cmd_table(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_output_file(args.output)
    fmt = _table_format(args)
    check_metrics(args.metric)
    if not args.per_class and (args.dataset is not None or args.fraction is not None):
        raise ConfigError("--dataset and --fraction choose the --per-class table; add it")
    records, unreadable = _results_records(args.results)
    if args.per_class:
        table = per_class_table(
            records, args.dataset, args.fraction, args.baseline, unreadable=len(unreadable)
        )
    else:
        table = build_table(records, args.metric, args.baseline, unreadable=len(unreadable))
    if table is None:
        print(NO_RESULTS)
        return INCOMPLETE if unreadable else 0
    text = render(table, fmt)
    if args.output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        atomic_write_bytes(args.output, (text.rstrip("\n") + "\n").encode())
        print(f"wrote {args.output}")
    return INCOMPLETE if unreadable else 0


def cmd_plot(args: argparse.Namespace) -> int:
    output_dir = args.output_dir or args.results / "plots"
    check_metrics(args.metric)
    _check_results_folder(args.results)
    check_output_dir(output_dir)
    records, unreadable = _results_records(args.results)
    for path in plot_fraction_curves(records, output_dir, args.metric, args.format):
        print(f"wrote {path}")
    if unreadable:
        print(f"{len(unreadable)} unreadable record(s) left out of the plots", file=sys.stderr)
    return INCOMPLETE if unreadable else 0


def cmd_status(args: argparse.Namespace) -> int:
    _check_results_folder(args.results)
    store = RunStore(args.results)
    job_ids = store.run_ids()
    status = job_status(store, job_ids)
    for job_id in job_ids:
        entry = status[job_id]
        line = f"{entry['state']:<8} {job_id:<58} {entry['scheduler_job_id'] or '-':<10}"
        if entry["detail"]:
            line += f" {entry['detail']}"
        print(line.rstrip())
    counts = {}
    for entry in status.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    print(f"\n{len(job_ids)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if args.rerun_failed:
        report, unknown = rerun_failed(args.results, _profile(args))
        print(f"resubmitted {len(report.submitted)} failed job(s) to SLURM")
        for line in unknown:
            print(f"NOT RESUBMITTED {line}")
        return 1 if unknown else 0
    return INCOMPLETE if counts.get("corrupt") else 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m bench",
        description="Benchmark self-supervised pretraining for remote-sensing segmentation.",
    )
    quiet_help = "only warnings and the table"
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    sub = parser.add_subparsers(dest="command", required=True)
    metric = {
        "type": _names,
        "default": ("miou", "kappa"),
        "help": "metrics in the table: miou, kappa, oa, mean_f1 (default: miou,kappa)",
    }
    baseline = {
        "default": AUTO,
        "help": "method the Δ columns and paired t-tests compare with, or none "
        "(default: random when it has records)",
    }

    run = sub.add_parser("run", help="plan and run a sweep, then print its table")
    _add_sweep_arguments(run)
    run.add_argument("--metric", **metric)
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="inline",
        help="inline: here, one job after another (default); slurm: submit to SLURM through "
        "submitit and return; local: parallel processes here; debug: submitit, in-process",
    )
    run.add_argument(
        "--wait", action="store_true", help="slurm: follow the jobs until done, then the table"
    )
    _add_cluster_arguments(run)
    run.add_argument("--baseline", **baseline)
    run.set_defaults(func=cmd_run)

    plan_parser = sub.add_parser("plan", help="print the planned jobs without running them")
    _add_sweep_arguments(plan_parser)
    plan_parser.set_defaults(func=cmd_plan)

    prepare = sub.add_parser(
        "prepare", help="read a downloaded dataset release once into patches for every run"
    )
    prepare.add_argument("dataset", help="dataset name (see `list`)")
    prepare.add_argument("--raw", type=Path, default=None, help="folder of the raw release")
    prepare.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where prepared data goes (default: $BENCH_DATA_ROOT, then ./data)",
    )
    prepare.add_argument("--patch-size", type=int, default=None, help="patch side (default 256)")
    prepare.add_argument(
        "--stride", type=int, default=None, help="patch grid step (default: the patch size)"
    )
    prepare.add_argument("--name", default=None, help="folder dataset: name of this dataset")
    prepare.add_argument(
        "--seeds",
        type=_ints,
        default=(0, 1, 2),
        help="seeds of the label-subset lists to write (default 0,1,2)",
    )
    prepare.add_argument(
        "--fractions",
        type=_floats,
        default=(0.01, 0.1),
        help="label fractions of the subset lists to write (default 0.01,0.1)",
    )
    prepare.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="DATASET.KEY=VALUE",
        help="a dataset setting, e.g. --set potsdam.labels=no_boundary",
    )
    prepare.add_argument("--force", action="store_true", help="discard and redo a prepared copy")
    prepare.set_defaults(func=cmd_prepare)

    perf = sub.add_parser(
        "perf", help="measure harness overhead and throughput (ratios in one process)"
    )
    perf.add_argument("--methods", type=_names, default=None, help="pretraining methods")
    perf.add_argument("--steps", type=_positive, default=6, help="pretraining steps per run")
    perf.add_argument(
        "--finetune-steps", type=_positive, default=20, help="fine-tuning steps per run"
    )
    perf.add_argument(
        "--repeats", type=_positive, default=2, help="runs per measurement (best kept)"
    )
    perf.add_argument("--output", type=Path, default=Path("perf.json"), help="JSON report")
    perf.set_defaults(func=cmd_perf)

    sub.add_parser("list", help="registered methods, datasets and presets").set_defaults(
        func=cmd_list
    )

    table = sub.add_parser("table", help="print or write the table of a results folder")
    table.add_argument("--results", type=Path, default=Path("results"))
    table.add_argument("--metric", **metric)
    table.add_argument(
        "--format",
        default=None,
        help=f"one of {', '.join(FORMATS)} (default: from --output's suffix, else md)",
    )
    table.add_argument("--output", type=Path, default=None, help="write to this file")
    table.add_argument("--baseline", **baseline)
    table.add_argument(
        "--per-class",
        action="store_true",
        help="per-class IoU of one --dataset at one --fraction (each optional when unique)",
    )
    table.add_argument("--dataset", default=None)
    table.add_argument("--fraction", type=float, default=None)
    table.set_defaults(func=cmd_table)

    plot = sub.add_parser("plot", help="figures: a metric vs the label fraction, per dataset")
    plot.add_argument("--results", type=Path, default=Path("results"))
    plot.add_argument("--output-dir", type=Path, default=None, help="default: <results>/plots")
    plot.add_argument(
        "--format",
        type=_names,
        default=PLOT_FORMATS,
        help=f"comma-separated: {', '.join(PLOT_FORMATS)} (default: both)",
    )
    plot.add_argument(
        "--metric", type=_names, default=("miou",), help="one figure per metric (default: miou)"
    )
    plot.set_defaults(func=cmd_plot)

    status = sub.add_parser(
        "status", help="state of every job in a results folder (planned, queued, running, ...)"
    )
    status.add_argument("--results", type=Path, default=Path("results"))
    status.add_argument(
        "--rerun-failed", action="store_true", help="submit the failed SLURM jobs again"
    )
    _add_cluster_arguments(status)
    status.set_defaults(func=cmd_status)
    for command in sub.choices.values():  # -q before or after the sub-command
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet_help
        )
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
        return args.func(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Preempted as stop:
        print(f"preempted: {stop}; rerun the same command to resume", file=sys.stderr)
        return STOPPED
