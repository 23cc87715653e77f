"""Job specs (frozen dataclasses with a stable id) and the one function that runs a job.

``execute(job, results_root, data_root)`` is the same call for the local executor and for a
cluster task: a job needs only its spec and the two paths.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import DataConfig, FinetuneConfig, PretrainConfig, full_dict, stable_hash
from bench.preemption import Preempted
from bench.store import RunStore, failed_record, storage_fault

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainJob:
    """Pretrain ``method`` on ``dataset``: one per (method, data, seed, hyperparameters)."""

    method: str
    method_params: Any
    dataset: str
    dataset_params: Any
    data: DataConfig
    pretrain: PretrainConfig
    seed: int
    preset: str = field(default="quick", metadata={"identity": False})
    # modules of the plugins that register the method and dataset (bench.plugins), which
    # execute imports first (in a worker process too); not part of the id
    plugins: tuple[str, ...] = field(default=(), metadata={"identity": False})
    # the experiment file that planned it, relative to the results folder (bench.experiment;
    # spec.json names it so a table leads back to the file that reruns it); not in the id
    experiment: str | None = field(default=None, metadata={"identity": False})

    kind = "pretrain"

    @property
    def job_id(self) -> str:
        return f"pretrain-{self.method}-{self.dataset}-s{self.seed}-{stable_hash(self)}"

    @property
    def depends_on(self) -> tuple[str, ...]:
        return ()

    def describe(self) -> str:
        return f"pretrain {self.method} on {self.dataset} seed {self.seed}"


@dataclass(frozen=True)
class FinetuneJob:
    """Fine-tune DeepLabV3+ from ``method``'s backbone on a ``fraction`` of the labels."""

    method: str
    method_params: Any
    pretrain_job: PretrainJob | None  # None for baselines without pretraining
    dataset: str
    dataset_params: Any
    data: DataConfig
    finetune: FinetuneConfig
    backbone: str
    fraction: float
    seed: int
    preset: str = field(default="quick", metadata={"identity": False})
    # as PretrainJob.plugins and PretrainJob.experiment
    plugins: tuple[str, ...] = field(default=(), metadata={"identity": False})
    experiment: str | None = field(default=None, metadata={"identity": False})

    kind = "finetune"

    @property
    def job_id(self) -> str:
        return (
            f"finetune-{self.method}-{self.dataset}-f{self.fraction:g}-s{self.seed}-"
            f"{stable_hash(self)}"
        )

    @property
    def depends_on(self) -> tuple[str, ...]:
        return (self.pretrain_job.job_id,) if self.pretrain_job is not None else ()

    def describe(self) -> str:
        return (
            f"finetune {self.method} on {self.dataset} fraction {self.fraction:g} seed {self.seed}"
        )


Job = PretrainJob | FinetuneJob


def pretrained_dir(job: Job, store: RunStore) -> Path | None:
    """The run folder holding the weights a fine-tuning starts from (None: a baseline)."""
    if isinstance(job, FinetuneJob) and job.pretrain_job is not None:
        return store.run_dir(job.pretrain_job.job_id)
    return None


def job_spec(job: Job) -> dict[str, Any]:
    """Everything about a job as JSON (spec.json); ``identity`` marks what the id hashes."""
    return {"job_id": job.job_id, "kind": job.kind, **full_dict(job)}


def execute(
    job: Job,
    results_root: Path | str,
    data_root: Path | str | None = None,
    processes: int = 1,
    device: Any = None,
) -> dict:
    """Run ``job`` unless its record says it is done; always return its record.

    An exception inside the job becomes a failed record (with the traceback) instead of
    propagating, so a sweep reports what failed and goes on. ``processes`` > 1 (a pretraining
    launched as one task per GPU) joins the job's process group first
    (:mod:`bench.distributed`); then rank 0 writes the files, and a process that fails alone
    writes the failed record itself, since the others may never get to it. ``device`` (a
    ``torch.device``) is where it trains; by default the GPU when there is one.

    A full, read-only or forbidden filesystem (:func:`bench.store.storage_fault`) fails the
    job with one line naming the path and the cause; the record then carries it as
    ``storage_fault``, and when even the record cannot be written, the attempt marker does
    (:meth:`RunStore.fail_attempt`), so ``status`` shows the job failed, not planned.
    """
    from bench import distributed
    from bench.states import JobState, record_status

    if processes > 1 and not isinstance(job, PretrainJob):
        raise ValueError(f"{job.job_id}: only pretraining runs on several processes")
    store = RunStore(results_root)
    status = record_status(store, job.job_id)
    if status.state is JobState.DONE:
        return status.record
    with distributed.process_group(processes) as place:
        try:
            if place.is_main:
                store.prepare_run(job, job_spec(job))
                store.begin_attempt(job.job_id)
            distributed.barrier()
            record = _run(job, store, data_root, device)
        except (KeyboardInterrupt, Preempted):
            if place.is_main:
                store.end_attempt(job.job_id)
            raise  # not a failure: the checkpoint is written, a rerun resumes
        except Exception as error:  # noqa: BLE001  (reported in the record)
            record = failed_record(job, error, traceback.format_exc())
            log.error("%s failed: %s", job.job_id, record.get("storage_fault") or record["error"])
            if not place.is_main:
                record["failed_process"] = place.rank
                return keep_record(store, job, record)
        if place.is_main:
            record = keep_record(store, job, record)
    return record


def _run(job: Job, store: RunStore, data_root: Path | str | None, device: Any) -> dict[str, Any]:
    """The job's work (its plugins imported first); returns its record."""
    from bench.plugins import load_plugins

    load_plugins(job.plugins, how="named by the job")
    run_dir = store.run_dir(job.job_id)
    if isinstance(job, PretrainJob):
        from bench.pretrain import run_pretraining

        return run_pretraining(job, run_dir, data_root, device=device)
    from bench.finetune import run_finetuning

    return run_finetuning(job, run_dir, data_root, pretrained_dir(job, store), device)


def keep_record(store: RunStore, job: Job, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` and end the job's attempt. When the filesystem refuses the record,
    the job has failed (even if its work succeeded): return a failed record naming the
    fault, written into the attempt marker if that still takes a write."""
    try:
        store.write_record(job.job_id, record)
    except OSError as error:
        fault = storage_fault(error)
        if fault is None:
            raise
        if record.get("storage_fault") is None:
            failed = failed_record(job, error, traceback.format_exc())
            ok = record["status"] == "ok"
            record = failed if ok else {**record, "storage_fault": failed["storage_fault"]}
            log.error("%s failed: %s", job.job_id, record["storage_fault"])
        store.fail_attempt(job.job_id, record["storage_fault"])
        return record
    store.end_attempt(job.job_id)
    return record
