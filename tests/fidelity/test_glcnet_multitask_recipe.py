"""GLCNet and the multitask method under ``--preset paper`` against their releases.

Transcriptions, written from the releases (not imported from our presets):
GeoX-Lab/G-RSIM ``T-SS-GLCNet/main_ss.py`` (and ``utils/contrast_loss.py``) and
flyakon/SSLRemoteSensing ``configs/vr_resnet50_inapinting_agr_examplar_cfg.py`` with its
model, dataset, transforms and losses. The learning rates are checked against torch's own
schedulers driven exactly as the releases drive them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from preset_jobs import build, torch_scheduler_lrs
from preset_jobs import preset_job as paper_job
from torch import nn

from bench.losses import nt_xent
from bench.methods import StepContext
from bench.methods.multitask import ReleaseInpaintingDecoder, exemplar_loss, weighted_l1
from bench.pretrain import optimizer_for, phase_schedule

GLCNET = {  # main_ss.py
    "lr": 1e-3,  # --lr_self
    "betas": (0.9, 0.99),  # torch.optim.Adam(model.parameters(), ..., betas=(0.9, 0.99))
    "weight_decay": 1e-5,  # config/opt_road.py weight_decay, on model.parameters()
    "T_max": 400,  # CosineAnnealingLR(optimizer, T_max=args.self_max_epoch, eta_min=4e-08)
    "eta_min": 4e-8,
    "batch": 256,  # --self_batch_size
    "epochs": 400,  # --self_max_epoch
    "temperature": 0.5,  # NTXentLoss(..., 0.5, cos_sim=True)
    "lambda": 0.5,  # --lamuda
    "amp_opt_level": "O0",
}
MULTITASK = {  # configs/vr_resnet50_inapinting_agr_examplar_cfg.py
    "lr": 5e-4,  # optimizer Adam lr 0.0005, torch's defaults otherwise (no weight decay)
    "step_size": 2,  # lr_schedule stepLR step_size 2, gamma 0.95, lr_schedule.step(epoch=epoch)
    "gamma": 0.95,
    "batch": 4,
    "epochs": 13,  # num_epoch
    "img_size": 256,
    "factors": (20, 1, 1),
    "feat_channels": (1024, 512, 256, 64, 32),  # inpainting_head_cfg for ResNet-50
    "examplar_out": 512,  # Linear(in, 2 out) - Sigmoid - Linear(2 out, out)
    "cover_ratio": (0.2, 1 / 3),
    "shortcut_crop": (0.7, 0.95),
    "grayscale": 0.5,
}
POTSDAM_SSL_IMAGES = 13824


def lrs_per_epoch(job, method, per_epoch: int) -> np.ndarray:
    lrs = phase_schedule(job.pretrain, method.phase_epochs(), per_epoch).reshape(-1, per_epoch)
    assert (lrs == lrs[:, :1]).all()  # constant within each epoch, as both releases set it
    return lrs[:, 0]


# ------------------------------------------------------------------------------- GLCNet
def test_glcnet_optimiser_is_adam_with_decay_on_every_parameter():
    job = paper_job("glcnet", "pretrain.backbone=resnet18")
    method = build(job)
    optimizer = optimizer_for(method, job.pretrain)
    assert type(optimizer) is torch.optim.Adam
    assert [g["weight_decay"] for g in optimizer.param_groups] == [GLCNET["weight_decay"]]
    assert optimizer.param_groups[0]["betas"] == GLCNET["betas"]
    trained = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert trained == {id(p) for p in method.parameters() if p.requires_grad}
    cfg = paper_job("glcnet").pretrain
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.backbone) == (
        GLCNET["lr"], GLCNET["batch"], GLCNET["epochs"], "resnet50"
    )  # fmt: skip
    assert cfg.amp is False  # amp_opt_level O0
    params = job.method_params
    assert (params.temperature, params.global_weight) == (
        GLCNET["temperature"], GLCNET["lambda"]
    )  # fmt: skip


def test_glcnet_learning_rate_is_torchs_cosine_annealing_stepped_per_epoch():
    job = paper_job("glcnet", "pretrain.backbone=resnet18")
    per_epoch = POTSDAM_SSL_IMAGES // GLCNET["batch"]
    ours = lrs_per_epoch(job, build(job), per_epoch)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=GLCNET["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=GLCNET["T_max"], eta_min=GLCNET["eta_min"]
    )
    released = torch_scheduler_lrs(
        optimizer,
        scheduler,
        GLCNET["epochs"],
        lambda s, epoch: s.step(),  # main_ss.py:225
    )
    np.testing.assert_allclose(ours, released, rtol=1e-9, atol=1e-15)


def test_glcnet_contrast_equals_the_released_ntxent():
    """utils/contrast_loss.py NTXentLoss: exp(cos / tau), positive over the sum of the
    negatives only (+ eps), mean over the 2N anchors."""
    torch.manual_seed(0)
    zi, zj = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    z = F.normalize(torch.cat([zi, zj]), dim=1)
    sim = torch.exp(z @ z.T / GLCNET["temperature"])
    n = len(zi)
    pos = torch.cat([torch.diagonal(sim, n), torch.diagonal(sim, -n)])
    neg_mask = 1 - torch.eye(2 * n) - torch.eye(2 * n).roll(n, dims=1)
    neg = (sim * neg_mask).sum(dim=1)
    released = float((-torch.log(pos / (neg + 1e-8))).mean())
    params = paper_job("glcnet").method_params
    ours = nt_xent(torch.cat([zi, zj]), params.temperature, params.positive_in_denominator)
    assert float(ours) == pytest.approx(released, rel=1e-7)


# ---------------------------------------------------------------------------- multitask
@pytest.fixture(scope="module")
def multitask_r50():
    return build(paper_job("multitask"))


def test_multitask_recipe_batch_epochs_and_adam():
    job = paper_job("multitask")
    cfg = job.pretrain
    assert (cfg.batch_size, cfg.epochs, cfg.view_size) == (
        MULTITASK["batch"], MULTITASK["epochs"], MULTITASK["img_size"]
    )  # fmt: skip
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas) == (
        "adam", MULTITASK["lr"], 0.0, (0.9, 0.999)
    )  # fmt: skip
    p = job.method_params
    weights = (p.inpainting_weight, p.agr_weight, p.exemplar_weight)
    assert weights == MULTITASK["factors"]
    assert p.block_ratio == MULTITASK["cover_ratio"]
    assert (p.shortcuts, p.shortcut_crop, p.shortcut_grayscale_prob) == (
        True, MULTITASK["shortcut_crop"], MULTITASK["grayscale"]
    )  # fmt: skip
    assert (p.input_flips, p.exemplar_self_term, p.bn_batches) == (True, True, "per_input")


def test_multitask_learning_rate_is_steplr_stepped_with_the_epoch_index():
    job = paper_job("multitask", "pretrain.backbone=resnet18")
    per_epoch = POTSDAM_SSL_IMAGES // MULTITASK["batch"]
    ours = lrs_per_epoch(job, build(job), per_epoch)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=MULTITASK["lr"])
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=MULTITASK["step_size"], gamma=MULTITASK["gamma"]
    )
    with warnings.catch_warnings():  # step(epoch) is deprecated, and what the release calls
        warnings.simplefilter("ignore")
        released = torch_scheduler_lrs(  # vr_nets_inpainting_agr_examplar.py:232
            optimizer, scheduler, MULTITASK["epochs"], lambda s, epoch: s.step(epoch=epoch)
        )
    np.testing.assert_allclose(ours, released, rtol=1e-12)
    assert ours[2] == MULTITASK["lr"] and ours[3] < ours[2]  # one epoch late


def test_multitask_heads_are_the_released_ones(multitask_r50):
    method, width = multitask_r50, 2048
    agr = [type(m) for m in method.agr_head]
    assert agr == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                   nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout,
                   nn.Linear]  # fmt: skip
    convs = [m for m in method.agr_head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (2 * width, width, (3, 3)), (width, width, (3, 3))
    ]  # fmt: skip
    fcs = [m for m in method.agr_head if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(width, 2 * width), (2 * width, 6)]
    ex = method.exemplar_head
    assert [type(m) for m in ex] == [nn.Linear, nn.Sigmoid, nn.Linear]
    out = MULTITASK["examplar_out"]
    assert (ex[0].in_features, ex[0].out_features, ex[2].out_features) == (width, 2 * out, out)
    decoder = method.decoder
    assert isinstance(decoder, ReleaseInpaintingDecoder)
    widths = tuple(stage[0].out_channels for stage in decoder.stages)
    assert widths == MULTITASK["feat_channels"]
    assert (decoder.prediction.in_channels, decoder.prediction.out_channels) == (32, 3)


def test_multitask_inpainting_loss_is_on_unit_scale_images():
    """With band statistics mean 0.5, std 0.25 the network sees standardised images, but the
    weighted L1 compares reconstruction and original in [0, 1] (the release's ToTensor)."""
    job = paper_job(
        "multitask", "pretrain.backbone=resnet18", "pretrain.view_size=32",
        "multitask.input_flips=false", "multitask.shortcuts=false",
    )  # fmt: skip
    method = build(job, mean=0.5, std=0.25)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {}
    method.decoder.register_forward_hook(lambda m, i, out: seen.setdefault("rec", out))
    torch.manual_seed(1)
    corrupted, _ = method.inpainting_inputs(images)
    method.inpainting_inputs = lambda x: (corrupted, None)
    loss, logs = method.training_step(images, StepContext(0, 1, 0))
    expected = weighted_l1(seen["rec"], images, corrupted)
    assert logs["inpainting"] == pytest.approx(float(expected.detach()), rel=1e-6)
    standardised = weighted_l1(seen["rec"], (images - 0.5) / 0.25, (corrupted - 0.5) / 0.25)
    assert abs(float(standardised.detach()) - logs["inpainting"]) > 0.1  # a different quantity
    total = 20 * logs["inpainting"] + logs["agr"] + logs["exemplar"]
    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)


