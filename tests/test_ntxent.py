import numpy as np
import pytest
import torch

from bench.losses import masked_contrastive_loss, nt_xent, nt_xent_masks, partner_index
from bench.losses.ntxent import cosine_logits


def numpy_nt_xent(z: np.ndarray, tau: float) -> float:
    """SimCLR eq. 1 written out directly: exp similarities, partner positive, rest negative."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    two_n = len(z)
    s = np.exp(z @ z.T / tau)
    losses = []
    for i in range(two_n):
        p = (i + two_n // 2) % two_n
        negatives = sum(s[i, j] for j in range(two_n) if j not in (i, p))
        losses.append(-np.log(s[i, p] / (s[i, p] + negatives)))
    return float(np.mean(losses))


@pytest.mark.parametrize("n,dim,tau", [(1, 3, 0.5), (4, 8, 0.5), (5, 16, 0.1), (8, 4, 1.0)])
def test_nt_xent_matches_numpy_formula(n, dim, tau):
    z = torch.randn(2 * n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = numpy_nt_xent(z.numpy(), tau)
    assert nt_xent(z, tau).item() == pytest.approx(expected, rel=1e-5)


def test_partner_index_and_masks():
    assert partner_index(6).tolist() == [3, 4, 5, 0, 1, 2]
    pos, neg = nt_xent_masks(4)
    assert pos.sum(1).tolist() == [1, 1, 1, 1]
    assert neg.diagonal().sum() == 0 and (pos * neg).sum() == 0
    assert (pos + neg + torch.eye(4)).eq(1).all()
    with pytest.raises(ValueError):
        partner_index(3)


def test_weighted_masks_follow_formula():
    """A negative moved partly into the positives: alpha*S up, (1-alpha)*S stays down."""
    z = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tau, alpha, a, j = 0.5, 0.7, 0, 2
    logits = cosine_logits(z, tau).double()
    pos, neg = nt_xent_masks(6)
    pos, neg = pos.double(), neg.double()
    pos[a, j], neg[a, j] = alpha, 1 - alpha
    s = torch.exp(logits)
    per_anchor = []
    for i in range(6):
        num = (pos[i] * s[i]).sum()
        per_anchor.append(-torch.log(num / (num + (neg[i] * s[i]).sum())))
    expected = torch.stack(per_anchor).mean()
    assert masked_contrastive_loss(logits, pos, neg).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_positive_out_of_denominator_variant():
    z = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits = cosine_logits(z, 0.5).double()
    pos, neg = nt_xent_masks(8)
    s = torch.exp(logits)
    expected = -torch.log((pos * s).sum(1) / (neg * s).sum(1)).mean()
    got = masked_contrastive_loss(logits, pos, neg, positive_in_denominator=False)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_finite_for_tiny_temperature_and_half_inputs():
    z = torch.randn(16, 32).half()
    loss = nt_xent(z, temperature=0.01)
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_gradient_flows_and_identical_views_give_lower_loss():
    base = torch.randn(4, 8)
    same = torch.cat([base, base]).requires_grad_(True)
    loss_same = nt_xent(same, 0.5)
    loss_same.backward()
    assert same.grad is not None and same.grad.abs().sum() > 0
    random_pairs = torch.cat([base, torch.randn(4, 8)])
    assert loss_same.item() < nt_xent(random_pairs, 0.5).item()
