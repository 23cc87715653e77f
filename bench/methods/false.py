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
runs in log space (``bench.losses``), so both stay finite under fp16/bf16 autocast.

The release fills the entries it does not search with the value 3 (vissl/losses/
false_loss.py:152-162). When every searched distance exceeds 3 (``S`` lies in
[e^-2, e^2] at tau 0.5, so a confident pair far from all negatives does this), the minimum
is 3 and every excluded entry ties at it; the edit then turns every negative of a confident
anchor's lower triangle into a positive (lines 163-172: only entries that are negatives
change). ``sentinel="release"`` reproduces that; ``sentinel="inf"`` excludes those entries
for good (the single closest pair is kept, the sentinel's evident intent). Either way the
step logs ``fnsd_sentinel``: 1 when the batch is in that regime.
"""

from __future__ import annotations

import math
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
    # value of the entries the global search excludes: the release's 3, or +inf (module doc)
    sentinel: Literal["inf", "release"] = setting("inf", identity="if_set")
    # the precision of the embeddings FNSD compares: "autocast" (bf16 on CUDA with
    # pretrain.amp) or "float32" (the projector outside autocast; the release trains in
    # float32 throughout, USE_AMP: False in false_1gpu_resnet.yaml:60)
    embeddings: Literal["autocast", "float32"] = setting("autocast", identity="if_set")


RELEASE_SENTINEL = 3.0  # D of the entries the release does not search (false_loss.py:153)


def fnsd_distances(logits: torch.Tensor, selection: str):
    """``log D`` for all pairs of ``2N`` views (``logits = cos / tau``), the mask of the
    entries FNSD searches, and each anchor's positive logit."""
    logits = at_least_float32(logits.detach())
    two_n = logits.shape[0]
    rows = torch.arange(two_n, device=logits.device)
    positive = logits[rows, partner_index(two_n, logits.device)]
    gap = (logits - positive[:, None]).abs()
    log_distance = torch.maximum(logits, positive[:, None]) + torch.log(-torch.expm1(-gap))
    _, negatives = nt_xent_masks(two_n, logits.device)
    candidates = negatives.bool()
    if selection == "global":
        candidates &= torch.ones_like(candidates).triu(diagonal=1)
    elif selection != "per_anchor":
        raise ValueError(f"unknown false.selection {selection!r}; valid: global, per_anchor")
    return log_distance, candidates, positive


@torch.no_grad()
def select_false_negatives(
    logits: torch.Tensor,
    temperature: float,
    threshold: float,
    selection: str = "global",
    sentinel: str = "inf",
) -> tuple[torch.Tensor, torch.Tensor]:
    """FNSD on ``logits = cos / tau`` of ``2N`` views: the selected (anchor, negative) pairs
    (with ``sentinel="release"`` and every searched distance above 3, the release's many)."""
    log_distance, candidates, positive = fnsd_distances(logits, selection)
    rows = torch.arange(len(positive), device=positive.device)
    release = sentinel == "release" and selection == "global"
    fill = math.log(RELEASE_SENTINEL) if release else float("inf")
    log_distance = log_distance.masked_fill(~candidates, fill)
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
    _, negatives = nt_xent_masks(len(positive), positive.device)
    keep = confident[anchor] & negatives.bool()[anchor, negative]  # only negatives change
    return anchor[keep], negative[keep]


@torch.no_grad()
def beyond_release_sentinel(logits: torch.Tensor, selection: str = "global") -> bool:
    """Whether every distance the global search looks at exceeds the release's sentinel 3:
    the batches where ``sentinel="release"`` and ``"inf"`` select differently."""
    log_distance, candidates, _ = fnsd_distances(logits, selection)
    searched = log_distance[candidates]
    return bool(searched.numel()) and bool((searched > math.log(RELEASE_SENTINEL)).all())


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
    # Release: the VISSL SimCLR recipe of the paper preset (false_1gpu_resnet.yaml), its
    # head without ReLU and its sentinel; common: FNSD on float32 embeddings under autocast.
    preset_params = {
        "quick": {"crop_scale": (0.2, 1.0)},
        "paper": {"projector_relu": False, "sentinel": "release"},
        "common": {"embeddings": "float32"},
    }

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        p: FALSEParams = self.params
        z = self.two_view_embeddings(images, float32_head=p.embeddings == "float32")
        logits = cosine_logits(z, p.temperature)
        anchor, negative = select_false_negatives(
            logits, p.temperature, p.positive_threshold, p.selection, p.sentinel
        )
        pos, neg = fncc_masks(z.shape[0], anchor, negative, p.alpha, z.device)
        loss = masked_contrastive_loss(logits, pos, neg)
        logs = {
            "fnsd_fired": float(anchor.numel() > 0),
            "fnsd_pairs": float(anchor.numel()),
            "fnsd_sentinel": float(beyond_release_sentinel(logits, p.selection)),
        }
        if anchor.numel():  # cosine of the selected pair(s), to see what FNSD picks
            logs["fnsd_cos"] = float(logits.detach()[anchor, negative].mean()) * p.temperature
        return loss, logs
