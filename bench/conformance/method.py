"""``python -m bench check-method NAME``: a method's contracts with the harness, checked on
the tiny synthetic data on the CPU in about a minute.

- ``setup``: the method builds, and accepts the check's data (its own ``check_data``);
- ``step``: the first step of each checked epoch gives a finite loss and a finite, non-zero
  gradient in every backbone tensor;
- ``seeded``: the same seed gives the same first loss, another seed another one;
- ``frozen``: the parts in ``frozen_modules`` (EMA copies, targets) are not trainable and
  get no gradient; every other parameter is trainable and gets one;
- ``resume``: a run stopped mid-epoch and resumed writes the same backbone.pt (and
  decoder.pt), bit for bit, as an uninterrupted run (the real ``run_pretraining``);
- ``no-collapse``: the health pass of that uninterrupted run (:mod:`bench.health`, at each
  epoch's end) never finds the embeddings of its fixed batch collapsed (std below
  ``pretrain.collapse_std`` in units of 1/sqrt(d)); read from the run's log.jsonl, so it
  costs only the passes themselves;
- ``backbone-load``: backbone.pt loads strictly into smp's DeepLabV3+ encoder, and
  decoder.pt into its ASPP/decoder where ``transfers`` claims them (the fine-tuning's own
  loading);
- ``step-cost``: its step time relative to SimCLR's (``bench.perf``'s bare loop).

A baseline has only ``setup`` and ``backbone-load`` (its initial weights).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from bench.collapse import describe_std
from bench.config import ConfigError
from bench.conformance.contracts import (
    Contract,
    Shared,
    Unavailable,
    failed,
    one_cpu_thread,
    passed,
    run_gated,
    selected,
)
from bench.datasets import DATASETS, create_dataset
from bench.engine import StepOutcome
from bench.finetune import finetuning_model
from bench.jobs import FinetuneJob, PretrainJob
from bench.methods import METHODS, PretrainingMethod, StepContext
from bench.plugins import load_plugins
from bench.preemption import Preempted, StopAtStep
from bench.pretrain import (
    epoch_batches,
    method_step,
    phase_starts,
    prepare_pretraining,
    pretraining_model,
    run_pretraining,
)
from bench.store import BACKBONE, DECODER, read_log
from bench.sweep import SweepSpec, check_data, plan

CHECK_DATASET = "synthetic"  # at its check_settings: 16 images of 32 px
# Four steps of four images per epoch, two epochs, so that a resume crosses an epoch's end
# (methods fit their own settings to it with their check_settings).
CHECK_PRETRAIN = {"batch_size": 4, "view_size": 32, "epochs": 2, "log_every": 10**6}
CONTRACTS = (
    "setup",
    "step",
    "seeded",
    "frozen",
    "resume",
    "no-collapse",
    "backbone-load",
    "step-cost",
)
BASELINE_CONTRACTS = ("setup", "backbone-load")
CPU = torch.device("cpu")


def check_method(
    name: str,
    overrides: Iterable[str] = (),
    plugins: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> list[Contract]:
    """Every contract's outcome for method ``name`` (:func:`iter_check_method`)."""
    return list(iter_check_method(name, overrides, plugins, only))


