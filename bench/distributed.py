"""Data-parallel pretraining with torch.distributed: process groups, collectives with
gradients, synchronised batch norm and gradient averaging.

One process per GPU (per CPU worker on a machine without GPUs). Every process holds a full
copy of the method; each optimisation step it trains on its own shard of the *global* batch
(``pretrain.batch_size`` images over all processes), so the world size never changes which
images form a step. The pieces:

* :func:`process_group` joins the group from torch's ``env://`` variables (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``), set by torchrun or, in a submitit job, exported by the
  execution layer before the job starts (:class:`bench.execution.submission.JobSubmission`),
  with nccl on GPUs and gloo on CPUs.
* :func:`gather_views` all-gathers a method's embeddings *with gradients* in the order of a
  single process on the concatenated batch, so a contrastive loss sees the global batch.
  Every process computes that same global loss; the gather's backward sums the gradients
  that all processes send to this process's embeddings, and :func:`average_gradients`
  divides the summed parameter gradients by the world size -- together exactly the gradient
  of the single-process loss (tests/test_distributed.py checks it for every method).
  Losses that stay local (BYOL, MoCo's queries, the multitask reconstruction) are means over
  the local shard: averaging their gradients gives the gradient of the global mean.
* :class:`GlobalBatchNorm` normalises with statistics over the global batch, for methods
  whose papers use cross-device BN (SimCLR's "global BN", BYOL, VISSL's SyncBN). On CUDA
  torch's own ``nn.SyncBatchNorm`` is used; torch has none for CPU, so this module provides
  the same computation there (two all-reduces per layer).

Outside a process group every helper is the identity and a single process runs unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bench.precision import at_least_float32

log = logging.getLogger(__name__)

# A process that waits longer than this in a collective gives up (another process died).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Topology:
    """Where this process sits: global rank, world size and rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This process's GPU (``cuda:local_rank``), or the CPU where there is none."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def topology() -> Topology:
    """The current process's place (a single process outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Topology()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Topology(dist.get_rank(), dist.get_world_size(), local)


def topology_from_environment() -> Topology:
    """Rank and world size from torch's ``env://`` variables (RANK, WORLD_SIZE, MASTER_ADDR,
    LOCAL_RANK): torchrun sets them; in a submitit job with several tasks the execution
    layer exports submitit's values first (its ``export_distributed_environment``)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return Topology(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        )
    raise RuntimeError(
        "this pretraining expects several processes (pretrain.gpus x pretrain.nodes) but "
        "was started neither by submitit nor by torchrun (no RANK/WORLD_SIZE/MASTER_ADDR); "
        "run it with --executor slurm (or local, one node)"
    )


@contextmanager
def process_group(expected_world_size: int) -> Iterator[Topology]:
    """Join the process group of this job (``expected_world_size`` processes) and leave it on
    exit; a single expected process joins nothing."""
    if expected_world_size <= 1 or active():
        yield topology()
        return
    place = topology_from_environment()
    if place.world_size != expected_world_size:
        raise RuntimeError(
            f"the job expects {expected_world_size} processes (pretrain.gpus x pretrain.nodes) "
            f"but was launched with {place.world_size}; check the SLURM allocation"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(place.device())
    dist.init_process_group(
        backend, rank=place.rank, world_size=place.world_size, timeout=COLLECTIVE_TIMEOUT
    )
    log.info(
        "process %d of %d (local rank %d) joined the %s group at %s:%s",
        place.rank,
        place.world_size,
        place.local_rank,
        backend,
        os.environ.get("MASTER_ADDR"),
        os.environ.get("MASTER_PORT"),
    )
    try:
        yield place
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------
# Collectives with gradients
# ----------------------------------------------------------------------------------------
class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0; the backward sums over processes the gradient that each one
    computed for this process's rows (every process uses all rows)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        out = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


class _AllReduceWithGradient(torch.autograd.Function):
    """Sum over processes; every process's output depends on every input, so the backward
    sums the output gradients too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every process, rank by rank, with gradients (the identity in one process)."""
    if not active():
        return tensor
    if not tensor.requires_grad:
        out = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out
    return _GatherWithGradient.apply(tensor)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, with gradients (the identity in one process)."""
    return _AllReduceWithGradient.apply(tensor) if active() else tensor


def gather_views(z: torch.Tensor, views: int = 2) -> torch.Tensor:
    """``z`` = [view 1 of the local images; view 2; ...] of every process, rearranged as a
    single process on the concatenated batch would hold it: [view 1 of all images (rank 0's
    first); view 2 of all images; ...], with gradients."""
    if not active():
        return z
    gathered = gather(z)  # [world * views * n, ...] = rank-major
    world = dist.get_world_size()
    n = z.shape[0] // views
    return gathered.view(world, views, n, *z.shape[1:]).transpose(0, 1).reshape(-1, *z.shape[1:])


def gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather` for row counts that differ between processes (e.g. GLCNet's
    matched regions): padded to the largest count, gathered, padding dropped."""
    if not active():
        return tensor
    counts = gather(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
    most = max(counts)
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, most - tensor.shape[0]))
    gathered = gather(padded)
    return torch.cat([gathered[r * most : r * most + c] for r, c in enumerate(counts)])


def mean_over_processes(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean over processes of a list of numbers (the list itself in one)."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


# ----------------------------------------------------------------------------------------
# Keeping replicas identical
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Every parameter and buffer of ``module`` set to rank 0's values."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, 0)


@torch.no_grad()
def average_gradients(parameters) -> None:
    """Replace each gradient by its mean over processes, in one all-reduce per dtype (the
    bucketed all-reduce of DistributedDataParallel, after the backward pass).

    A parameter that got a gradient in some processes only (e.g. a branch without input
    there) counts as zero where it got none; one that got none anywhere keeps ``None``, so
    the optimiser skips it as it would in a single process."""
    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], device=device, dtype=torch.int32)
    dist.all_reduce(has_grad)
    for p, anywhere in zip(params, has_grad.tolist(), strict=True):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    world = dist.get_world_size()
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


# ----------------------------------------------------------------------------------------
# Batch norm over the global batch
# ----------------------------------------------------------------------------------------
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the mean and (biased) variance over the
    global batch of all processes -- the computation of ``nn.SyncBatchNorm``, for any
    device. Running statistics take the unbiased global variance, as ``nn.BatchNorm``.
    Outside a process group it is ordinary batch norm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = at_least_float32(input)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce_sum(x.sum(dim=dims)) / count
        centered = x - mean.view(shape)
        var = all_reduce_sum(centered.square().sum(dim=dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every batch norm computed over the global batch: torch's
    ``nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere. Parameters, buffers
    state-dict keys and dtypes are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        tensors = (*module.parameters(), *module.buffers())
        like = next((t for t in tensors if t.is_floating_point()), torch.empty(0))
        twin = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        ).to(like.device, like.dtype)
        twin.load_state_dict(module.state_dict())
        twin.train(module.training)
        twin.requires_grad_(any(p.requires_grad for p in module.parameters()))
        return twin
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


# ----------------------------------------------------------------------------------------
# Sharding the global batch
# ----------------------------------------------------------------------------------------
class ShardedBatches:
    """This process's rows of each global batch drawn by ``batches`` (a batch sampler): the
    global batches are the single process's, split into ``world_size`` equal contiguous
    shards -- no overlap, reshuffled whenever the global order is (each epoch)."""

    def __init__(self, batches, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self):
        for batch in self.batches:
            share = len(batch) // self.world_size
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.batches)
