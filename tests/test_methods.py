"""Tests parametrized over the method registry: a new method is tested without new code."""

import dataclasses

import pytest
import torch

from bench.config import PretrainConfig, build_section
from bench.methods import METHODS, PretrainingMethod, StepContext
from bench.models import build_segmentation_model, load_backbone_strict

PRETRAINING = [m for m in METHODS.names() if METHODS.get(m).pretrains]
BASELINES = [m for m in METHODS.names() if not METHODS.get(m).pretrains]
TINY = PretrainConfig(batch_size=4, view_size=32)


def make(name: str, in_channels: int = 3) -> PretrainingMethod:
    cls = METHODS.get(name)
    params = build_section(cls.Params, name, cls.preset_params.get("quick"))
    torch.manual_seed(0)
    # the harness always says how many pretraining images there are (MoCo sizes its queue)
    return cls(params, TINY, in_channels, [0.5] * in_channels, [0.25] * in_channels, 1024)


@pytest.mark.parametrize("name", PRETRAINING)
@pytest.mark.parametrize("in_channels", [3, 4])
def test_step_gives_finite_loss_and_backbone_loads_strictly(name, in_channels):
    method = make(name, in_channels)
    images = torch.rand(4, in_channels, 40, 40)
    loss, logs = method.training_step(images, StepContext(step=0, total_steps=10, epoch=0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(isinstance(v, float) for v in logs.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    weights = method.backbone_state_dict()
    model = build_segmentation_model("resnet18", in_channels, num_classes=5)
    load_backbone_strict(model.encoder, weights)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("name", PRETRAINING)
def test_few_steps_lower_the_loss_on_a_fixed_batch(name):
    method = make(name)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    images = torch.rand(8, 3, 40, 40, generator=torch.Generator().manual_seed(1))

    # the same loss function before and after: buffers such as MoCo's queue of negatives
    # (which would hold these 8 images' own keys after the steps) as at the start
    initial_buffers = {k: v.clone() for k, v in method.named_buffers()}

    def loss_at_fixed_views():
        torch.manual_seed(123)  # same augmentations (and batch statistics) each time
        trained = {k: v.clone() for k, v in method.named_buffers()}
        method.load_state_dict(initial_buffers, strict=False)
        with torch.no_grad():
            loss = method.training_step(images, StepContext(0, 10, 0))[0].item()
        method.load_state_dict(trained, strict=False)
        return loss

    before = loss_at_fixed_views()
    for step in range(15):
        torch.manual_seed(123)
        loss, _ = method.training_step(images, StepContext(step, 15, 0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(StepContext(step, 15, 0))
    assert loss_at_fixed_views() < before


@pytest.mark.parametrize("name", PRETRAINING + BASELINES)
def test_params_are_frozen_dataclasses_with_summaries(name):
    cls = METHODS.get(name)
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    assert cls.summary


def test_strict_load_rejects_mismatched_weights():
    method = make("simclr")
    weights = method.backbone_state_dict()
    model = build_segmentation_model("resnet18", 3, num_classes=5)
    with pytest.raises(ValueError, match="1 missing"):
        load_backbone_strict(
            model.encoder, {k: v for k, v in weights.items() if k != "conv1.weight"}
        )
    with pytest.raises(ValueError, match="1 unexpected"):
        load_backbone_strict(model.encoder, {**weights, "fc.weight": torch.zeros(2, 2)})
    wrong = build_segmentation_model("resnet18", 4, num_classes=5)
    with pytest.raises(ValueError, match="shape"):
        load_backbone_strict(wrong.encoder, weights)


@pytest.mark.parametrize("name", ["grass", "multitask"])
def test_methods_that_reach_into_the_backbone_work_with_resnet50(name):
    cls = METHODS.get(name)
    params = build_section(cls.Params, name, cls.preset_params.get("quick"))
    if name == "grass":
        params = dataclasses.replace(params, warmup_epochs=0)  # the Grad-CAM stage
    torch.manual_seed(0)
    method = cls(
        params,
        PretrainConfig(backbone="resnet50", batch_size=2, view_size=32),
        3,
        [0.5] * 3,
        [0.25] * 3,
    )
    loss, _ = method.training_step(torch.rand(2, 3, 32, 32), StepContext(0, 1, 0))
    loss.backward()
    assert torch.isfinite(loss)
    model = build_segmentation_model("resnet50", 3, num_classes=4)
    load_backbone_strict(model.encoder, method.backbone_state_dict())
