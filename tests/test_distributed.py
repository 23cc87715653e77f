"""Data-parallel pretraining on CPU with the gloo backend and 2 processes.

The central check: for every contrastive method, the loss and the (averaged) gradients of a
distributed step on two shards equal those of one process on the concatenated batch. The
views are made deterministic (the same images in both runs, whatever the random streams);
methods that sync batch norm run in training mode, the others (MoCo, GLCNet, multitask: BN
per process by design) with BN in eval mode, which removes the only intended difference.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bench import distributed
from bench.config import ConfigError, PretrainConfig, stable_hash
from bench.methods import METHODS, StepContext
from bench.methods.glcnet import GLCNet
from bench.methods.multitask import TRANSFORMS, Multitask, apply_transform
from bench.pretrain import local_batch_size, peak_lr, shuffled_batches, warmup_cosine_schedule

WORLD = 2
GLOBAL_BATCH = 8
SIZE = 32
# every pretraining method of the harness (plugins' left out), from the registry
CONTRASTIVE = tuple(
    name for name in METHODS.names() if METHODS.get(name).pretrains and not METHODS.plugin(name)
)
PARAMS = {
    "simclr": {},
    "moco": {"queue_size": 32},
    "byol": {"hidden_dim": 64},
    "false": {"positive_threshold": -1.0},  # every positive pair confident: FNSD fires
    "grass": {"warmup_epochs": 0},  # straight into gradient-guided sampling
    "glcnet": {"region_size": 8},
    "multitask": {"input_flips": False, "shortcuts": False},  # random parts, made fixed
}


# ---------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def launch(fn, *args) -> None:
    """Run ``fn(rank, *args)`` in ``WORLD`` fresh processes joined in a gloo group."""
    mp.spawn(_entry, args=(free_port(), fn, args), nprocs=WORLD, join=True)


# ---------------------------------------------------------------------------- methods
def images_of_global_batch(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(GLOBAL_BATCH, 3, SIZE, SIZE, generator=generator).to(dtype)


def make_method(name: str, dtype: torch.dtype = torch.float32):
    """``name`` with band statistics 0 / 1, so the views stay in [0, 1].

    The equality test runs in float64: these random networks' early-layer gradients are
    ill-conditioned in float32 (BYOL's conv1 gradient in float32 differs from float64 by
    3.6% on one CPU, 0.85% on another), so in float32 the comparison of two summation orders
    tests float noise, and failed for BYOL and GraSS depending on the machine."""
    cls = METHODS.get(name)
    torch.manual_seed(0)
    params = cls.Params(**PARAMS.get(name, {}))
    method = cls(
        params, PretrainConfig(batch_size=GLOBAL_BATCH, view_size=SIZE), 3, [0.0] * 3, [1.0] * 3
    )
    return method.to(dtype)


class AlternatingViews(torch.nn.Module):
    """Deterministic stand-in for the random views: odd calls flip and dim the image."""

    calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        AlternatingViews.calls += 1
        return images if AlternatingViews.calls % 2 else images.flip(-1) * 0.9


def make_deterministic(method, first_image: int) -> None:
    """Replace every random choice of ``method`` by a function of the images and of their
    index in the global batch (``first_image`` is the index of this shard's first one)."""
    AlternatingViews.calls = 0
    GRAD_CAMS.clear()
    if isinstance(method, GLCNet):
        method.views = lambda images: glcnet_views(images, first_image)
    elif isinstance(method, Multitask):
        method.random_crops = lambda images: images
        method.inpainting_inputs = lambda images: (images * (1 - block_mask(images)), None)
        method.transformed_inputs = lambda images: multitask_transforms(images, first_image)
    elif isinstance(method.views, torch.nn.ModuleList):  # BYOL's two recipes
        method.views = torch.nn.ModuleList([AlternatingViews(), AlternatingViews()])
    else:
        method.views = AlternatingViews()


GRAD_CAMS: list[torch.Tensor] = []


def fixed_boxes(cam, size, ratio, **rule):
    """GraSS's region search, replaced by fixed crops after recording the Grad-CAM maps: on
    a random network the maps are nearly flat, and float noise would move their peaks."""
    GRAD_CAMS.append(cam.detach().clone())
    return torch.tensor([[2.0, 4.0, size - 2.0, size - 6.0]]).repeat(len(cam), 1)


def glcnet_views(images, first_image):
    """View 2 is view 1 mirrored; image ``g`` (global index) has ``g % 3`` regions, so the
    two shards hold different numbers of regions."""
    boxes1, boxes2 = [], []
    for i in range(len(images)):
        for r in range((first_image + i) % 3):
            x0, y0 = 2 + 10 * r, 4 + 6 * r
            boxes1.append([i, x0, y0, x0 + 8, y0 + 8])
            boxes2.append([i, SIZE - x0 - 8, y0, SIZE - x0, y0 + 8])
    boxes1 = torch.tensor(boxes1, dtype=torch.float32).reshape(-1, 5)
    boxes2 = torch.tensor(boxes2, dtype=torch.float32).reshape(-1, 5)
    return images, images.flip(-1) * 0.9, boxes1, boxes2


def block_mask(images):
    mask = torch.zeros_like(images[:, :1])
    mask[..., 8:20, 4:16] = 1.0
    return mask


def multitask_transforms(images, first_image):
    labels = torch.tensor([(first_image + i) % len(TRANSFORMS) for i in range(len(images))])
    out = torch.stack(
        [apply_transform(img, int(lab)) for img, lab in zip(images, labels, strict=True)]
    )
    return out, labels


def prepare(method) -> None:
    """Training mode, except dropout (random masks; smp's ASPP has one) and, in methods
    whose BN is per process by design, batch norm."""
    method.train()
    for module in method.modules():
        if isinstance(module, torch.nn.Dropout) or (
            isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and not type(method).sync_batchnorm
        ):
            module.eval()


def step(method, images) -> dict:
    loss, extras = method.training_step(images, StepContext(step=0, total_steps=10, epoch=0))
    loss.backward()
    distributed.average_gradients(method.parameters())
    loss_value = distributed.mean_over_processes([float(loss.detach())], images.device)[0]
    method.after_optimizer_step(StepContext(step=0, total_steps=10, epoch=0))
    return {
        "loss": loss_value,
        "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
        "buffers": {n: b.clone() for n, b in method.named_buffers()},
        "params": {n: p.detach().clone() for n, p in method.named_parameters()},
        "grad_cams": list(GRAD_CAMS),
    }


@pytest.fixture(autouse=True)
def _fixed_grass_boxes(monkeypatch):
    monkeypatch.setattr("bench.methods.grass.peak_region_boxes", fixed_boxes)


def _distributed_steps(rank: int, out_dir: str) -> None:
    import bench.methods.grass

    bench.methods.grass.peak_region_boxes = fixed_boxes
    shard = GLOBAL_BATCH // WORLD
    images = images_of_global_batch(torch.float64)[rank * shard : (rank + 1) * shard]
    results = {}
    for name in CONTRASTIVE:
        method = make_method(name, torch.float64)
        if type(method).sync_batchnorm:
            method = distributed.convert_batchnorm(method, torch.device("cpu"))
        make_deterministic(method, rank * shard)
        prepare(method)
        results[name] = step(method, images)
    # MoCo with BN in training mode: the keys of shuffle BN
    method = make_method("moco")
    make_deterministic(method, rank * shard)
    method.train()
    method.training_step(images.float(), StepContext(step=5, total_steps=10, epoch=0))
    results["moco_shuffled_keys"] = method._pending_keys
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def distributed_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-steps")
    launch(_distributed_steps, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", CONTRASTIVE)
def test_distributed_step_equals_one_process_on_the_concatenated_batch(name, distributed_steps):
    method = make_method(name, torch.float64)
    make_deterministic(method, 0)
    prepare(method)
    reference = step(method, images_of_global_batch(torch.float64))
    assert reference["grads"], "the reference step produced no gradient"
    for rank, results in enumerate(distributed_steps):
        got = results[name]
        assert got["loss"] == pytest.approx(reference["loss"], rel=1e-5), f"rank {rank}"
        assert got["grads"].keys() == reference["grads"].keys()
        for key, expected in reference["grads"].items():
            torch.testing.assert_close(
                got["grads"][key],
                expected,
                rtol=1e-3,
                atol=max(1e-4 * float(expected.abs().max()), 1e-7),  # float32 summation order
                msg=lambda m, k=key, r=rank: f"{name} gradient {k} rank {r}: {m}",
            )
        # after the step hook: BN running statistics, EMA targets, MoCo's queue and pointer
        for key, expected in reference["buffers"].items():
            torch.testing.assert_close(
                got["buffers"][key].to(expected.dtype),
                expected,
                rtol=2e-4,
                atol=2e-6,
                msg=lambda m, k=key, r=rank: f"{name} buffer {k} rank {r}: {m}",
            )
        if name == "grass":  # Grad-CAM of this shard's views: the global loss's, x world size
            (cam,) = got["grad_cams"]
            (full,) = reference["grad_cams"]
            n = GLOBAL_BATCH // WORLD
            rows = [
                *range(rank * n, (rank + 1) * n),
                *range(GLOBAL_BATCH + rank * n, GLOBAL_BATCH + (rank + 1) * n),
            ]
            torch.testing.assert_close(
                cam, WORLD * full[rows], rtol=1e-3, atol=1e-4 * float(full.abs().max())
            )
        for key, expected in reference["params"].items():
            torch.testing.assert_close(
                got["params"][key], expected, msg=lambda m, k=key: f"{name} {k}: {m}"
            )


def test_moco_keys_come_from_shuffled_bn_batches(distributed_steps):
    """Each process encodes the keys of a random shard of the global batch (its own BN
    batch) and gets back the keys of its own images: recompute exactly that."""
    from bench.methods.moco import shuffle_order

    method = make_method("moco")
    make_deterministic(method, 0)
    method.train()
    images = images_of_global_batch()
    key_views = method.normalize(images.flip(-1) * 0.9)  # AlternatingViews' second call
    order = shuffle_order(GLOBAL_BATCH, 5, images.device)
    n = GLOBAL_BATCH // WORLD
    expected = torch.empty(GLOBAL_BATCH, method.params.projector_dim)
    for rank in range(WORLD):
        mine = order[rank * n : (rank + 1) * n]
        expected[mine] = method.keys(key_views[mine])
    unshuffled = method.keys(key_views)  # one BN batch: what shuffling must change
    for results in distributed_steps:
        got = results["moco_shuffled_keys"]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, unshuffled, atol=1e-3)


def test_replicas_stay_identical(distributed_steps):
    first, second = distributed_steps
    for name in CONTRASTIVE:
        for key, value in first[name]["grads"].items():
            assert torch.equal(value, second[name]["grads"][key]), f"{name} {key}"
        for key, value in first[name]["buffers"].items():
            assert torch.equal(value, second[name]["buffers"][key]), f"{name} buffer {key}"


# ---------------------------------------------------------------------------- pieces
def _pieces(rank: int, out_dir: str) -> None:
    out = {}
    # gather_views: single-process order [view 1 of all images; view 2 of all images]
    local = torch.arange(4.0).view(4, 1) + 10 * rank  # rows: v1 img0, v1 img1, v2 img0, v2 img1
    x = local.clone().requires_grad_(True)
    gathered = distributed.gather_views(x)
    out["gathered"] = gathered.detach()
    weights = torch.arange(1.0, 9.0).view(8, 1)
    (gathered * weights).sum().backward()
    out["grad"] = x.grad
    # uneven gather: rank r has r + 1 rows
    uneven = torch.full((rank + 1, 2), float(rank), requires_grad=True)
    together = distributed.gather_uneven(uneven)
    out["uneven"] = together.detach()
    together.sum().backward()
    out["uneven_grad"] = uneven.grad
    # a parameter with a gradient on rank 0 only; one with none anywhere
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    if rank == 0:
        (a * 4).sum().backward()
    distributed.average_gradients([a, b])
    out["partial"], out["none"] = a.grad, b.grad
    # shuffle BN's permutation is the same everywhere
    from bench.methods.moco import shuffle_order

    out["order"] = shuffle_order(8, 3, torch.device("cpu"))
    torch.save(out, f"{out_dir}/rank{rank}.pt")


def test_collectives_keep_single_process_order_and_gradients(tmp_path):
    launch(_pieces, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    expected_order = torch.tensor([0.0, 1, 10, 11, 2, 3, 12, 13]).view(8, 1)
    for rank, out in enumerate(ranks):
        assert torch.equal(out["gathered"], expected_order)
        # d/dx of sum(w * gathered), summed over the two processes that each computed it
        rows = {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}[rank]
        assert torch.equal(out["grad"], WORLD * torch.arange(1.0, 9.0)[rows].view(4, 1))
        assert torch.equal(out["uneven"], torch.tensor([[0.0, 0], [1, 1], [1, 1]]))
        assert torch.equal(out["uneven_grad"], torch.full((rank + 1, 2), float(WORLD)))
        assert torch.equal(out["partial"], torch.full((3,), 2.0))  # (4 + 0) / 2
        assert out["none"] is None
    assert torch.equal(ranks[0]["order"], ranks[1]["order"])
    assert sorted(ranks[0]["order"].tolist()) == list(range(8))


def _batchnorm(rank: int, out_dir: str) -> None:
    torch.manual_seed(3)
    x = torch.randn(8, 5, 4, 4) * 3 + 1
    bn2 = distributed.convert_batchnorm(torch.nn.BatchNorm2d(5), torch.device("cpu"))
    bn1 = distributed.convert_batchnorm(torch.nn.BatchNorm1d(5), torch.device("cpu"))
    with torch.no_grad():
        bn2.weight.copy_(torch.linspace(0.5, 2, 5))
        bn2.bias.copy_(torch.linspace(-1, 1, 5))
    local = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    y = bn2(local)
    (y * torch.arange(y.numel()).view_as(y) / y.numel()).sum().backward()
    flat = x.mean(dim=(2, 3))[rank * 4 : (rank + 1) * 4]
    torch.save(
        {
            "y": y.detach(),
            "grad": local.grad,
            "w": bn2.weight.grad,
            "state": bn2.state_dict(),
            "y1": bn1(flat).detach(),
            "state1": bn1.state_dict(),
        },
        f"{out_dir}/rank{rank}.pt",
    )


def test_global_batchnorm_equals_batchnorm_on_the_concatenated_batch(tmp_path):
    launch(_batchnorm, str(tmp_path))
    torch.manual_seed(3)
    x = (torch.randn(8, 5, 4, 4) * 3 + 1).requires_grad_(True)
    bn2, bn1 = torch.nn.BatchNorm2d(5), torch.nn.BatchNorm1d(5)
    with torch.no_grad():
        bn2.weight.copy_(torch.linspace(0.5, 2, 5))
        bn2.bias.copy_(torch.linspace(-1, 1, 5))
    y = bn2(x)
    weights = torch.cat([torch.arange(y.numel() // 2).view(4, 5, 4, 4)] * 2) / (y.numel() // 2)
    (y * weights).sum().backward()
    y1 = bn1(x.detach().mean(dim=(2, 3)))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        rows = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(got["y"], y.detach()[rows])
        torch.testing.assert_close(got["grad"], x.grad[rows])
        torch.testing.assert_close(got["y1"], y1.detach()[rows])
        for key, value in bn2.state_dict().items():
            torch.testing.assert_close(got["state"][key], value)  # running mean and var
        for key, value in bn1.state_dict().items():
            torch.testing.assert_close(got["state1"][key], value)
    # the weight gradient of rank r is its shard's share; averaged it is the full gradient
    total = sum(torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["w"] for r in range(WORLD))
    torch.testing.assert_close(total, bn2.weight.grad)


def test_converted_modules_keep_their_state_dict_keys():
    method = make_method("byol")
    keys = list(method.state_dict())
    converted = distributed.convert_batchnorm(method, torch.device("cpu"))
    assert list(converted.state_dict()) == keys
    assert isinstance(converted.backbone.bn1, distributed.GlobalBatchNorm)
    assert not any(p.requires_grad for p in converted.target_backbone.parameters())
    # outside a process group the converted module computes plain batch norm
    torch.testing.assert_close(
        converted.backbone.bn1(torch.ones(2, 64, 2, 2) * torch.arange(2.0).view(2, 1, 1, 1)),
        F.batch_norm(
            torch.ones(2, 64, 2, 2) * torch.arange(2.0).view(2, 1, 1, 1),
            None,
            None,
            training=True,
        ),
    )


# ---------------------------------------------------------------------------- data and LR
def test_shards_partition_each_global_batch_and_reshuffle_per_epoch():
    patches = list(range(40))

    def batches(epoch, rank, world):
        generator = torch.Generator().manual_seed(epoch)
        return [
            b[0].tolist() if isinstance(b, list) else b.tolist()
            for b in shuffled_batches(torch.arange(40), 8, generator, rank=rank, world_size=world)
        ]

    single = batches(0, 0, 1)
    shards = [batches(0, r, 4) for r in range(4)]
    assert len(single) == 5 and all(len(s) == 5 for s in shards)
    for step, batch in enumerate(single):
        parts = [shards[r][step] for r in range(4)]
        assert all(len(p) == 2 for p in parts)
        assert sum(parts, []) == batch  # contiguous shards, single-process order
    seen = sum((sum(s, []) for s in shards), [])
    assert len(seen) == len(set(seen)) == 40 == len(patches)  # no overlap, every patch
    assert batches(1, 0, 4) != shards[0]  # a new order each epoch


def test_learning_rate_follows_the_global_batch():
    base = dict(lr=0.3, batch_size=1024, warmup_fraction=0.0, final_lr_factor=1.0)
    assert peak_lr(PretrainConfig(**base)) == 0.3  # "none": as given
    assert peak_lr(PretrainConfig(**base, lr_scaling="linear")) == pytest.approx(1.2)
    assert peak_lr(PretrainConfig(**base, lr_scaling="sqrt")) == pytest.approx(0.6)
    lrs = warmup_cosine_schedule(PretrainConfig(**base, lr_scaling="linear"), 4)
    assert lrs == pytest.approx([1.2] * 4)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        local_batch_size(PretrainConfig(batch_size=64), 3)
    assert local_batch_size(PretrainConfig(batch_size=64), 4) == 16


def test_new_settings_leave_existing_job_ids_alone():
    default = PretrainConfig()
    assert stable_hash(default) == stable_hash(PretrainConfig(gpus=4, nodes=2))
    assert stable_hash(default) != stable_hash(PretrainConfig(lr_scaling="linear"))
    assert "lr_scaling" not in json.dumps(__import__("bench.config").config.identity_dict(default))


def test_executors_that_run_one_process_refuse_several(tmp_path):
    from bench.execution.executors import InlineExecutor
    from bench.sweep import SweepSpec, plan

    spec = SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=("pretrain.gpus=2",))
    with pytest.raises(ConfigError, match="inline executor runs one process"):
        InlineExecutor().run(plan(spec), tmp_path)


# ---------------------------------------------------------------------------- the loop
def _sweep_job(overrides):
    from bench.sweep import SweepSpec, plan

    spec = SweepSpec(methods=("simclr",), fractions=(1.0,), overrides=overrides)
    return next(job for job in plan(spec) if job.kind == "pretrain")


def _run_loop(rank: int, results: str, data: str, overrides, stop_at_step) -> None:
    from bench.jobs import execute
    from bench.methods.simclr import SimCLR
    from bench.preemption import Preempted

    os.environ["BENCH_DATA_ROOT"] = data
    job = _sweep_job(overrides)
    if stop_at_step is not None and rank == 1:  # a stop signal reaches one process only
        original = SimCLR.after_optimizer_step

        def signal_once(self, ctx):
            original(self, ctx)
            if ctx.step == stop_at_step:
                os.kill(os.getpid(), signal.SIGUSR2)

        SimCLR.after_optimizer_step = signal_once
    try:
        execute(job, results, data, processes=WORLD)
    except Preempted:
        with open(f"{results}/preempted-rank{rank}", "w") as handle:
            handle.write("yes")


LOOP = (
    "synthetic.n_train=48",
    "synthetic.n_test=8",
    "synthetic.patch_size=32",
    "pretrain.batch_size=8",
    "pretrain.view_size=32",
    "pretrain.epochs=2",
    "pretrain.checkpoint_minutes=0",  # a checkpoint each epoch (checked below)
    "pretrain.log_every=1",
)


def test_two_process_pretraining_writes_once_and_resumes_exactly(tmp_path, monkeypatch, caplog):
    from bench.jobs import execute
    from bench.store import RunStore

    data = tmp_path / "data"
    monkeypatch.setenv("BENCH_DATA_ROOT", str(data))
    job = _sweep_job(LOOP)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    launch(_run_loop, str(whole), str(data), LOOP, None)
    record = RunStore(whole).read_record(job.job_id)
    assert record["status"] == "ok", record
    assert record["world_size"] == WORLD and record["steps"] == 2 * (48 // 8)
    lines = [json.loads(x) for x in (whole / job.job_id / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2]  # written once
    # one checkpoint (after epoch 1) written by one process: a second writer would have
    # moved the first to checkpoint.prev.pt
    assert (whole / job.job_id / "checkpoint.pt").exists()
    assert not (whole / job.job_id / "checkpoint.prev.pt").exists()

    # a stop signal reaches rank 1 mid-epoch 2: both stop at the same step, rank 0 checkpoints
    launch(_run_loop, str(stopped), str(data), LOOP, 8)
    assert (stopped / "preempted-rank0").exists() and (stopped / "preempted-rank1").exists()
    assert RunStore(stopped).read_record(job.job_id) is None
    state = torch.load(stopped / job.job_id / "checkpoint.pt", weights_only=True)
    # signalled after step 9 (epoch 2, batch 3); the flag is shared at the next step's
    # all-reduce, so both processes finish batch 4 and stop there
    assert (state["epoch"], state["batch"]) == (1, 4) and len(state["rng_ranks"]) == WORLD
    shutil.copytree(stopped, tmp_path / "single")  # the same checkpoint, for one process
    launch(_run_loop, str(stopped), str(data), LOOP, None)  # resume
    resumed = RunStore(stopped).read_record(job.job_id)
    assert resumed["status"] == "ok" and resumed["resumed_from_batch"] == 4
    a = torch.load(whole / job.job_id / "backbone.pt", weights_only=True)
    b = torch.load(stopped / job.job_id / "backbone.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert resumed["final_loss"] == pytest.approx(record["final_loss"], rel=1e-4)

    # one process can take over a two-process checkpoint: same data order, reseeded views
    with caplog.at_level(logging.WARNING):
        alone = execute(job, tmp_path / "single", data)
    assert alone["status"] == "ok" and alone["resumed_from_batch"] == 4
    assert alone["world_size"] == 1
    assert "written by 2 process(es), this run has 1" in caplog.text


def test_a_global_batch_that_does_not_split_is_refused_before_submission():
    from bench.execution.cluster import load_profile, pretrain_layout

    spec_overrides = ("pretrain.batch_size=64", "pretrain.gpus=3")
    job = _sweep_job(spec_overrides)
    with pytest.raises(
        ConfigError, match=r"does not split evenly over 3 processes \(3 per node x 1 nodes\)"
    ):
        pretrain_layout(job, load_profile(None))
    profile = load_profile(None, {"pretrain_gpus": 4, "pretrain_nodes": 2})
    assert pretrain_layout(_sweep_job(("pretrain.batch_size=64",)), profile) == (4, 2)
    assert pretrain_layout(_sweep_job(("pretrain.batch_size=64", "pretrain.gpus=2")), profile) == (
        2,
        2,
    )


def test_paper_preset_scales_each_method_lr_as_its_paper_says():
    from bench.sweep import SweepSpec, plan

    spec = SweepSpec(methods=tuple(CONTRASTIVE), fractions=(0.1,), seeds=(0,), preset="paper")
    pretraining = {job.method: job.pretrain for job in plan(spec) if job.kind == "pretrain"}
    linear = {"moco": 0.03, "byol": 0.2}
    for name, lr in linear.items():  # "lr x batch / 256" (MoCo v2, BYOL)
        cfg = pretraining[name]
        assert (cfg.lr_scaling, cfg.lr_base_batch, cfg.lr) == ("linear", 256, lr), name
        bigger = type(cfg)(**{**cfg.__dict__, "batch_size": 4096})
        assert peak_lr(bigger) == pytest.approx(lr * 16)
    # fixed learning rates: Adam (GLCNet, multitask) and FALSE's and GraSS's VISSL config,
    # whose auto_lr_scaling has auto_scale: false (false_1gpu_resnet.yaml lines 88-89)
    fixed = {"simclr": 4.8, "false": 4.8, "grass": 4.8, "glcnet": 1e-3, "multitask": 5e-4}
    for name, lr in fixed.items():
        assert pretraining[name].lr_scaling == "none"
        bigger = type(pretraining[name])(**{**pretraining[name].__dict__, "batch_size": 4096})
        assert peak_lr(bigger) == pretraining[name].lr == lr
