"""NT-Xent / InfoNCE with explicit positive and negative masks.

SimCLR (Chen et al., ICML 2020, eq. 1): for ``2N`` L2-normalised embeddings ``z`` and
``S = exp(z z^T / tau)``, anchor ``i`` has the positive ``S[i, p(i)]`` with
``p(i) = (i + N) mod 2N`` and negatives ``S[i, j]``, ``j not in {i, p(i)}``;
``L = -mean_i log(pos_i / (pos_i + sum neg_i))``.

The core takes *weighted* masks ``P`` and ``Q`` so FALSE (Zhang et al., GRSL 2022) can move a
false negative partly into the positives (``alpha * S`` up, ``(1 - alpha) * S`` stays down),
GraSS can reuse it, and GLCNet's variant can leave the positive out of the denominator:

    L_i = -log( sum_j P_ij S_ij / (sum_j P_ij S_ij + sum_j Q_ij S_ij) )

It works in log space (``logsumexp`` over ``log(mask) + logits``) in float32, so it stays
finite under fp16/bf16 autocast and for small temperatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.precision import at_least_float32


def partner_index(two_n: int, device: torch.device | None = None) -> torch.Tensor:
    """``p(i) = (i + N) mod 2N``: views are stacked as [all first views, all second views]."""
    if two_n < 2 or two_n % 2:
        raise ValueError(f"need an even number >= 2 of embeddings (two views), got {two_n}")
    return (torch.arange(two_n, device=device) + two_n // 2) % two_n


def nt_xent_masks(
    two_n: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's masks: ``P`` one-hot on the partner view, ``Q`` on every other view."""
    eye = torch.eye(two_n, device=device)
    pos = torch.zeros(two_n, two_n, device=device)
    pos[torch.arange(two_n, device=device), partner_index(two_n, device)] = 1.0
    neg = 1.0 - eye - pos
    return pos, neg


def cosine_logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``cos(z_i, z_j) / tau`` for all pairs, in float32."""
    z = F.normalize(at_least_float32(z), dim=1)
    return z @ z.T / temperature


def masked_contrastive_loss(
    logits: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    positive_in_denominator: bool = True,
) -> torch.Tensor:
    """Mean over anchors of ``-log(sum P e^l / (sum P e^l + sum Q e^l))``.

    With ``positive_in_denominator=False`` (GLCNet's variant) the denominator is
    ``sum Q e^l`` only. Masks are non-negative weights of the same shape as ``logits``;
    every anchor needs a positive weight > 0.
    """
    logits = at_least_float32(logits)
    log_pos = torch.logsumexp(logits + torch.log(pos_mask.to(logits.dtype)), dim=1)
    denominator = neg_mask + pos_mask if positive_in_denominator else neg_mask
    log_den = torch.logsumexp(logits + torch.log(denominator.to(logits.dtype)), dim=1)
    return (log_den - log_pos).mean()


def nt_xent(
    z: torch.Tensor, temperature: float = 0.5, positive_in_denominator: bool = True
) -> torch.Tensor:
    """SimCLR's NT-Xent on ``z`` = [first views; second views], shape ``[2N, D]``; with
    ``positive_in_denominator=False`` GLCNet's variant ``-log(e^pos / sum_neg e^neg)``."""
    pos, neg = nt_xent_masks(z.shape[0], z.device)
    return masked_contrastive_loss(
        cosine_logits(z, temperature), pos, neg, positive_in_denominator=positive_in_denominator
    )
