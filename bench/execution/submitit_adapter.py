"""Everything that calls submitit, in one place: executors built from cluster profiles,
job-array parameters, rendered sbatch scripts, SLURM's accounting states, and what a
submitted task learns from its environment (its rank, the process group, requeueing).

The rest of the harness talks to this module only, so a submitit upgrade (or another
scheduler library) touches one file. Where submitit offers no public API (unsetting a
parameter, rendering an sbatch script without submitting) the private use is here and
documented.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.config import ConfigError
from bench.execution.cluster import Profile, executor_parameters, layout_parameters


def _submitit() -> ModuleType:
    """submitit, imported at its first use rather than with this module: with asyncio it
    is 58 ms of every command that imports it (``-X importtime``), and ``table``, ``report``
    and ``status`` of a sweep that never used SLURM call none of it. The rest of the
    harness imports this module at its top, so the dependency stays one-way and visible."""
    import submitit

    return submitit


# ---------------------------------------------------------------------------- submitting
def make_executor(cluster: str, folder: Path, profile: Profile, name: str = "bench"):
    """A submitit ``AutoExecutor`` for ``cluster`` (slurm, local or debug) set up from
    ``profile``."""
    python = profile.settings.get("python")
    kwargs = {f"{cluster}_python": python} if python and cluster != "debug" else {}
    try:
        executor = _submitit().AutoExecutor(folder=folder, cluster=cluster, **kwargs)
    except RuntimeError as error:  # e.g. no srun on this machine
        raise ConfigError(f"cannot submit to {cluster}: {error}") from None
    executor.update_parameters(name=name, **executor_parameters(profile))
    return executor


def set_array_parameters(
    executor, profile: Profile, name: str, layout: tuple[int, int] = (1, 1), after=None
) -> None:
    """Set ``executor`` (from :func:`make_executor`) up for the next job array: its name, the
    process layout (processes per node, nodes) of :func:`layout_parameters`, and
    ``afterok:<after>`` when it must wait for a SLURM job (no dependency otherwise)."""
    executor.update_parameters(
        name=name,
        slurm_dependency=f"afterok:{after}" if after else None,
        **layout_parameters(profile, *layout),
    )
    if after is None and hasattr(executor._executor, "parameters"):
        # update_parameters ignores None: drop the dependency of an earlier array (submitit
        # has no public way to unset a parameter)
        executor._executor.parameters.pop("dependency", None)


def sbatch_script(
    profile: Profile,
    folder: Path,
    array_size: int | None = None,
    name: str = "bench-finetune",
    layout: tuple[int, int] = (1, 1),
) -> str:
    """The sbatch script submitit writes for a job array of ``array_size`` tasks (or one
    job) set up as the SLURM executor sets up its arrays (``name``, process ``layout``),
    without submitting anything. Needs ``srun`` on the PATH, as submitit's SLURM executor
    does."""
    executor = make_executor("slurm", folder, profile)
    set_array_parameters(executor, profile, name, layout)
    return rendered_sbatch(executor, array_size)


def rendered_sbatch(executor, array_size: int | None = None) -> str:
    """The sbatch script that ``executor`` (a SLURM :func:`make_executor`) would submit now for
    an array of ``array_size`` tasks (or one job); nothing is submitted. Uses submitit's
    private rendering (it has no public one), which golden files in the tests pin down."""
    slurm = executor._executor
    parameters = dict(slurm.parameters)
    if array_size is not None:
        parameters["map_count"] = array_size
    kept, slurm.parameters = slurm.parameters, parameters
    try:
        return slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
    finally:
        slurm.parameters = kept


# ---------------------------------------------------------------------------- SLURM states
def scheduler_states(job_ids: list[str], timeout_s: float = 60) -> dict[str, str]:
    """SLURM state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED by 0`` ...) of each
    job id (``123`` or array task ``123_4``) that ``sacct`` knows."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    main_ids = sorted({job_id.split("_")[0] for job_id in job_ids})
    command = ["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(main_ids)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {}
    if done.returncode != 0:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher  # as _submitit: at first use

    info = SlurmInfoWatcher(delay_s=0).read_info(done.stdout)
    return {job_id: info[job_id]["State"] for job_id in job_ids if job_id in info}


# ---------------------------------------------------------------------------- inside a job
def task_rank() -> int:
    """This task's global rank in a submitit job (0 outside one)."""
    try:
        return _submitit().JobEnvironment().global_rank
    except RuntimeError:
        return 0


def resubmission(callable_: Any) -> Any:
    """What a checkpointable job's ``checkpoint()`` returns: ``callable_`` submitted again
    (submitit requeues it)."""
    return _submitit().helpers.DelayedSubmission(callable_)


def export_distributed_environment() -> tuple[int, int, int]:
    """Rank, world size and local rank of this task of a submitit job, with MASTER_ADDR/PORT,
    RANK, WORLD_SIZE and LOCAL_RANK exported for torch's ``env://`` initialisation
    (submitit's values replace stale ones, except MASTER_PORT, which submitit chooses)."""
    env = (
        _submitit()
        .helpers.TorchDistributedEnvironment()
        .export(set_cuda_visible_devices=False, overwrite=True)
    )
    return env.rank, env.world_size, env.local_rank
