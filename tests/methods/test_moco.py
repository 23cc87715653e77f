import numpy as np
import pytest
import torch

from bench.config import PretrainConfig
from bench.methods import StepContext
from bench.methods.moco import MoCo, MoCoParams, moco_loss


def make(queue_size=16, momentum=0.9, batch_size=4):
    torch.manual_seed(0)
    return MoCo(
        MoCoParams(queue_size=queue_size, momentum=momentum, projector_dim=8),
        PretrainConfig(batch_size=batch_size, view_size=32),
        3,
        [0.5] * 3,
        [0.25] * 3,
    )


def test_loss_matches_infonce_formula():
    rng = np.random.default_rng(0)
    q, k, queue = (rng.normal(size=s) for s in [(4, 6), (4, 6), (10, 6)])
    q, k, queue = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, k, queue))
    tau = 0.2
    expected = np.mean(
        [
            -np.log(
                np.exp(q[i] @ k[i] / tau)
                / (np.exp(q[i] @ k[i] / tau) + np.exp(queue @ q[i] / tau).sum())
            )
            for i in range(4)
        ]
    )
    got = moco_loss(*(torch.from_numpy(x) for x in (q, k, queue)), tau)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_key_encoder_gets_no_gradient_and_follows_momentum_rule():
    method = make(momentum=0.9)
    images = torch.rand(4, 3, 40, 40)
    before_key = [p.detach().clone() for p in method.key_backbone.parameters()]
    loss, _ = method.training_step(images, StepContext(0, 10, 0))
    loss.backward()
    assert all(p.grad is None for p in method.key_backbone.parameters())
    assert all(p.grad is None for p in method.key_projector.parameters())
    assert all(not p.requires_grad for p in method.key_backbone.parameters())
    with torch.no_grad():  # stand-in for an optimiser step on the query encoder
        for p in method.backbone.parameters():
            p.add_(0.01)
    online = [p.detach().clone() for p in method.backbone.parameters()]
    method.after_optimizer_step(StepContext(0, 10, 0))
    for key, old, new in zip(method.key_backbone.parameters(), before_key, online, strict=True):
        assert torch.allclose(key, 0.9 * old + 0.1 * new, atol=1e-7)


def test_queue_holds_last_k_keys_in_order():
    method = make(queue_size=10)
    batches = [torch.full((4, 8), float(i)) for i in range(1, 5)]  # 16 keys > K = 10
    for keys in batches:
        method.enqueue(keys)
    # ring buffer: positions hold keys 7..16 of the stream, oldest overwritten first
    stream = torch.cat(batches)[:, 0]
    ptr = int(method.queue_ptr)
    assert ptr == 16 % 10
    ordered = torch.cat([method.queue[ptr:], method.queue[:ptr]])[:, 0]
    assert torch.equal(ordered, stream[-10:])


def test_step_enqueues_this_steps_keys_after_the_optimiser_step():
    method = make(queue_size=16)
    queue_before = method.queue.clone()
    loss, _ = method.training_step(torch.rand(4, 3, 40, 40), StepContext(0, 10, 0))
    assert torch.equal(method.queue, queue_before)  # not during the step
    keys = method._pending_keys.clone()
    loss.backward()
    method.after_optimizer_step(StepContext(0, 10, 0))
    assert torch.allclose(method.queue[:4], keys) and int(method.queue_ptr) == 4
    assert torch.allclose(method.queue[:4].norm(dim=1), torch.ones(4))


def test_queue_must_exceed_batch():
    with pytest.raises(ValueError, match="queue_size"):
        make(queue_size=4, batch_size=4)
