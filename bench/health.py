"""Health signals of a pretraining: is the representation collapsing while the loss falls?

Pretraining losses are a poor guide to the representation: a SimCLR run can lose 30% of its
loss while its embeddings collapse to one point. At the end of every epoch the pretraining
loop (:mod:`bench.pretrain`) runs one *health pass* on a fixed batch of ``pretrain.
health_images`` pretraining images, drawn once per run (seeded), outside the training step:
under ``torch.no_grad``, the method in eval mode (BN uses its running statistics, as a
fine-tuning that loads the backbone sees it), then back to train mode, and inside a forked
random state so the pass changes nothing the training draws. The embeddings are the method's
:meth:`~bench.methods.PretrainingMethod.embed` (globally pooled backbone features), L2
normalised; the two views are the method's own
(:meth:`~bench.methods.PretrainingMethod.health_views`). The signals:

- ``embedding_std``: the mean over dimensions of the standard deviation (over the batch) of
  the normalised embeddings of the unaugmented images; 0 when every image maps to the same
  point. SimSiam (Chen & He, CVPR 2021, sec. 4.1, fig. 2) monitors exactly this and compares
  it with ``1/sqrt(d)``, the value of embeddings spread uniformly over the unit sphere; the
  collapse threshold ``pretrain.collapse_std`` is in those units.
- ``effective_rank``: ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of
  the matrix of normalised embeddings (Roy & Vetterli, EUSIPCO 2007, def. 1; RankMe, Garrido
  et al., ICML 2023, uses it uncentred as here): 1 for a collapse to one point, up to
  ``min(n, d)``; a small rank with a healthy std is a dimensional collapse.
- ``alignment``: ``E ||f(x) - f(x+)||^2`` over two views of each image, and ``uniformity``:
  ``log E exp(-2 ||f(x) - f(y)||^2)`` over distinct images (Wang & Isola, ICML 2020, eq. 4-5,
  with their alpha = 2 and t = 2); uniformity is averaged over the two views' sets, as their
  training code does. A collapse has alignment 0 and uniformity 0 (its maximum).
- ``knn_accuracy``: leave-one-out weighted k-NN accuracy on the same batch, each image
  labelled by its most frequent class (ignored pixels left out), neighbours voting with
  ``exp(cos / 0.07)`` (Wu et al., CVPR 2018, sec. 3.4; k = 20, solo-learn's default, as the
  batch is small), with ``knn_chance`` (the most frequent label's share) beside it; only for
  data with masks.

An epoch is *collapsed* when ``embedding_std * sqrt(d) < pretrain.collapse_std`` or the
embeddings are not finite; with ``pretrain.fail_fast_epochs = N`` a run collapsed for N
consecutive epochs stops with :class:`~bench.collapse.CollapseError` (a failed record naming
the signal and the epochs), and its fine-tunings are skipped. That rule, and the notes
``status`` and the report show, are in :mod:`bench.collapse`, which reads the logged signals
without importing torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SIGNALS = ("embedding_std", "effective_rank", "alignment", "uniformity", "knn_accuracy")
ALIGNMENT_ALPHA = 2  # Wang & Isola 2020, sec. 4.1 and their experiments
UNIFORMITY_T = 2
KNN_K = 20  # solo-learn's WeightedKNNClassifier default (Wu et al. use 200 on ImageNet)
KNN_TEMPERATURE = 0.07  # Wu et al. 2018, sec. 3.4


# ----------------------------------------------------------------------------------------
# The signals: each on L2-normalised embeddings [n, d]
# ----------------------------------------------------------------------------------------
def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the population standard deviation over rows."""
    return float(z.std(dim=0, correction=0).mean())


def effective_rank(z: torch.Tensor) -> float:
    """``exp`` of the entropy of the singular values normalised to sum 1 (``0 log 0 = 0``);
    0 for an all-zero matrix."""
    s = torch.linalg.svdvals(z.double())
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = ALIGNMENT_ALPHA) -> float:
    """``mean_i ||z1_i - z2_i||^alpha`` over the positive pairs (row i of each)."""
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = UNIFORMITY_T) -> float:
    """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` over the distinct pairs of rows."""
    squared = torch.cdist(z.double(), z.double()).pow(2)
    i, j = torch.triu_indices(len(z), len(z), offset=1)
    return float(torch.log(torch.exp(-t * squared[i, j]).mean()))


