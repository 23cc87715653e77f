"""SimCLR, FALSE and GraSS under ``--preset paper`` against the released VISSL configs.

The transcriptions below are written from the releases, not imported from our presets:
GeoX-Lab/FALSE ``configs/config/pretrain/FALSE/false_1gpu_resnet.yaml`` and GeoX-Lab/GraSS
``configs/config/pretrain/GraSS/grass_1gpu_resnet_b256.yaml`` (the two are the same recipe
but for ``num_epochs``); the schedule and LARC ports follow
``vissl/optimizers/param_scheduler/cosine_warm_restart_scheduler.py``, ClassyVision's
``composite_scheduler.py`` and apex's ``LARC.py`` as the releases run them.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
import timm.optim
import torch
from preset_jobs import build
from preset_jobs import preset_job as paper_job
from torch import nn

from bench.augment import ViewAugmentation
from bench.engine import parameter_groups
from bench.pretrain import optimizer_for, phase_schedule

RELEASE = {
    "batch": 256,  # BATCHSIZE_PER_REPLICA, one GPU
    "epochs": {"simclr": 200, "false": 200, "grass": 350},  # OPTIMIZER.num_epochs
    "crop": 224,  # RandomResizedCrop size (scale: torchvision's default 0.08-1)
    "hflip": 0.5,
    "colour_strength": 1.0,  # ImgPilColorDistortion: jitter 0.8 s (hue 0.2 s) p 0.8, grey 0.2
    "blur": (0.5, 0.1, 2.0),  # ImgPilGaussianBlur p, radius_min, radius_max
    "head": [2048, 2048, 128],  # two "mlp" modules; VISSL skips a module's last ReLU
    "temperature": 0.5,
    "larc": {"clip": False, "trust_coefficient": 0.001, "eps": 1e-8},
    "weight_decay": 1e-6,
    "momentum": 0.9,
    "nesterov": False,
    "regularize_bn": False,
    "regularize_bias": True,
    "linear": (0.6, 4.8),  # warm-up start and end value
    "cosine_warm_restart": {"start": 4.8, "end": 0.0048, "interval": 0.334},
    "lengths": (0.1, 0.9),
    "use_amp": False,
    "false": {"confidence_weight": 1.0, "positive_threshold": 0.9},
}
POTSDAM_SSL_IMAGES = 13824  # 24 train tiles x 576 patches (METHODS.md)


# ---------------------------------------------------------------------------------- ports
def vissl_lr(where: float) -> float:
    """ClassyVision's composite (linear, cosine_warm_restart; rescaled) at ``where``."""
    lengths, epsilon = RELEASE["lengths"], 1e-6
    index, total = 0, lengths[0]
    while where + epsilon > total and index < len(lengths) - 1:
        index += 1
        total += lengths[index]
    local = (where - (total - lengths[index])) / lengths[index]
    if index == 0:
        start, end = RELEASE["linear"]
        return end * local + start * (1 - local)
    c = RELEASE["cosine_warm_restart"]
    restarts = [0.0] + list(np.arange(c["interval"], 1.0, 2 * c["interval"]))
    maxima = [
        c["end"] + 0.5 * (c["start"] - c["end"]) * (1 + math.cos(math.pi * (c["interval"] + r)))
        for r in restarts
    ]
    peak = maxima[max(bisect.bisect(restarts, local) - 1, 0)]
    return c["end"] + 0.5 * (peak - c["end"]) * (1 + math.cos(math.pi * local / c["interval"]))


def apex_larc_sgd_step(params, groups_wd, lr, momentum, buffers, trust, eps):
    """apex ``LARC(SGD, clip=False)``: absorb each group's weight decay, scale each gradient
    by ``trust |w| / (|g| + wd |w| + eps)`` when both norms are non-zero, then SGD with
    momentum (dampening 0, no Nesterov)."""
    with torch.no_grad():
        for group, wd in zip(params, groups_wd, strict=True):
            for p in group:
                g = p.grad.clone()
                w_norm, g_norm = p.norm(), g.norm()
                if w_norm != 0 and g_norm != 0:
                    g = (g + wd * p) * (trust * w_norm / (g_norm + w_norm * wd + eps))
                else:
                    g = g + wd * p
                buf = buffers.get(id(p))
                buf = g.clone() if buf is None else buf.mul_(momentum).add_(g)
                buffers[id(p)] = buf
                p.add_(buf, alpha=-lr)


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["simclr", "false", "grass"])
def test_head_is_linear_linear_as_released(name):
    method = build(paper_job(name))
    layers = list(method.projector)
    assert [type(m) for m in layers] == [nn.Linear, nn.Linear]  # no ReLU between them
    dims = [layers[0].in_features, layers[0].out_features, layers[1].out_features]
    assert dims == RELEASE["head"]
    assert method.params.temperature == RELEASE["temperature"]


