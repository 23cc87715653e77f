"""MoCo v2 and BYOL under ``--preset paper``, and MoCo's queue sized from the data.

MoCo transcription from facebookresearch/moco ``main_moco.py`` (SGD over
``model.parameters()`` with weight decay, ``adjust_learning_rate`` with ``--cos``, MoCo v2
``--aug-plus`` views); queue sizes from MoCo (65,536 for ImageNet's 1.28 M images) and G-RSIM
(``T-SS-GLCNet/models/__init__.py``: 2,048 for Potsdam's 13,824). BYOL from Grill et al.
2020, sec. 3.3 and appendix C (LARS without adaptation or decay of biases and BN).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm.optim
import torch
from preset_jobs import build
from preset_jobs import preset_job as paper_job
from torch import nn

from bench.config import ConfigError
from bench.methods.moco import moco_queue_size
from bench.pretrain import optimizer_for, phase_schedule
from bench.sweep import SweepSpec, check_data, plan

MOCO = {"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200, "batch": 256}
MOCO_V2_VIEWS = {"scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "p": 0.8, "gray": 0.2}


def test_moco_optimiser_and_per_epoch_cosine_are_moco_v2s():
    job = paper_job("moco", "pretrain.backbone=resnet18")
    method = build(job, train_size=13824)
    optimizer = optimizer_for(method, job.pretrain)
    assert type(optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in optimizer.param_groups] == [MOCO["weight_decay"]]
    assert optimizer.param_groups[0]["momentum"] == MOCO["momentum"]
    per_epoch = 13824 // MOCO["batch"]
    lrs = phase_schedule(job.pretrain, method.phase_epochs(), per_epoch).reshape(-1, per_epoch)
    released = [
        MOCO["lr"] * 0.5 * (1.0 + math.cos(math.pi * e / MOCO["epochs"]))
        for e in range(MOCO["epochs"])
    ]
    np.testing.assert_allclose(lrs, np.repeat(np.array(released)[:, None], per_epoch, axis=1))
    recipe = method.views.recipe
    assert recipe.crop_scale == MOCO_V2_VIEWS["scale"]
    assert recipe.jitter == MOCO_V2_VIEWS["jitter"]
    assert (recipe.jitter_prob, recipe.grayscale_prob) == (MOCO_V2_VIEWS["p"], 0.2)


@pytest.mark.parametrize(
    ("images", "queue"), [(13824, 2048), (1_281_167, 65536), (1024, 128), (2048, 256)]
)
def test_moco_queue_is_sized_from_the_pretraining_images(images, queue):
    assert moco_queue_size(None, 64, images) == queue  # Potsdam: G-RSIM's; ImageNet: MoCo's
    job = paper_job("moco", "pretrain.backbone=resnet18", "pretrain.batch_size=64")
    method = build(job, train_size=images)
    assert method.queue.shape[0] == queue and method.resolved_settings() == {"queue_size": queue}


def test_an_explicit_queue_not_smaller_than_the_images_is_refused_with_the_numbers(tmp_path):
    with pytest.raises(ConfigError, match="moco.queue_size=1024 is not smaller than the 1024"):
        moco_queue_size(1024, 64, 1024)
    spec = SweepSpec(
        methods=("moco",), fractions=(0.1,), seeds=(0,), overrides=("moco.queue_size=4096",)
    )  # fmt: skip  (quick: 1,024 images)
    with pytest.raises(ConfigError, match="4096 is not smaller than the 1024 pretraining"):
        check_data(plan(spec), tmp_path)
    assert moco_queue_size(512, 64, 1024) == 512


def test_byol_lars_leaves_bias_and_batch_norm_alone():
    job = paper_job("byol", "pretrain.backbone=resnet18")
    method = build(job)
    optimizer = optimizer_for(method, job.pretrain)
    assert isinstance(optimizer, timm.optim.Lars)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    adapt = {g["always_adapt"] for g in optimizer.param_groups}
    assert adapt == {False}  # only groups with weight decay are adapted
    for module in method.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            excluded = isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias"
            assert decay_of[id(param)] == (0.0 if excluded else 1.5e-6), (module, name)
    assert job.pretrain.lr * job.pretrain.batch_size / 256 == pytest.approx(0.2)
