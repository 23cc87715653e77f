"""Live training curves: TensorBoard event files in every run folder, and Weights & Biases or
MLflow when the user enables them.

Researchers follow long sweeps in TensorBoard (``tensorboard --logdir results`` shows one run
per job id) or W&B / MLflow. The loops of :mod:`bench.pretrain` and :mod:`bench.finetune`
hand their scalars to a :class:`Tracker` at the points where they already log (each step,
each epoch, the final evaluation): numbers that are Python floats by then, so tracking adds
no device synchronisation. Only rank 0 tracks (:func:`bench.distributed.topology`).

- ``<run folder>/tb/``: TensorBoard event files, written by ``torch.utils.tensorboard``; on
  by default (``pretrain.tensorboard``, ``finetune.tensorboard``). A resumed run writes a new
  event file into the same folder that starts with a purge marker at its first step, so
  steps logged after the last checkpoint by the interrupted run are dropped by readers and
  every step is read once.
- ``<run folder>/wandb/``: a W&B run, ``mode="offline"`` unless ``WANDB_MODE`` says
  otherwise (``pretrain.wandb``, ``finetune.wandb``, or ``run --wandb``); off by default.
- ``<results>/mlruns/``: MLflow's file store, one experiment per results folder, one run per
  job, unless ``MLFLOW_TRACKING_URI`` names another (``pretrain.mlflow``, ``finetune.mlflow``,
  or ``run --mlflow``); off by default.

Nothing is sent anywhere by default. Tags: ``train/loss``, ``train/lr`` and each method scalar
(``train/fnsd_pairs``, ``train/gs_crop_area``) per step; ``epoch/loss``, ``epoch/lr``,
``epoch/seconds`` and the epoch means of the method scalars at each epoch's last step, with
the health pass's ``health/embedding_std``, ``health/effective_rank``, ``health/alignment``,
``health/uniformity``, ``health/knn_accuracy``, ``health/collapsed`` (1 or 0) ... there
(:mod:`bench.health`);
``test/miou``, ``test/kappa``, ``test/oa``, ``test/mean_f1``, ``test/image_miou`` and
``test_iou/<class>`` at a fine-tuning's last step. Steps count from 1, as in log.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import distributed
from bench.config import ConfigError
from bench.store import read_spec

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tb"  # in the run folder
WANDB_DIR = "wandb"  # made by wandb in the run folder
MLFLOW_DIR = "mlruns"  # in the results folder
PROJECT = "rs-sscl-bench"  # W&B project and MLflow experiment unless the environment names one

# setting -> the package it needs
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def enabled_loggers(cfg: Any) -> tuple[str, ...]:
    """The loggers a ``pretrain`` or ``finetune`` section turns on."""
    return tuple(name for name in LOGGER_PACKAGES if getattr(cfg, name, False))


def check_logger_packages(section: str, cfg: Any) -> None:
    """Before any work: each enabled logger's package is installed (ConfigError if not)."""
    for name in enabled_loggers(cfg):
        package = LOGGER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{section}.{name}=true needs the {package} package, which is not installed: "
                f"pip install {package}, or set {section}.{name}=false"
            )


class Tracker:
    """Scalars to every enabled logger; a no-op with none (and on ranks other than 0)."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.scalars(values, step)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        """Flush and close every logger (also after a failure or a stop signal)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as error:  # noqa: BLE001  (a logger never fails the run)
                log.warning("closing %s failed: %s", type(sink).__name__, error)
        self.sinks = []


def open_tracker(run_dir: Path, job: Any, cfg: Any, first_step: int = 1) -> Tracker:
    """The tracker of ``job``'s run folder for a ``pretrain``/``finetune`` section ``cfg``;
    ``first_step`` is the first step this process will log (after a resume: the step after
    the checkpoint), where TensorBoard readers drop what an interrupted run logged later."""
    if not distributed.topology().is_main:
        return Tracker([])
    sinks: list[Any] = []
    names = enabled_loggers(cfg)
    if "tensorboard" in names:
        sinks.append(TensorBoardSink(Path(run_dir) / TENSORBOARD_DIR, first_step))
    if "wandb" in names:
        sinks.append(WandbSink(Path(run_dir), job))
    if "mlflow" in names:
        sinks.append(MlflowSink(Path(run_dir), job))
    return Tracker(sinks)


def score_scalars(scores: Mapping[str, Any], class_names) -> dict[str, float]:
    """A fine-tuning's test scores as tags: every float score (``test/miou``, ...) and the
    IoU of each class (``test_iou/<class>``)."""
    tags = {f"test/{k}": v for k, v in scores.items() if isinstance(v, float)}
    ious = scores.get("per_class_iou") or []
    tags.update({f"test_iou/{n}": float(v) for n, v in zip(class_names, ious, strict=False)})
    return tags


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The job's spec.json (every setting), for the loggers' run configuration."""
    spec = read_spec(run_dir)
    return spec if isinstance(spec, dict) else {}


# ----------------------------------------------------------------------------------------
# The loggers
# ----------------------------------------------------------------------------------------
class TensorBoardSink:
    """``torch.utils.tensorboard.SummaryWriter`` into ``folder``; a run resumed at
    ``first_step`` > 1 purges later steps of earlier event files (``purge_step``)."""

    def __init__(self, folder: Path, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = first_step if first_step > 1 else None
        self.writer = SummaryWriter(str(folder), purge_step=purge, flush_secs=30)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run named after the job, its files under the run folder; offline unless
    ``WANDB_MODE`` is set, the job's settings as its config."""

    def __init__(self, run_dir: Path, job: Any) -> None:
        import wandb

        self.run = wandb.init(
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=job.job_id,
            group=f"{job.method}-{job.dataset}",
            job_type=job.kind,
            tags=[job.kind, job.method, job.dataset],
            config=run_settings(run_dir),
            settings=wandb.Settings(silent=True, console="off", save_code=False),
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def flush(self) -> None:
        pass  # wandb writes in its own process

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    """An MLflow run named after the job in the results folder's file store (or
    ``MLFLOW_TRACKING_URI``); metrics are buffered and written in batches at each flush."""

    METRICS, PARAMS = 1000, 100  # MLflow's limits per log_batch call

    def __init__(self, run_dir: Path, job: Any) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            uri = (Path(run_dir).resolve().parent / MLFLOW_DIR).as_uri()
            # MLflow 3 asks for this opt-in before it uses a file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = experiment_id(self.client, os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
        tags = {"job_id": job.job_id, "kind": job.kind, "method": job.method}
        self.run_id = self.client.create_run(experiment, run_name=job.job_id, tags=tags).info.run_id
        params = [_param(k, v) for k, v in flat_settings(run_settings(run_dir)).items()]
        for start in range(0, len(params), self.PARAMS):
            self.client.log_batch(self.run_id, params=params[start : start + self.PARAMS])
        self.pending: list[Any] = []

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _millis()
        self.pending += [Metric(k, float(v), stamp, step) for k, v in values.items()]

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), self.METRICS):
            self.client.log_batch(self.run_id, metrics=pending[start : start + self.METRICS])

    def close(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id)


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, made if missing (another job may make it first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001  (made by a parallel job meanwhile)
        return client.get_experiment_by_name(name).experiment_id


def flat_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``section.field`` -> text (MLflow parameters are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value[:6000])  # MLflow's limit on a parameter's length


def _millis() -> int:
    import time

    return int(time.time() * 1000)