def iter_check_method(
    name: str,
    overrides: Iterable[str] = (),
    plugins: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Iterator[Contract]:
    """Check method ``name`` (after importing ``plugins``) with the user's ``--set``
    ``overrides`` on top of the check's tiny settings; ``only``: a subset of the contracts
    (``setup`` always runs). Yields each contract's outcome as it completes; bad input (an
    unknown name, a bad setting) raises ConfigError before anything runs."""
    load_plugins(plugins)
    cls = METHODS.get(name)
    contracts = CONTRACTS if cls.pretrains else BASELINE_CONTRACTS
    names = selected(contracts, only)
    jobs = check_jobs(name, tuple(overrides), tuple(plugins))
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp, one_cpu_thread():
        check = MethodCheck(*jobs, folder=Path(tmp))
        yield from run_gated("setup", names, check, skip="needs the setup, which failed")


def tiny_overrides(method: str | None = None) -> tuple[str, ...]:
    """``--set`` items of the check's data and pretraining loop, and of ``method``'s
    ``few_batches_settings`` and ``check_settings``."""
    dataset = DATASETS.get(CHECK_DATASET)
    items = {f"{CHECK_DATASET}.{k}": v for k, v in dataset.check_settings.items()}
    items |= {f"pretrain.{k}": v for k, v in CHECK_PRETRAIN.items()}
    if method is not None:
        cls = METHODS.get(method)
        own = cls.few_batches_settings(CHECK_PRETRAIN["batch_size"]) | cls.check_settings
        items |= {f"{method}.{k}": v for k, v in own.items()}
    return tuple(f"{key}={_text(value)}" for key, value in items.items())


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def check_jobs(name: str, overrides: tuple, plugins: tuple):
    """The jobs of a one-seed sweep of method ``name`` on the check's data (its pretraining,
    None for a baseline, and a fine-tuning that loads all the method ``transfers``), and
    SimCLR's pretraining under the same loop settings (for the step cost)."""
    method_cls = METHODS.get(name)
    load = (f"finetune.load={method_cls.transfers}",) if method_cls.pretrains else ()
    spec = SweepSpec(
        methods=(name,),
        datasets=(CHECK_DATASET,),
        fractions=(1.0,),
        seeds=(0,),
        overrides=(*tiny_overrides(name), *load, *overrides),
        plugins=plugins,
    )
    jobs = plan(spec)
    pretrain = next((j for j in jobs if isinstance(j, PretrainJob)), None)
    finetune = next(j for j in jobs if isinstance(j, FinetuneJob))
    loop_only = tuple(o for o in overrides if not o.startswith("finetune."))
    reference = (*tiny_overrides("simclr"), *loop_only)
    simclr = plan(dataclasses.replace(spec, methods=("simclr",), overrides=reference))[0]
    if pretrain is not None:
        simclr = dataclasses.replace(simclr, pretrain=pretrain.pretrain)
    return pretrain, finetune, simclr


@dataclasses.dataclass
class MethodCheck:
    """The checked method's planned jobs (``job`` is None for a baseline), SimCLR's job
    under the same pretraining settings, the check's folder, and what contracts share."""

    job: PretrainJob | None
    finetune_job: FinetuneJob
    simclr_job: PretrainJob
    folder: Path
    shared: Shared = dataclasses.field(default_factory=Shared)

    @property
    def data_root(self) -> Path:
        return self.folder / "data"

    @property
    def steps_per_epoch(self) -> int:
        return self.job.dataset_params.n_train // self.job.pretrain.batch_size

    # ------------------------------------------------------------------ shared results
    def stepped(self) -> list[tuple[int, PretrainingMethod, StepOutcome]]:
        """A fresh model after the first step of epoch 0, of each later phase and of the
        last epoch: (epoch, model, outcome)."""

        def compute():
            phases = first_model(self.job, self.data_root).phase_epochs()
            epochs = sorted({0, *phase_starts(phases), self.job.pretrain.epochs - 1})
            return [(e, *one_step(self.job, self.data_root, e)) for e in epochs]

        return self.shared.get("a first training step", compute)

    def reference_run(self) -> Path:
        """The run folder of an uninterrupted pretraining of the job."""

        def compute() -> Path:
            folder = self.folder / "uninterrupted"
            folder.mkdir()
            run_pretraining(self.job, folder, self.data_root, device=CPU)
            return folder

        return self.shared.get("an uninterrupted pretraining run", compute)

    # ------------------------------------------------------------------ the contracts
    def setup(self) -> Contract:
        jobs = [j for j in (self.job, self.finetune_job) if j is not None]
        try:
            check_data(jobs, self.data_root)
        except ConfigError as error:
            return failed(
                "setup",
                f"{error} (the check's data: {tiny_data(jobs[0])}; its "
                "settings can be changed with --set)",
            )
        if self.job is None:
            return passed("setup", f"a baseline; checked on {tiny_data(self.finetune_job)}")
        model = first_model(self.job, self.data_root)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return passed(
            "setup",
            f"builds with {total:,} parameters ({trainable:,} trainable) for "
            f"{tiny_data(self.job)}, {self.job.pretrain.backbone}",
        )

    def step(self) -> Contract:
        results = self.stepped()
        for epoch, model, _ in results:
            problem = backbone_gradient_problem(model)
            if problem:
                return failed("step", f"first step of epoch {epoch + 1}: {problem}")
        losses = ", ".join(f"{outcome.loss:.4g}" for _, _, outcome in results)
        tensors = sum(1 for _ in results[0][1].backbone.parameters())
        epochs = ", ".join(str(epoch + 1) for epoch, _, _ in results)
        return passed(
            "step",
            f"finite loss ({losses}) and a gradient in all {tensors} backbone tensors at "
            f"the first step of epoch {epochs}",
        )

    def seeded(self) -> Contract:
        job, first = self.job, self.stepped()[0][2].loss
        again = one_step(job, self.data_root)[1].loss
        if again != first:
            return failed(
                "seeded",
                f"seed {job.seed} gave two different first losses ({first!r}, {again!r}): "
                "draw every random number from torch's global generator, which the harness "
                "seeds per run and epoch and checkpoints (not from numpy, random, the clock "
                "or a generator of your own)",
            )
        other = one_step(dataclasses.replace(job, seed=job.seed + 1), self.data_root)[1].loss
        if other == first:
            return failed(
                "seeded",
                f"seeds {job.seed} and {job.seed + 1} gave the same first loss ({first!r}): "
                "the method ignores the run's seed (do not reseed torch inside the method)",
            )
        return passed(
            "seeded",
            f"seed {job.seed} gives the same first loss twice ({first:.6g}), seed "
            f"{job.seed + 1} another ({other:.6g})",
        )

    def frozen(self) -> Contract:
        models = [model for _, model, _ in self.stepped()]
        problems = frozen_problems(models)
        if problems:
            return failed("frozen", "; ".join(problems))
        declared = type(models[0]).frozen_modules
        trainable = sum(1 for p in models[0].parameters() if p.requires_grad)
        if not declared:
            what = f"no frozen parts declared; all {trainable} parameter tensors"
        else:
            what = f"{', '.join(declared)}: not trainable, no gradient; all {trainable} other"
        return passed("frozen", f"{what} are trainable and get a gradient")

    def resume(self) -> Contract:
        reference, job = self.reference_run(), self.job
        stop_at = mid_epoch_step(self.steps_per_epoch, job.pretrain.epochs)
        folder = self.folder / "resumed"
        folder.mkdir()
        try:
            run_pretraining(job, folder, self.data_root, StopAtStep(stop_at), device=CPU)
        except Preempted:
            pass
        else:
            return failed("resume", f"the run did not stop at step {stop_at}; nothing checked")
        record = run_pretraining(job, folder, self.data_root, device=CPU)
        where = f"epoch {record['resumed_from_epoch'] + 1}, batch {record['resumed_from_batch']}"
        files, differ = weight_differences(reference, folder)
        if differ:
            return failed(
                "resume",
                f"stopped at step {stop_at} ({where}) and resumed, {len(differ)} saved tensors "
                f"differ from an uninterrupted run (e.g. {differ[0]}): keep all training state "
                "in parameters or registered buffers (the checkpoint saves them), draw random "
                "numbers from torch's global generator only, and take schedules from the "
                "StepContext, not from counters of your own",
            )
        return passed(
            "resume",
            f"stopped at step {stop_at} ({where}) and resumed: {' and '.join(files)} "
            "bit-identical to an uninterrupted run",
        )

    def no_collapse(self) -> Contract:
        passes = [e for e in read_log(self.reference_run()) if e.get("kind") == "health"]
        if not passes:
            raise Unavailable("the run made no health pass (pretrain.health_images=0)")
        threshold, images = (
            self.job.pretrain.collapse_std,
            min(self.job.pretrain.health_images, self.job.dataset_params.n_train),
        )
        bad = next((p for p in passes if p.get("collapsed")), None)
        if bad is not None:
            return failed(
                "no-collapse",
                f"after {bad['step']} steps (epoch {bad['epoch']}) the embeddings of a fixed "
                f"batch of {images} images collapsed: {describe_std(bad)} < "
                f"pretrain.collapse_std={threshold:g}, effective rank "
                f"{bad.get('effective_rank', float('nan')):.2f}: the loss must keep different "
                "images apart (negatives, a predictor with a stop-gradient, a variance term), "
                "and embed() must return the backbone's pooled features",
            )
        last = passes[-1]
        return passed(
            "no-collapse",
            f"a fixed batch of {images} images after each of {len(passes)} epochs "
            f"({last['step']} steps): {describe_std(last)} at the end (collapse: < "
            f"{threshold:g}), effective rank {last['effective_rank']:.1f}",
        )

    def backbone_load(self) -> Contract:
        job = self.finetune_job
        pretrained = self.reference_run() if self.job is not None else None
        dataset = create_dataset(job.dataset, job.dataset_params, job.data, self.data_root)
        try:
            _, source, loaded = finetuning_model(job, dataset, pretrained, CPU)
        except (ValueError, FileNotFoundError) as error:
            return failed("backbone-load", f"{error}; {load_fix(str(error))}")
        if self.job is None:
            return passed("backbone-load", f"fine-tuning starts from {source}: loads")
        parts = {"backbone": "", "backbone+aspp": ", decoder.pt into its ASPP"}
        return passed(
            "backbone-load",
            "backbone.pt loads strictly into smp's DeepLabV3+ encoder"
            + parts.get(loaded, ", decoder.pt into its decoder")
            + f" (transfers = {METHODS.get(job.method).transfers!r})",
        )

    def step_cost(self) -> Contract:
        from bench.perf import bare_pretraining

        if self.job.method == "simclr":
            return passed("step-cost", "1.00x SimCLR's step time: this is SimCLR")
        rates = {"method": 0.0, "simclr": 0.0}
        for _ in range(2):  # the best of two epochs each, interleaved
            for key, job in (("method", self.job), ("simclr", self.simclr_job)):
                rates[key] = max(rates[key], bare_pretraining(job, self.data_root)[0])
        return passed(
            "step-cost",
            f"{rates['simclr'] / rates['method']:.2f}x SimCLR's step time ({tiny_data(self.job)}"
            f", {self.job.pretrain.backbone}, one CPU thread; best of 2 epochs each)",
        )


# ---------------------------------------------------------------------------- pieces
def tiny_data(job) -> str:
    params = job.dataset_params
    text = f"{params.n_train} images of {params.patch_size} px"
    if isinstance(job, PretrainJob):
        text += f", batch {job.pretrain.batch_size}, views of {job.pretrain.view_size} px"
    return text


def first_model(job: PretrainJob, data_root: Path) -> PretrainingMethod:
    """``job``'s model as the pretraining loop builds it (seeded, on the CPU)."""
    dataset = create_dataset(job.dataset, job.dataset_params, job.data, data_root)
    return pretraining_model(job, dataset, CPU, 1, dataset.train_size())


def one_step(
    job: PretrainJob, data_root: Path, epoch: int = 0
) -> tuple[PretrainingMethod, StepOutcome]:
    """A fresh model of ``job`` after one optimisation step, the first of ``epoch``, built
    and stepped as ``run_pretraining`` does (its gradients are still there)."""
    setup = prepare_pretraining(job, data_root, CPU)
    method, trainer = setup.method, setup.trainer
    method.train()
    batches = epoch_batches(setup.train, job.pretrain, job.seed, epoch, CPU, trainer.place)
    images, _ = next(iter(batches))
    step = epoch * setup.steps_per_epoch
    ctx = StepContext(step=step, total_steps=len(trainer.schedule), epoch=epoch)
    return method, method_step(trainer, method, images, ctx)


def backbone_gradient_problem(model: PretrainingMethod) -> str | None:
    """What is wrong with the backbone's gradients after a step, or None."""
    params = list(model.backbone.named_parameters())
    frozen = [n for n, p in params if not p.requires_grad]
    if frozen:
        return f"{len(frozen)} backbone tensors are frozen (e.g. backbone.{frozen[0]})"
    missing = [n for n, p in params if p.grad is None]
    if missing:
        return (
            f"{len(missing)} of {len(params)} backbone tensors get no gradient (e.g. "
            f"backbone.{missing[0]}): the loss must depend on the backbone's features, "
            "not on detached copies of them"
        )
    bad = [n for n, p in params if not bool(torch.isfinite(p.grad).all())]
    if bad:
        return f"non-finite gradient in backbone.{bad[0]}: check the loss for divisions by 0"
    if all(float(p.grad.abs().sum()) == 0 for _, p in params):
        return "every backbone gradient is zero: the loss does not depend on the backbone"
    return None


def frozen_problems(models: list[PretrainingMethod]) -> list[str]:
    """What breaks the ``frozen_modules`` declaration in stepped ``models`` (one per
    checked epoch): declared parts that are trainable or got a gradient, undeclared frozen
    parameters, trainable ones that got no gradient in any checked step."""
    model, declared = models[0], type(models[0]).frozen_modules
    problems, frozen = [], set()
    for part in declared:
        try:
            named = list(model.get_submodule(part).named_parameters(prefix=part))
        except AttributeError:
            problems.append(f"frozen_modules names {part!r}, which is not a sub-module")
            continue
        frozen |= {n for n, _ in named}
        trainable = [n for n, p in named if p.requires_grad]
        if trainable:
            problems.append(
                f"{part} is declared frozen but {len(trainable)} of its tensors are trainable "
                f"(e.g. {trainable[0]}): call {part}.requires_grad_(False) "
                "(bench.methods.ema.frozen_copy does)"
            )
        with_grad = [n for n, p in named if p.grad is not None]
        if with_grad:
            problems.append(
                f"{with_grad[0]} (declared frozen) got a gradient: use it under torch.no_grad()"
            )
    if any(part == "backbone" or part.startswith("backbone.") for part in declared):
        problems.append("frozen_modules names the backbone, which must train")
    others = [(n, p) for n, p in model.named_parameters() if n not in frozen]
    undeclared = [n for n, p in others if not p.requires_grad]
    if undeclared:
        problems.append(
            f"{len(undeclared)} tensors are frozen but not declared (e.g. "
            f"{undeclared[0]}): name their module in frozen_modules"
        )
    with_gradient = {n for m in models for n, p in m.named_parameters() if p.grad is not None}
    dead = [n for n, p in others if p.requires_grad and n not in with_gradient]
    if dead:
        problems.append(
            f"{len(dead)} trainable tensors get no gradient (e.g. {dead[0]}): use them in the "
            "loss, or freeze them and name their module in frozen_modules"
        )
    return problems


def mid_epoch_step(steps_per_epoch: int, epochs: int) -> int:
    """A step (1-based) in the middle of the last epoch: a stop there checkpoints mid-epoch
    after at least one epoch's end."""
    return steps_per_epoch * (epochs - 1) + max(1, steps_per_epoch // 2)


def weight_differences(reference: Path, other: Path) -> tuple[list[str], list[str]]:
    """The weight files of ``reference`` and the tensors of ``other``'s that differ from
    them (missing or extra keys included), bit for bit."""
    files, differ = [], []
    for name in (BACKBONE, DECODER):
        if not (reference / name).exists():
            continue
        files.append(name)
        if not (other / name).exists():
            differ.append(f"{name} is missing")
            continue
        mine = torch.load(reference / name, map_location="cpu", weights_only=True)
        theirs = torch.load(other / name, map_location="cpu", weights_only=True)
        for key in sorted(set(mine) | set(theirs)):
            if key not in mine or key not in theirs or not torch.equal(mine[key], theirs[key]):
                differ.append(f"{name}:{key}")
    return files, differ


def load_fix(error: str) -> str:
    """What to change when the fine-tuning's strict load refused a method's weights."""
    if "decoder" in error or "ASPP" in error:
        return (
            "decoder_state_dict() must return smp's DeepLabV3PlusDecoder weights (aspp.*, "
            "block1.*, block2.*) of the head that head() describes, or set transfers = "
            "'backbone'"
        )
    return (
        "backbone_state_dict() must return smp's ResNet encoder weights under its own keys "
        "(conv1.weight, bn1.*, layer1.0.conv1.weight, ...: no prefix, nothing added) for "
        "the in_channels it was built with"
    )
