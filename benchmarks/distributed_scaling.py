"""Throughput of data-parallel pretraining steps: one process vs several, same global batch.

    python benchmarks/distributed_scaling.py [--method simclr] [--processes 2] [--steps 6]

Each configuration runs the harness's step (bench.pretrain's order: forward, backward,
gradient averaging, optimiser step) on a fixed global batch of random images, after one
warm-up step, and reports images per second and the time spent averaging gradients. On a
CPU the single process gets all the threads and each of the P processes 1/P of them, so
the ratio measures the communication and duplicated work (the global loss, the gathers)
rather than extra hardware; on a machine with P GPUs it is the real speed-up.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(rank: int, world: int, port: int, args, threads: int, queue) -> None:
    from bench import distributed
    from bench.config import PretrainConfig
    from bench.methods import METHODS, StepContext
    from bench.pretrain import build_optimizer, parameter_groups

    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    device = (
        distributed.topology().device()
        if world > 1
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    cls = METHODS.get(args.method)
    config = PretrainConfig(batch_size=args.batch, view_size=args.view, backbone=args.backbone)
    torch.manual_seed(0)
    method = cls(cls.Params(), config, 3, [0.5] * 3, [0.25] * 3).to(device)
    if world > 1 and cls.sync_batchnorm:
        method = distributed.convert_batchnorm(method, device)
    optimizer = build_optimizer(parameter_groups(method, 1e-6), "sgd", 0.01, 0.9)
    shard = args.batch // world
    images = torch.rand(shard, 3, args.patch, args.patch, device=device)
    averaging = 0.0
    for step in range(args.steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            distributed.barrier()
            start, averaging = time.perf_counter(), 0.0
        ctx = StepContext(step=step, total_steps=args.steps + 1, epoch=0)
        loss, _ = method.training_step(images, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tick = time.perf_counter()
        distributed.average_gradients(method.parameters())
        averaging += time.perf_counter() - tick
        optimizer.step()
        method.after_optimizer_step(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if rank == 0:
        queue.put((args.batch * args.steps / seconds, averaging / args.steps))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, args, threads: int) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=measure, args=(rank, world, port, args, threads, queue))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    result = queue.get()
    for process in processes:
        process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--view", type=int, default=48)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    one, _ = run(1, args, cores)
    many, averaging = run(args.processes, args, max(1, cores // args.processes))
    print(f"{args.method}, global batch {args.batch}, {args.backbone}, {args.steps} steps")
    print(f"  1 process:  {one:8.1f} img/s")
    print(
        f"  {args.processes} processes: {many:8.1f} img/s  (ratio {many / one:.2f}; "
        f"gradient averaging {1000 * averaging:.1f} ms/step)"
    )


if __name__ == "__main__":
    main()
