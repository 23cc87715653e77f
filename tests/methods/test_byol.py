import pytest
import torch
import torch.nn.functional as F

from bench.config import PretrainConfig
from bench.methods import StepContext
from bench.methods.byol import BYOL, BYOLParams, byol_loss
from bench.methods.ema import cosine_momentum


def make():
    torch.manual_seed(0)
    return BYOL(
        BYOLParams(hidden_dim=32, projection_dim=16),
        PretrainConfig(batch_size=4, view_size=32),
        3,
        [0.5] * 3,
        [0.25] * 3,
    )


def test_loss_is_two_minus_two_cosine():
    p, z = torch.randn(5, 7), torch.randn(5, 7)
    expected = (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
    assert byol_loss(p, z).item() == pytest.approx(expected.item(), rel=1e-6)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)


def test_momentum_schedule_goes_from_base_to_one():
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 100, 100) == pytest.approx(1.0)


def test_target_gets_no_gradient_and_moves_by_the_schedule():
    method = make()
    target_before = [p.detach().clone() for p in method.target_projector.parameters()]
    loss, _ = method.training_step(torch.rand(4, 3, 40, 40), StepContext(3, 10, 0))
    loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    assert any(p.grad is not None for p in method.predictor.parameters())
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(0.05)
    online = [p.detach().clone() for p in method.projector.parameters()]
    method.after_optimizer_step(StepContext(3, 10, 0))
    tau = cosine_momentum(0.996, 3, 10)
    for target, old, new in zip(
        method.target_projector.parameters(), target_before, online, strict=True
    ):
        assert torch.allclose(target, tau * old + (1 - tau) * new, atol=1e-7)


def test_views_are_asymmetric():
    method = make()
    first, second = method.views
    assert first.blur.p == 1.0 and second.blur.p == 0.1
    solarize = [m for m in second.colour.children() if "Solarize" in type(m).__name__]
    assert solarize and solarize[0].p == 0.2
    assert first.colour is not None and not any(
        "Solarize" in type(m).__name__ for m in first.colour.children()
    )