def knn_accuracy(
    z: torch.Tensor, labels: torch.Tensor, k: int = KNN_K, temperature: float = KNN_TEMPERATURE
) -> float:
    """Leave-one-out accuracy of the weighted k-NN vote (cosine similarity, weights
    ``exp(sim / temperature)``) over the rows whose label is >= 0."""
    keep = labels >= 0
    z, labels = z[keep], labels[keep]
    n = len(z)
    if n < 2:
        return math.nan
    similarity = z @ z.T
    similarity.fill_diagonal_(-math.inf)  # leave each image out of its own vote
    top, index = similarity.topk(min(k, n - 1), dim=1)
    votes = torch.zeros(n, int(labels.max()) + 1, dtype=z.dtype)
    votes.scatter_add_(1, labels[index], torch.exp(top / temperature))
    return float((votes.argmax(dim=1) == labels).float().mean())


def dominant_labels(masks: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Each mask's most frequent class (ties: the lowest), -1 when every pixel is ignored."""
    flat = masks.reshape(len(masks), -1).long()
    valid = (flat != ignore_index) & (flat < num_classes)
    counts = torch.zeros(len(masks), num_classes, dtype=torch.long)
    counts.scatter_add_(1, flat.clamp(0, num_classes - 1), valid.long())
    labels = counts.argmax(dim=1)
    labels[counts.sum(dim=1) == 0] = -1
    return labels


def signals(
    plain: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, float]:
    """Every signal from raw embeddings of the unaugmented images and of their two views."""
    z, z1, z2 = (F.normalize(e.float(), dim=1) for e in (plain, view1, view2))
    if not all(bool(torch.isfinite(e).all()) for e in (z, z1, z2)):
        return {"embedding_std": math.nan, "embedding_dim": z.shape[1]}
    out = {
        "embedding_std": embedding_std(z),
        "embedding_dim": z.shape[1],
        "effective_rank": effective_rank(z),
        "alignment": alignment(z1, z2),
        "uniformity": 0.5 * (uniformity(z1) + uniformity(z2)),
    }
    if labels is not None and len(labels) and int(labels.max()) >= 0:
        known = labels[labels >= 0]
        out["knn_accuracy"] = knn_accuracy(z, labels)
        out["knn_chance"] = float(torch.bincount(known).max()) / len(known)
    return out


# ----------------------------------------------------------------------------------------
# The pass at each epoch's end
# ----------------------------------------------------------------------------------------
@dataclass
class HealthBatch:
    """The fixed images (uint8 ``[n, C, H, W]``) of a run's health pass, their labels for
    the k-NN probe (None: the data has no masks), the seed of the pass's views, and the
    views once drawn (they depend on the seed and the method's augmentation only, not on
    the weights, so the first pass draws them and the later ones reuse them)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    seed: int
    views: torch.Tensor | None = None  # [2n, C, h, w]: the first views, then the second

    @classmethod
    def draw(cls, train, count: int, seed: int, num_classes: int, ignore_index: int):
        """``count`` pretraining images (all when there are fewer) drawn by ``seed`` with
        numpy's generator (torch's, which the training draws from, is left alone)."""
        chosen = np.random.default_rng([seed, 0x4EA1]).permutation(len(train))[:count]
        images, masks = train[np.sort(chosen)]
        labels = dominant_labels(masks, num_classes, ignore_index) if masks.numel() else None
        return cls(images, labels, seed)


def health_pass(method, batch: HealthBatch, device: torch.device) -> dict[str, Any]:
    """The signals of ``method``'s embeddings of ``batch`` (module docstring), with the
    pass's ``seconds``: no gradient, eval mode (train mode restored), the same views every
    epoch, and torch's random state as it was before. Both views go through the network in
    one batch (eval-mode BN treats each image alone, so this changes no number)."""
    started = time.perf_counter()
    was_training = method.training
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.no_grad():
        torch.manual_seed(batch.seed)
        method.eval()
        try:
            images = batch.images.to(device).float().div_(255.0)
            if batch.views is None:
                batch.views = torch.cat(method.health_views(images))
            plain = method.embed(method.normalize(images)).cpu()
            view1, view2 = method.embed(method.normalize(batch.views)).cpu().chunk(2)
        finally:
            method.train(was_training)
    return {**signals(plain, view1, view2, batch.labels), "seconds": time.perf_counter() - started}
