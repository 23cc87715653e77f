"""The first-GPU-hour command (issue 33): one run, under 8 minutes on one CUDA GPU, that
measures what the CPU could not and runs every CUDA-only path of the harness once.

    python benchmarks/gpu_check.py [--output DIR] [--dry-run] [--sections a,b]
                                   [--budget-s 480] [--methods simclr,moco]

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--output`` (default ``gpu_check/``),
both rewritten after every measurement, so a run killed at any moment keeps what it
measured. Sections (names for ``--sections``; all by default):

1. ``pretraining``: each registered pretraining method's step at the ``common`` and
   ``paper`` presets' real sizes (ResNet-50, their batch and view sizes, synthetic patches):
   images/s and peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each
   measurement) of the bare loop (``bench.perf``'s: ``prepare_pretraining`` and the
   engine's step, nothing around it) and of the real job (``bench.jobs.execute``: data,
   schedule, logging, health pass, record), over the matrix stated in the Markdown;
2. ``finetuning``: the same for the ``glcnet`` protocol's DeepLabV3+ (patches/s);
3. ``sliding_window``: ``bench.evaluation.evaluate_tiles`` on one 6000 x 6000 tile with the
   protocol's window, stride and batch: seconds and peak memory;
4. ``cuda_paths``: a short real run of each CUDA-only path, pass/fail with the error text:
   GradScaler with fp16, SyncBatchNorm in a one-process NCCL world, a two-process
   data-parallel step (NCCL on two GPUs, else gloo on one, said so), NCCL all-reduce with
   two processes (``skipped: 1 GPU`` on one), a checkpoint written on the GPU and resumed
   bit-exactly (``bench.pretrain.run_pretraining`` stopped mid-epoch, resumed, compared
   with an uninterrupted run);
5. ``roofline``: the GPU, torch, CUDA and cuDNN versions, and for each harness figure the
   bare loop's rate as its upper bound (harness / bare).

Images/s of a loop is ``steps x batch / seconds``: "all steps" times the whole epoch as
the job does (warm-up included), "after warm-up" only the steps after the first
``warmup`` (3 on the GPU), between two ``torch.cuda.synchronize()``. Each measurement and
section records its wall seconds; a measurement that would end past ``--budget-s`` is not
started ("skipped: budget").

Without a CUDA device the command stops at once (exit 1, ``no CUDA device: nothing to
check``) unless ``--dry-run``, which runs every section on the CPU at tiny sizes (ResNet-18,
batch 4, 32 px views, a 256 px tile, 1 + 1 steps): the same code, only the device and the
sizes differ. Exit status: 0, or 1 when a measurement or check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

NO_CUDA = "no CUDA device: nothing to check"
# Numbered as in the module docstring; run in RUN_ORDER: the short pass/fail checks first,
# the long pretraining matrix last (it takes what is left of the budget).
SECTIONS = ("pretraining", "finetuning", "sliding_window", "cuda_paths", "roofline")
RUN_ORDER = ("cuda_paths", "sliding_window", "finetuning", "pretraining", "roofline")
TITLES = {
    "pretraining": "1. Pretraining step per method",
    "finetuning": "2. Fine-tuning (glcnet protocol)",
    "sliding_window": "3. Sliding-window evaluation of one tile",
    "cuda_paths": "4. CUDA-only paths",
    "roofline": "5. Roofline: harness vs bare loop",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU, tiny")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--methods", default=None, help="pretraining methods (default: all)")
    args = parser.parse_args(argv)
    chosen = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    args.sections = chosen
    return args


# ----------------------------------------------------------------------------------------
# The time budget
# ----------------------------------------------------------------------------------------
class Budget:
    """Wall seconds since the start against ``seconds``. A measurement is expected to take
    as long as the last one of its kind did (before the first of a kind: ``defaults``, e.g.
    a compile's minutes, else as long as the last measurement of any kind), and is not
    started when it would end past the budget."""

    def __init__(self, seconds: float, defaults: dict[str, float] | None = None) -> None:
        self.seconds, self.started = seconds, time.perf_counter()
        self.seen: dict[str, float] = dict(defaults or {})
        self.last = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def estimate(self, kind: str) -> float:
        return self.seen.get(kind, self.last)

    def allows(self, estimate: float) -> bool:
        return self.elapsed() + estimate <= self.seconds

    def observe(self, kind: str, seconds: float) -> None:
        self.seen[kind] = self.last = seconds


# ----------------------------------------------------------------------------------------
# The report: JSON and Markdown, rewritten after every row
# ----------------------------------------------------------------------------------------
def section_status(rows: list[dict[str, Any]]) -> tuple[str, str | None]:
    """``failed`` if a row failed, ``passed`` if one passed (the rest skipped, each with its
    reason), else ``skipped`` with the rows' reasons."""
    if any(r["status"] == "failed" for r in rows):
        return "failed", None
    if any(r["status"] == "passed" for r in rows):
        return "passed", None
    reasons = sorted({r.get("reason") or "" for r in rows} - {""})
    return "skipped", "; ".join(reasons) or "nothing to measure"


class Report:
    """``gpu_check.json`` and ``gpu_check.md`` in ``folder``, written atomically."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder, self.data = folder, {**meta, "sections": {}}
        for name in SECTIONS:
            self.data["sections"][name] = {"title": TITLES[name], "status": "pending", "rows": []}
        self._started: dict[str, float] = {}

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"][name]

    def begin(self, name: str, **fields: Any) -> None:
        self._started[name] = time.perf_counter()
        self.section(name).update(status="running", **fields)
        self.write()

    def add(self, name: str, row: dict[str, Any]) -> None:
        self.section(name)["rows"].append(row)
        self.write()

    def end(self, name: str, error: str | None = None) -> None:
        section = self.section(name)
        status, reason = ("failed", None) if error else section_status(section["rows"])
        section.update(status=status, wall_s=round(time.perf_counter() - self._started[name], 2))
        if reason:
            section["reason"] = reason
        if error:
            section["error"] = error
        self.write()

    def skip(self, name: str, reason: str) -> None:
        self.section(name).update(status="skipped", reason=reason, wall_s=0.0)
        self.write()

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data["wall_s"] = round(time.perf_counter() - self.data["_t0"], 2)
        public = {k: v for k, v in self.data.items() if not k.startswith("_")}
        _atomic_write(self.folder / "gpu_check.json", json.dumps(public, indent=2) + "\n")
        _atomic_write(self.folder / "gpu_check.md", markdown(public))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------
COLUMNS = {  # section -> (heading, key) of its table; a missing value is left blank
    "pretraining": [
        ("method", "method"),
        ("preset", "preset"),
        ("precision", "precision"),
        ("channels_last", "channels_last"),
        ("compile", "compile"),
        ("loop", "loop"),
        ("status", "status"),
        ("images/s, all steps", "images_per_s"),
        ("images/s, after warm-up", "steady_images_per_s"),
        ("peak MiB", "peak_memory_mib"),
        ("checkpoint s", "checkpoint_s"),
        ("checkpoint MB", "checkpoint_mb"),
        ("warm-up s", "warmup_s"),
        ("wall s", "wall_s"),
        ("note", "note"),
    ],
    "finetuning": [
        ("precision", "precision"),
        ("loop", "loop"),
        ("status", "status"),
        ("patches/s, all steps", "images_per_s"),
        ("patches/s, after warm-up", "steady_images_per_s"),
        ("peak MiB", "peak_memory_mib"),
        ("checkpoint s", "checkpoint_s"),
        ("checkpoint MB", "checkpoint_mb"),
        ("wall s", "wall_s"),
        ("note", "note"),
    ],
    "sliding_window": [
        ("precision", "precision"),
        ("status", "status"),
        ("tile", "tile"),
        ("windows", "windows"),
        ("seconds", "seconds"),
        ("windows/s", "windows_per_s"),
        ("peak MiB", "peak_memory_mib"),
        ("wall s", "wall_s"),
        ("note", "note"),
    ],
    "cuda_paths": [
        ("check", "name"),
        ("status", "status"),
        ("wall s", "wall_s"),
        ("what it showed", "note"),
    ],
    "roofline": [
        ("measure", "name"),
        ("harness", "harness"),
        ("bare, same steps", "bare"),
        ("harness / bare", "ratio_same_steps"),
        ("bare after warm-up (bound)", "bound"),
        ("harness / bound", "ratio_to_bound"),
    ],
}


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "note" and row.get("status") in ("failed", "skipped"):
        value = row.get("error") or row.get("reason") or value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    lines = [
        "# GPU check"
        + (" (dry run on the CPU: tiny sizes, no GPU figures)" if report["dry_run"] else ""),
        "",
        f"`{report['command']}` - started {report['started']}, {report['wall_s']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
    ]
    for name in SECTIONS:
        section = report["sections"][name]
        lines += ["", f"## {section['title']}", "", f"Status: **{section['status']}**"]
        for key in ("reason", "error"):
            if section.get(key):
                lines[-1] += f" ({section[key]})"
        if section.get("wall_s") is not None:
            lines[-1] += f", {section['wall_s']:.1f} s."
        for key in ("what", "matrix"):
            if section.get(key):
                lines += ["", section[key]]
        if section.get("environment"):
            lines += ["", "On: " + ", ".join(f"{k} {v}" for k, v in section["environment"].items())]
        if section["rows"]:
            heads = COLUMNS[name]
            lines += ["", "| " + " | ".join(h for h, _ in heads) + " |"]
            lines.append("|" + "---|" * len(heads))
            for row in section["rows"]:
                lines.append("| " + " | ".join(cell(row, k) for _, k in heads) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# Section 5: the roofline (no measurement of its own)
# ----------------------------------------------------------------------------------------
def roofline_rows(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Each harness figure beside the bare loop of the same case: the same steps (what
    the harness adds around the step) and after warm-up (the bound the harness can reach)."""
    rows = []
    for name in ("pretraining", "finetuning"):
        measured = [r for r in sections[name]["rows"] if r["status"] == "passed"]
        for harness in (r for r in measured if r.get("loop") == "harness"):
            bare = next(
                (r for r in measured if r.get("loop") == "bare" and r["case"] == harness["case"]),
                None,
            )
            if bare is None:
                continue
            h, b, bound = harness["images_per_s"], bare["images_per_s"], bare["steady_images_per_s"]
            rows.append(
                {
                    "name": f"{name} {harness['case']}",
                    "status": "passed",
                    "harness": h,
                    "bare": b,
                    "ratio_same_steps": h / b,
                    "bound": bound,
                    "ratio_to_bound": h / bound,
                }
            )
    return rows


def roofline(report: Report) -> None:
    report.begin(
        "roofline",
        environment=report.data["environment"],
        what=(
            "The bare loop (the engine's step alone) after warm-up is the upper bound of each "
            "harness figure; harness / bare at the same steps is what the harness costs."
        ),
    )
    rows = roofline_rows(report.data["sections"])
    for row in rows:
        report.add("roofline", row)
    if rows:
        report.end("roofline")
    else:
        report.skip("roofline", "no harness figure with its bare loop was measured")


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def environment(torch) -> dict[str, Any]:
    """The machine: GPU, versions and the numeric settings that move the figures."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpus=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return info


def run_sections(args, report: Report, budget: Budget, step: Callable) -> None:
    """Each chosen section in RUN_ORDER; a section that raises is recorded as failed and
    the next one runs."""
    for name in RUN_ORDER:
        if name not in args.sections:
            report.skip(name, f"not selected (--sections {','.join(args.sections)})")
            continue
        if name == "roofline":
            roofline(report)
            continue
        if not budget.allows(0.0):
            report.skip(name, "skipped: budget")
            continue
        print(f"gpu_check: {name} ({budget.elapsed():.0f} s so far)", file=sys.stderr)
        try:
            step(name)
        except Exception as error:  # noqa: BLE001  (the script goes on to the next section)
            report.end(name, error=f"{type(error).__name__}: {error}")
        else:
            report.end(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    import gpu_check_sections as parts  # the harness; imported only once there is work

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    try:
        parts.check_methods(methods)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    sizes = parts.dry_sizes() if args.dry_run else parts.real_sizes()
    budget = Budget(args.budget_s, parts.estimates(sizes))
    meta = {
        "_t0": budget.started,
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(torch),
        "sizes": parts.describe(sizes),
    }
    report = Report(args.output, meta)
    report.write()
    with parts.Session(sizes, budget, report, methods) as session:
        run_sections(args, report, budget, session.run)
    report.write()
    failed = [n for n, s in report.data["sections"].items() if s["status"] == "failed"]
    print(
        f"gpu_check: wrote {args.output}/gpu_check.json and gpu_check.md in "
        f"{budget.elapsed():.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    # this checkout's harness, whatever else is installed (children inherit the path)
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent), str(here)]
    sys.exit(main())
