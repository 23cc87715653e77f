import pytest
import torch
import torch.nn.functional as F

from bench.config import PretrainConfig
from bench.losses import nt_xent
from bench.methods import StepContext
from bench.methods.multitask import (
    TRANSFORMS,
    Multitask,
    MultitaskParams,
    apply_transform,
    undo_transform,
    weighted_l1,
)


def make(in_channels=3, **params):
    torch.manual_seed(0)
    params = {"decoder_channels": (32, 16, 16, 8, 8), **params}
    return Multitask(
        MultitaskParams(**params),
        PretrainConfig(batch_size=4, view_size=32),
        in_channels,
        [0.5] * in_channels,
        [0.25] * in_channels,
    )


def test_transforms_are_six_distinct_and_undone_exactly():
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    outputs = [apply_transform(image, t) for t in range(len(TRANSFORMS))]
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 6
    for t, out in enumerate(outputs):
        assert torch.equal(undo_transform(out, t), image)


def test_agr_label_always_matches_the_transform_applied():
    method = make()
    torch.manual_seed(3)
    images = torch.rand(64, 3, 8, 8)
    transformed, labels = method.transformed_inputs(images)
    assert set(labels.tolist()) == set(range(6))
    for image, out, label in zip(images, transformed, labels, strict=True):
        assert torch.equal(undo_transform(out, int(label)), image)


def test_inpainting_block_and_weight_map():
    method = make(in_channels=4)
    torch.manual_seed(1)
    images = torch.rand(16, 4, 30, 30)
    corrupted, masks = method.inpainting_inputs(images)
    outside = masks.expand_as(images) == 0
    assert torch.equal(corrupted[outside], images[outside])  # untouched outside the block
    weight = (images - corrupted).abs()
    assert (weight[outside] == 0).all() and (weight.sum(dim=(1, 2, 3)) > 0).all()
    sides = masks.sum(dim=(1, 2, 3)).sqrt()
    assert ((sides >= round(0.2 * 30)) & (sides <= round(30 / 3))).all()  # square blocks
    # the near-infrared band is moved with the block but never colour-jittered
    for i in range(16):
        inside = masks[i, 0] == 1
        assert sorted(corrupted[i, 3][inside].tolist()) == sorted(images[i, 3][inside].tolist())


def test_weighted_l1_matches_formula():
    target, corrupted, prediction = torch.rand(3, 2, 3, 6, 6).unbind(0)
    corrupted = torch.where(torch.rand(2, 3, 6, 6) < 0.5, target, corrupted)
    w = (target - corrupted).abs()
    expected = (w * (prediction - target).abs()).sum() / w.sum()
    assert weighted_l1(prediction, target, corrupted).item() == pytest.approx(expected.item())
    assert weighted_l1(prediction, target, target).item() == 0.0  # nothing corrupted


def test_total_loss_is_the_weighted_sum_of_its_terms():
    method = make(inpainting_weight=20.0, agr_weight=1.0, exemplar_weight=1.0)
    torch.manual_seed(2)
    loss, logs = method.training_step(torch.rand(4, 3, 40, 40), StepContext(0, 1, 0))
    expected = 20 * logs["inpainting"] + logs["agr"] + logs["exemplar"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["agr"] > 0 and logs["inpainting"] > 0


def test_exemplar_head_and_loss_shapes():
    method = make()
    head = method.exemplar_head
    assert isinstance(head[1], torch.nn.Sigmoid)
    assert (head[0].out_features, head[2].out_features) == (1024, 512)
    z = head(torch.randn(8, 512))
    assert nt_xent(z, 1.0).item() == pytest.approx(
        nt_xent(F.normalize(z, dim=1) * 3, 1.0).item(), rel=1e-5
    )  # cosine similarities: scale of z does not matter