def test_multitask_exemplar_loss_equals_the_released_one():
    """losses/examplar_loss.py: the two latents interleaved, cosine similarities (epsilon 1)
    with the diagonal zeroed (S * (1 - I)), LogSoftmax over each row, the partner's term."""
    torch.manual_seed(0)
    pre, post = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    latent = torch.stack([pre, post], dim=1).reshape(10, -1)
    norms = latent.norm(dim=1)
    s = latent @ latent.T / (norms[:, None] * norms[None, :])
    s = s * (1 - torch.eye(10, dtype=s.dtype))
    partner = torch.zeros(10, 10, dtype=s.dtype)
    for i in range(5):
        partner[2 * i, 2 * i + 1] = partner[2 * i + 1, 2 * i] = 1
    released = float(-(torch.log_softmax(s, dim=-1) * partner).sum() / 10)
    ours = exemplar_loss(torch.cat([pre, post]), 1.0, self_term=True)
    assert float(ours) == pytest.approx(released, rel=1e-9)
    assert float(exemplar_loss(torch.cat([pre, post]), 1.0, self_term=False)) != pytest.approx(
        released, rel=1e-3
    )


def test_multitask_transformed_image_gets_the_release_shortcuts():
    job = paper_job("multitask", "pretrain.backbone=resnet18", "pretrain.view_size=32")
    method = build(job)
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = method.shortcut_transforms(images)
    changed = (out - images).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.all()  # every image is cropped (and jittered)
    gray = (out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])
    share = gray.flatten(1).all(dim=1).float().mean()
    assert 0.3 < float(share) < 0.7  # RandomGrayscale p 0.5
