"""Decoupled contrastive learning (Yeh et al., "Decoupled Contrastive Learning", ECCV 2022)
as a plugin method: SimCLR whose loss leaves the positive pair out of the denominator.

NT-Xent couples the positive and the negatives: its gradient is scaled by a factor that
shrinks when the positive is easy or the negatives are few (small batches). DCL removes
the positive from the denominator,

    L_i = -<z_i, z_p(i)> / tau + log sum_{k not in {i, p(i)}} exp(<z_i, z_k> / tau),

and DCLW weights the positive term by the von Mises-Fisher weight
``w_i = 2 - exp(<z_i, z_p(i)> / sigma) / mean_j exp(<z_j, z_p(j)> / sigma)``, which gives
more weight to the pairs that are hard (far apart) within the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from bench.config import setting
from bench.losses import nt_xent_masks, partner_index
from bench.losses.ntxent import cosine_logits
from bench.methods import StepContext, register_method
from bench.methods.simclr import SimCLR, SimCLRParams


@dataclass(frozen=True)
class DCLParams(SimCLRParams):
    """SimCLR's settings (views, projector, temperature), plus DCLW's weighting."""

    # sigma of the vMF weighting of the positive term (DCLW); 0 is plain DCL
    vmf_sigma: float = setting(0.0, ge=0)


def decoupled_contrastive_loss(
    z: torch.Tensor, temperature: float, vmf_sigma: float = 0.0
) -> torch.Tensor:
    """DCL (DCLW with ``vmf_sigma > 0``) on ``z`` = [first views; second views], ``[2N, D]``."""
    two_n = z.shape[0]
    logits = cosine_logits(z, temperature)
    positive = logits[torch.arange(two_n, device=z.device), partner_index(two_n, z.device)]
    _, negatives = nt_xent_masks(two_n, z.device)
    log_negatives = torch.logsumexp(logits + torch.log(negatives), dim=1)
    weight = torch.ones_like(positive)
    if vmf_sigma > 0:  # exp(cos / sigma) over its mean, cos = the pair's cosine
        weight = 2.0 - two_n * torch.softmax(positive * temperature / vmf_sigma, dim=0)
    return (log_negatives - weight * positive).mean()


@register_method("dcl")
class DCL(SimCLR):
    """SimCLR's views and projector; the decoupled loss."""

    Params = DCLParams
    summary = "DCL: SimCLR without the positive in the denominator (Yeh et al. 2022)"
    preset_params = SimCLR.preset_params  # the same view sizes per preset as SimCLR

    def training_step(self, images: torch.Tensor, ctx: StepContext):
        z = self.two_view_embeddings(images)
        loss = decoupled_contrastive_loss(z, self.params.temperature, self.params.vmf_sigma)
        return loss, {}
