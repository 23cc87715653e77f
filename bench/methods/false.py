"""FALSE (Zhang et al., "FALSE: False Negative Samples Aware Contrastive Learning for Semantic
Segmentation of High-Resolution Remote Sensing Image", IEEE GRSL 2022).

SimCLR's template (views, projector, NT-Xent, optimiser) plus two edits of the positive and
negative masks at every step:

1. FNSD, coarse determination of a false negative. With ``S = exp(cos / tau)``, the distance
   ``D[i, j] = |S[i, j] - S[i, p(i)]|`` says how close negative ``j`` is to anchor ``i``'s own
   positive pair. ``selection="global"`` (default) is the released implementation: ``D`` is
   searched over the upper triangle only (``j > i``, the partner excluded), the single
   global minimum of the whole batch is kept (exact ties, a measure-zero event, are all kept
   as the release's ``torch.where(D == D.min())`` does), and it is used only if that anchor's
   positive pair is confident, ``cos(z_a, z_p(a)) >= T``. ``selection="per_anchor"`` is the
   determination as the paper's text describes it: every anchor whose positive pair is
   confident picks its own candidate among all its negatives.
2. FNCC, confidence calibration: the selected pair ``(a, j)`` adds ``alpha * S[a, j]`` to the
   anchor's positives and keeps ``(1 - alpha) * S[a, j]`` among its negatives (only row
   ``a`` changes, as in the release).

``D`` is compared through ``log D = max(l_ij, l_ip) + log(1 - exp(-|l_ij - l_ip|))`` with
``l = cos / tau``, which orders pairs exactly as ``D`` does but cannot overflow, and the loss
runs in log space (``bench.losses``), so both stay finite under fp16/bf16 autocast. The
release's sentinel value 3 for excluded entries is replaced by +inf (its intent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.config import setting
from bench.losses import masked_contrastive_loss, nt_xent_masks, partner_index
from bench.losses.ntxent import cosine_logits
from bench.methods.base import StepContext, register_method
from bench.methods.simclr import SimCLR, SimCLRParams
from bench.precision import at_least_float32


@dataclass(frozen=True)
class FALSEParams(SimCLRParams):
    # FNCC confidence weight, 0 < alpha <= 1 (FALSE sec. II-C; release: 1)
    alpha: float = setting(1.0, gt=0, le=1)
    # T: a positive pair is confident if its cosine >= T (sec. II-B)
    positive_threshold: float = setting(0.9, ge=-1, le=1)
    selection: Literal["global", "per_anchor"] = "global"  # global = the released code


@torch.no_grad()
def select_false_negatives(
    logits: torch.Tensor, temperature: float, threshold: float, selection: str = "global"
) -> tuple[torch.Tensor, torch.Tensor]:
    """FNSD on ``logits = cos / tau`` of ``2N`` views: the selected (anchor, negative) pairs."""
    logits = at_least_float32(logits.detach())
    two_n = logits.shape[0]
    rows = torch.arange(two_n, device=logits.device)
    partner = partner_index(two_n, logits.device)
    positive = logits[rows, partner]
    gap = (logits - positive[:, None]).abs()
    log_distance = torch.maximum(logits, positive[:, None]) + torch.log(-torch.expm1(-gap))
    _, negatives = nt_xent_masks(two_n, logits.device)
    candidates = negatives.bool()
    if selection == "global":
        candidates &= torch.ones_like(candidates).triu(diagonal=1)
    elif selection != "per_anchor":
        raise ValueError(f"unknown false.selection {selection!r}; valid: global, per_anchor")
    log_distance = log_distance.masked_fill(~candidates, float("inf"))
    confident = positive * temperature >= threshold
    if selection == "global":
        best = log_distance.min()
        if best == float("inf"):  # no candidate at all (a batch of one image)
            return rows[:0], rows[:0]
        anchor, negative = torch.where(log_distance == best)
    else:
        best_per_row, negative = log_distance.min(dim=1)
        anchor = torch.where(best_per_row < float("inf"))[0]
        negative = negative[anchor]
    keep = confident[anchor]
    return anchor[keep], negative[keep]


def fncc_masks(
    two_n: int, anchor: torch.Tensor, negative: torch.Tensor, alpha: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's masks with each selected pair moved: ``P = alpha``, ``Q = 1 - alpha``."""
    pos, neg = nt_xent_masks(two_n, device)
    pos[anchor, negative] = alpha
    neg[anchor, negative] = 1.0 - alpha
    return pos, neg


@register_method("false")
class FALSE(SimCLR):
    """SimCLR with false-negative self-determination and confidence calibration."""

    Params = FALSEParams
    summary = "FALSE: SimCLR with false-negative determination and calibration (Zhang 2022)"

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        p: FALSEParams = self.params
        z = self.two_view_embeddings(images)
        logits = cosine_logits(z, p.temperature)
        anchor, negative = select_false_negatives(
            logits, p.temperature, p.positive_threshold, p.selection
        )
        pos, neg = fncc_masks(z.shape[0], anchor, negative, p.alpha, z.device)
        loss = masked_contrastive_loss(logits, pos, neg)
        logs = {"fnsd_fired": float(anchor.numel() > 0), "fnsd_pairs": float(anchor.numel())}
        if anchor.numel():  # cosine of the selected pair(s), to see what FNSD picks
            logs["fnsd_cos"] = float(logits.detach()[anchor, negative].mean()) * p.temperature
        return loss, logs
