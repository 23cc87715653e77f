from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.config import PretrainConfig
from bench.methods import StepContext
from bench.methods.grass import (
    GraSS,
    GraSSParams,
    crop_and_resize,
    grad_cam,
    peak_region_boxes,
)
from bench.methods.simclr import SimCLR, SimCLRParams


def reference_box(features: np.ndarray, gradients: np.ndarray, size: int, ratio: float):
    """Written out independently: Grad-CAM with NumPy, upsampling with torch (the one shared
    piece), then threshold, an 8-connected flood fill from the peak, and its bounding box."""
    cam = (gradients.mean(axis=(1, 2))[:, None, None] * features).mean(axis=0)
    up = F.interpolate(
        torch.from_numpy(cam)[None, None].float(),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    threshold = up.min() + ratio * (up.max() - up.min())
    peak = np.unravel_index(np.argmax(up), up.shape)
    if not up[peak] > threshold:
        return (0, 0, size, size)
    seen, todo = {peak}, deque([peak])
    while todo:
        y, x = todo.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                if 0 <= q[0] < size and 0 <= q[1] < size and q not in seen and up[q] > threshold:
                    seen.add(q)
                    todo.append(q)
    ys, xs = zip(*seen, strict=True)
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


@pytest.mark.parametrize("seed", range(4))
def test_boxes_match_numpy_reference_on_hand_made_maps(seed):
    rng = np.random.default_rng(seed)
    features = rng.random((3, 4, 6, 6)).astype(np.float32)  # [B, C, h, w]
    features[:, :, 1:3, 1:3] += 3.0  # a strong blob up-left...
    features[:, :, 4:6, 4:6] += 2.0 * seed  # ...and one down-right that wins for seed >= 2
    gradients = rng.normal(size=(3, 4, 6, 6)).astype(np.float32) + 1.0
    boxes = peak_region_boxes(
        grad_cam(torch.from_numpy(features), torch.from_numpy(gradients)), 32, 0.5
    )
    for b in range(3):
        assert tuple(boxes[b].int().tolist()) == reference_box(features[b], gradients[b], 32, 0.5)
    assert (boxes[:, 2] - boxes[:, 0]).min() < 32  # a real crop happened


def test_flat_map_leaves_views_unchanged():
    cam = torch.ones(2, 4, 4)
    boxes = peak_region_boxes(cam, 16, 0.5)
    assert boxes.tolist() == [[0, 0, 16, 16]] * 2
    views = torch.rand(2, 4, 16, 16)
    assert torch.allclose(crop_and_resize(views, boxes), views, atol=1e-6)


def test_crop_and_resize_is_a_bilinear_resize_of_the_box():
    views = torch.rand(1, 3, 16, 16)
    box = torch.tensor([[4.0, 2.0, 12.0, 10.0]])  # x0, y0, x1, y1: an 8 x 8 crop
    expected = F.interpolate(
        views[:, :, 2:10, 4:12], size=(16, 16), mode="bilinear", align_corners=False
    )
    assert torch.allclose(crop_and_resize(views, box), expected, atol=1e-5)


def make(cls, params_cls, epochs=3, **params):
    torch.manual_seed(0)
    return cls(
        params_cls(**params),
        PretrainConfig(batch_size=4, view_size=32, epochs=epochs),
        3,
        [0.5] * 3,
        [0.25] * 3,
    )


def test_warmup_stage_is_bitwise_the_simclr_step_and_stage_follows_the_epoch():
    grass, simclr = make(GraSS, GraSSParams), make(SimCLR, SimCLRParams)
    images = torch.rand(4, 3, 40, 40)
    assert grass.warmup_epochs() == 1  # one third of 3 epochs
    torch.manual_seed(7)
    loss_grass, logs = grass.training_step(images, StepContext(0, 30, epoch=0))
    torch.manual_seed(7)
    loss_simclr, _ = simclr.training_step(images, StepContext(0, 30, epoch=0))
    assert logs["gs_stage"] == 0.0 and torch.equal(loss_grass, loss_simclr)
    # The stage is a function of the epoch, so a resumed run continues in the right one.
    _, logs = grass.training_step(images, StepContext(10, 30, epoch=1))
    assert logs["gs_stage"] == 1.0
    assert (
        make(GraSS, GraSSParams, warmup_epochs=0).training_step(
            images, StepContext(0, 30, epoch=0)
        )[1]["gs_stage"]
        == 1.0
    )


def test_gs_step_leaves_weights_alone_until_the_one_optimiser_update():
    method = make(GraSS, GraSSParams, warmup_epochs=0)
    before = {k: v.clone() for k, v in method.named_parameters()}
    loss, logs = method.training_step(torch.rand(4, 3, 40, 40), StepContext(0, 1, 0))
    assert all(p.grad is None for p in method.parameters())  # autograd.grad filled no .grad
    assert all(torch.equal(before[k], v) for k, v in method.named_parameters())
    assert 0 < logs["gs_crop_area"] <= 1 and logs["gs_region_seconds"] >= 0
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    optimizer.step()
    changed = [k for k, v in method.named_parameters() if not torch.equal(before[k], v)]
    assert changed and all(k.startswith(("backbone.", "projector.")) for k in changed)


def test_restart_after_warmup_runs_the_gs_stage_as_a_second_run(tmp_path, tiny_overrides):
    """Two phases: the schedule starts again and the optimiser state is fresh at the GS
    stage, as the release's GS run starting from a finished SimCLR run's weights."""
    from bench import checkpoint
    from bench.jobs import execute
    from bench.store import CHECKPOINT
    from bench.sweep import SweepSpec, plan

    def adam_steps_after_two_epochs(restart: bool) -> set[int]:
        overrides = (*tiny_overrides, "pretrain.epochs=3", "grass.warmup_epochs=1",
                     f"grass.restart_after_warmup={restart}")  # fmt: skip
        spec = SweepSpec(methods=("grass",), fractions=(0.1,), seeds=(0,), overrides=overrides)
        job = next(j for j in plan(spec) if j.kind == "pretrain")
        results = tmp_path / str(restart)
        assert execute(job, results, tmp_path / "data")["status"] == "ok"
        # the last checkpoint is the one written after the second of three epochs
        state = checkpoint.load(results / job.job_id / CHECKPOINT, job.job_id)
        assert state["epoch"] == 2
        return {int(s["step"]) for s in state["optimizer"]["state"].values()}

    per_epoch = 48 // 16  # TINY: 48 training patches, batch 16
    assert adam_steps_after_two_epochs(False) == {2 * per_epoch}
    assert adam_steps_after_two_epochs(True) == {per_epoch}  # reset at the second phase
