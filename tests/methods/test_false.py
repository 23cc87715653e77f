import numpy as np
import pytest
import torch

from bench.config import ConfigError, PretrainConfig, build_section
from bench.losses import masked_contrastive_loss, nt_xent
from bench.losses.ntxent import cosine_logits
from bench.methods import StepContext
from bench.methods.false import FALSE, FALSEParams, fncc_masks, select_false_negatives


def release_selection(z: np.ndarray, tau: float, threshold: float) -> set[tuple[int, int]]:
    """The released FNSD loop, literally: exp similarities, upper triangle from the
    diagonal with sentinels on the diagonal and the partner, all pairs equal to the global
    minimum, kept if the anchor's positive cosine (log(S) * tau) reaches the threshold."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = np.exp(z @ z.T / tau)
    b = len(z)
    half = b // 2
    diff = np.full((b, b), 3.0)
    pos = np.zeros(b)
    for i in range(b):
        pos[i] = s[i, i - half] if i >= half else s[i, i + half]
        diff[i, i:] = np.abs(s[i, i:] - pos[i])
        diff[i, i] = 3.0
        if i < half:
            diff[i, i + half] = 3.0
    rows, cols = np.where(diff == diff.min())
    return {
        (int(a), int(j))
        for a, j in zip(rows, cols, strict=True)
        if np.log(pos[a]) * tau >= threshold
    }


def release_selection_from_cos(cos: np.ndarray, tau: float, threshold: float):
    """``release_selection`` for a given cosine matrix (through a Gram factorisation)."""
    values, vectors = np.linalg.eigh(cos)
    z = vectors * np.sqrt(np.clip(values, 0, None))
    return release_selection(z, tau, threshold)


def clustered_embeddings(seed: int, n: int = 6, dim: int = 8) -> torch.Tensor:
    """Two views per image, close together (confident positives); images 0 and 1 similar."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=g, dtype=torch.float64)
    base[1] = base[0] + 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)
    views = [base + 0.05 * torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    return torch.cat(views)


@pytest.mark.parametrize("seed", range(6))
def test_global_selection_matches_the_release_loop(seed):
    z = clustered_embeddings(seed)
    tau, threshold = 0.5, 0.9
    anchor, negative = select_false_negatives(cosine_logits(z, tau).double(), tau, threshold)
    expected = release_selection(z.numpy(), tau, threshold)
    assert set(zip(anchor.tolist(), negative.tolist(), strict=True)) == expected
    assert expected  # these embeddings do make FNSD fire


def test_hand_built_similarities_pick_the_closest_negative_in_the_upper_triangle():
    # 2N = 4: anchors 0, 1 with partners 2, 3; S = exp(cos / tau), tau = 0.5.
    cos = torch.tensor(
        [[1.0, 0.90, 0.95, 0.10],
         [0.90, 1.0, 0.20, 0.90],
         [0.95, 0.20, 1.0, 0.40],
         [0.10, 0.90, 0.40, 1.0]],
        dtype=torch.float64,
    )  # fmt: skip
    tau = 0.5
    # Upper triangle: |S01 - S02| = |e^1.8 - e^1.9| is the smallest distance; cos(0, 2) = .95.
    anchor, negative = select_false_negatives(cos / tau, tau, 0.9)
    assert (anchor.tolist(), negative.tolist()) == ([0], [1])
    # A higher threshold makes that anchor unconfident: nothing is selected.
    assert select_false_negatives(cos / tau, tau, 0.96)[0].numel() == 0
    # Per anchor, each confident anchor takes its own closest negative (whole row): row 1's
    # S10 equals its positive S13 exactly; rows 2 and 3 pick each other.
    anchor, negative = select_false_negatives(cos / tau, tau, 0.9, "per_anchor")
    assert sorted(zip(anchor.tolist(), negative.tolist(), strict=True)) == [
        (0, 1),
        (1, 0),
        (2, 3),
        (3, 2),
    ]


def test_global_minimum_at_an_unconfident_anchor_selects_nothing():
    # As in the release: the global arg-min comes first, the confidence check second.
    cos = torch.tensor(
        [[1.0, 0.90, 0.95, 0.10],
         [0.90, 1.0, 0.20, 0.30],
         [0.95, 0.20, 1.0, 0.40],
         [0.10, 0.30, 0.40, 1.0]],
        dtype=torch.float64,
    )  # fmt: skip
    # |S12 - S13| = |e^0.4 - e^0.6| is the global minimum, but cos(1, 3) = 0.3 < T.
    assert select_false_negatives(cos / 0.5, 0.5, 0.9)[0].numel() == 0
    assert release_selection_from_cos(cos.numpy(), 0.5, 0.9) == set()


def test_without_a_confident_pair_the_loss_is_simclr_exactly():
    method = make(alpha=0.5)
    torch.manual_seed(5)
    images = torch.rand(4, 3, 40, 40)
    torch.manual_seed(9)
    loss, logs = method.training_step(images, StepContext(0, 1, 0))
    assert logs["fnsd_fired"] == 0.0  # at random init no selected anchor reaches T = 0.9
    torch.manual_seed(9)
    z = method.two_view_embeddings(images)
    assert torch.equal(loss, nt_xent(z, method.params.temperature))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_fncc_values_follow_the_formula(alpha):
    z = clustered_embeddings(0)
    tau = 0.5
    logits = cosine_logits(z, tau).double()
    anchor, negative = select_false_negatives(logits, tau, 0.9)
    assert anchor.numel() == 1
    a, j = int(anchor), int(negative)
    pos, neg = fncc_masks(12, anchor, negative, alpha)
    got = masked_contrastive_loss(logits, pos.double(), neg.double())
    s = torch.exp(logits)
    per_anchor = []
    for i in range(12):
        p = (i + 6) % 12
        numerator = s[i, p] + (alpha * s[a, j] if i == a else 0.0)
        negatives = sum(s[i, k] for k in range(12) if k not in (i, p))
        negatives = negatives - (alpha * s[a, j] if i == a else 0.0)
        per_anchor.append(-torch.log(numerator / (numerator + negatives)))
    assert got.item() == pytest.approx(torch.stack(per_anchor).mean().item(), rel=1e-6)
    plain = masked_contrastive_loss(
        logits, *(m.double() for m in fncc_masks(12, anchor[:0], negative[:0], alpha))
    )
    assert got.item() < plain.item()  # a negative became (partly) positive


def test_alpha_is_validated_with_a_clear_error():
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="0 < alpha <= 1"):
            build_section(FALSEParams, "false", {"alpha": bad})
    assert build_section(FALSEParams, "false", {"alpha": "0.9"}).alpha == 0.9