@pytest.mark.parametrize("name", ["simclr", "false", "grass"])
def test_optimiser_is_larc_on_every_parameter_with_vissl_groups(name):
    job = paper_job(name, "pretrain.backbone=resnet18")  # the same rules, a smaller network
    method = build(job)
    optimizer = optimizer_for(method, job.pretrain)
    assert isinstance(optimizer, timm.optim.Lars)
    for group in optimizer.param_groups:
        assert group["always_adapt"] is True  # LARC adapts every tensor, decayed or not
        assert group["trust_clip"] is RELEASE["larc"]["clip"]
        assert group["trust_coeff"] == RELEASE["larc"]["trust_coefficient"]
        assert group["eps"] == RELEASE["larc"]["eps"]
        assert group["momentum"] == RELEASE["momentum"]
        assert group["nesterov"] is RELEASE["nesterov"]
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for module in method.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d):
                expected = RELEASE["weight_decay"] if RELEASE["regularize_bn"] else 0.0
            elif param_name == "bias":
                expected = RELEASE["weight_decay"] if RELEASE["regularize_bias"] else 0.0
            else:
                expected = RELEASE["weight_decay"]
            assert decay_of[id(param)] == expected, (type(module).__name__, param_name)
    assert job.pretrain.amp is RELEASE["use_amp"]


def test_our_lars_step_equals_apex_larc_around_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    twin = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    twin.load_state_dict(model.state_dict())
    assert float(model[1].bias.detach().norm()) == 0.0  # BN beta starts at 0: LARC leaves it raw
    groups = parameter_groups(model, 1e-2, decay_norm=False, decay_bias=True)
    from bench.engine import build_optimizer

    ours = build_optimizer(groups, "lars", 0.5, 0.9, lars_trust=0.001, lars_adapt="all")
    twin_groups = parameter_groups(twin, 1e-2, decay_norm=False, decay_bias=True)
    buffers: dict = {}
    for step in range(3):
        x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(step))
        for net in (model, twin):
            net.zero_grad()
            net(x).square().sum().backward()
        ours.step()
        apex_larc_sgd_step(
            [g["params"] for g in twin_groups],
            [g["weight_decay"] for g in twin_groups],
            0.5,
            0.9,
            buffers,
            0.001,
            1e-8,
        )
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", ["simclr", "false", "grass"])
def test_learning_rate_at_every_step_is_vissls(name):
    job = paper_job(name, "pretrain.backbone=resnet18")
    method = build(job)
    per_epoch = POTSDAM_SSL_IMAGES // RELEASE["batch"]  # drop_last: 54
    lrs = phase_schedule(job.pretrain, method.phase_epochs(), per_epoch)
    # GraSS: the released run is the GS stage; the warm-up before it is a SimCLR run of its
    # own, so the schedule starts again with the GS stage (the last phase)
    released = lrs[-RELEASE["epochs"][name] * per_epoch :]
    total = len(released)
    expected = np.array([vissl_lr(step / total) for step in range(total)])
    np.testing.assert_allclose(released, expected, rtol=1e-9, atol=1e-12)
    assert released[0] == pytest.approx(0.6)
    assert released.max() == pytest.approx(4.8, rel=1e-3)  # the end of the warm-up
    first_cosine = released[int(np.ceil(0.1 * total))]
    assert first_cosine == pytest.approx(3.5972, abs=1e-3)  # the adaptive restart's maximum
    assert released[-1] < 0.006 and job.pretrain.batch_size == RELEASE["batch"]
    if name == "grass":  # the ID warm-up run: SimCLR's 200 epochs under the same schedule
        assert method.phase_epochs() == (200, RELEASE["epochs"]["grass"])
        warmup = lrs[: 200 * per_epoch]
        expected = [vissl_lr(step / len(warmup)) for step in range(len(warmup))]
        np.testing.assert_allclose(warmup, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["simclr", "false", "grass"])
def test_views_are_vissls(name):
    job = paper_job(name, "pretrain.backbone=resnet18")
    method = build(job)
    assert isinstance(method.views, ViewAugmentation)
    recipe = method.views.recipe
    s = RELEASE["colour_strength"]
    assert recipe.size == RELEASE["crop"]
    assert recipe.crop_scale == (0.08, 1.0)  # torchvision RandomResizedCrop's default
    assert recipe.hflip_prob == RELEASE["hflip"]
    assert recipe.jitter == pytest.approx((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
    assert (recipe.jitter_prob, recipe.grayscale_prob) == (0.8, 0.2)
    assert (recipe.blur_prob, *recipe.blur_sigma) == RELEASE["blur"]


def test_false_settings_are_the_released_loss_config():
    params = paper_job("false").method_params
    assert params.alpha == RELEASE["false"]["confidence_weight"]
    assert params.positive_threshold == RELEASE["false"]["positive_threshold"]
    assert params.selection == "global" and params.sentinel == "release"