def test_batch_of_one_image_and_half_precision_and_gradients():
    z = torch.randn(2, 16, requires_grad=True)
    anchor, _ = select_false_negatives(cosine_logits(z, 0.5), 0.5, 0.9)
    assert anchor.numel() == 0
    big = (torch.randn(64, 128) * 100).half().requires_grad_(True)
    logits = cosine_logits(big, 0.01)  # cos / tau up to 100: exp would overflow fp16 and fp32
    anchor, negative = select_false_negatives(logits, 0.01, -1.0)  # every positive confident
    assert anchor.numel() >= 1
    pos, neg = fncc_masks(64, anchor, negative, 0.7)
    loss = masked_contrastive_loss(logits, pos, neg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


def make(**params) -> FALSE:
    torch.manual_seed(0)
    return FALSE(
        FALSEParams(**params), PretrainConfig(batch_size=4, view_size=32), 3, [0.5] * 3, [0.25] * 3
    )


def test_step_logs_and_per_anchor_option():
    method = make(selection="per_anchor", positive_threshold=-1.0)
    loss, logs = method.training_step(torch.rand(4, 3, 40, 40), StepContext(0, 1, 0))
    assert logs["fnsd_fired"] == 1.0 and logs["fnsd_pairs"] == 8.0  # every anchor picks one
    assert -1.0 <= logs["fnsd_cos"] <= 1.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_float32_embeddings_under_autocast():
    """``embeddings="float32"`` runs the projector outside autocast, so FNSD compares float32
    embeddings (as the release, which trains in float32); "autocast" leaves them in bf16."""
    torch.manual_seed(0)
    method = FALSE(
        FALSEParams(crop_scale=(0.5, 1.0)), PretrainConfig(batch_size=4, view_size=32), 3,
        [0.5] * 3, [0.25] * 3,
    )  # fmt: skip
    images = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert method.two_view_embeddings(images).dtype == torch.bfloat16
        assert method.two_view_embeddings(images, float32_head=True).dtype == torch.float32
