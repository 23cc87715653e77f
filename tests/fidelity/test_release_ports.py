"""GraSS's crop and FALSE's loss against ports of the released code, written here with the
libraries the releases use (OpenCV, scikit-image, loops over the batch as released):
GeoX-Lab/GraSS ``vissl/trainer/train_steps/GraSS_train_step.py`` (``getHeadMapCut``,
``DACrop``) and GeoX-Lab/FALSE ``vissl/losses/false_loss.py`` (``FALSECriterion.forward``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

cv2 = pytest.importorskip("cv2")
measure = pytest.importorskip("skimage.measure")
morphology = pytest.importorskip("skimage.morphology")

# the release calls remove_small_objects(uint8 mask, 1, connectivity=2), which newer
# scikit-image versions warn about (a label image; min_size deprecated); kept as released
pytestmark = [
    pytest.mark.filterwarnings("ignore:Only one label was provided"),
    pytest.mark.filterwarnings("ignore:Parameter `min_size` is deprecated"),
]

from bench.augment import crop_and_resize  # noqa: E402
from bench.losses import masked_contrastive_loss  # noqa: E402
from bench.losses.ntxent import cosine_logits  # noqa: E402
from bench.methods.false import (  # noqa: E402
    beyond_release_sentinel,
    fncc_masks,
    select_false_negatives,
)
from bench.methods.grass import grad_cam, peak_region_boxes  # noqa: E402


# ------------------------------------------------------------------------ GraSS's crop
def release_heat(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """getHeadMapCut's map: channel weights = spatial mean of the gradient, mean over the
    channels of weights x features, divided by each map's maximum."""
    pooled = F.adaptive_avg_pool2d(grads, (1, 1))
    heat = torch.mean(features * pooled, axis=1)
    peak = heat.view(len(heat), -1).max(dim=1)[0]
    return heat / peak[:, None, None]


def release_crop(views: torch.Tensor, heat_maps: torch.Tensor, ratio: float = 0.5):
    """DACrop of each view: cv2.resize of its map to the view, threshold, remove_small_objects
    (1, 2), label, the region whose bounding box holds the largest value (>=, so later ones
    win), crop, nearest resize; no region: unchanged."""
    out = views.clone()
    size = views.shape[-1]
    for i in range(len(views)):
        heat = cv2.resize(heat_maps[i].numpy(), (size, size))
        low, high = np.min(heat), np.max(heat)
        binary = (heat > low + (high - low) * ratio).astype("uint8")
        binary = morphology.remove_small_objects(binary, 1, connectivity=2)
        best, box = low, [0, 0, size, size]
        for region in measure.regionprops(measure.label(binary)):
            b = region.bbox
            value = np.max(heat[b[0] : b[2], b[1] : b[3]])
            if value >= best:
                best, box = value, b
        if best != low:
            crop = views[i : i + 1, :, box[0] : box[2], box[1] : box[3]]
            out[i] = F.interpolate(crop, size=[size, size], mode="nearest")[0]
    return out


def ours(views, features, grads):
    boxes = peak_region_boxes(
        grad_cam(features, grads), views.shape[-1], 0.5, region="bbox_max", divide_by_max=True
    )
    return crop_and_resize(views, boxes, "nearest")


def blobs(seed: int, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps with several separated bumps of different heights; gradients of one
    sign per map so that the Grad-CAM map's maximum is positive (sign 1) or negative (-1)."""
    rng = np.random.default_rng(seed)
    features = rng.random((4, 8, 7, 7)).astype(np.float32) * 0.1
    for b in range(4):
        for _ in range(3):
            y, x = rng.integers(0, 7, size=2)
            features[b, :, y, x] += rng.random() * 3
    grads = (np.abs(rng.normal(size=(4, 8, 7, 7))) + 0.1).astype(np.float32) * sign
    return torch.from_numpy(features), torch.from_numpy(grads)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grass_crop_equals_the_released_crop(seed, sign):
    features, grads = blobs(seed, sign)
    views = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(seed))
    expected = release_crop(views, release_heat(features, grads))
    assert not torch.equal(expected, views)  # the port cropped something
    assert torch.equal(ours(views, features, grads), expected)


def test_grass_crop_leaves_views_of_constant_maps_unchanged_as_released():
    views = torch.rand(2, 3, 48, 48)
    constant = torch.full((2, 7, 7), 0.3)
    assert torch.equal(release_crop(views, constant / 0.3), views)
    boxes = peak_region_boxes(constant, 48, 0.5, region="bbox_max", divide_by_max=True)
    assert torch.equal(crop_and_resize(views, boxes, "nearest"), views)
    # equal features and gradients: their channel mean may differ by an ulp between pixels;
    # still constant here (the release would crop to the pixels that rounded up)
    cam = grad_cam(torch.ones(2, 8, 7, 7), torch.full((2, 8, 7, 7), 0.3))
    boxes = peak_region_boxes(cam, 48, 0.5, region="bbox_max", divide_by_max=True)
    assert boxes.tolist() == [[0, 0, 48, 48]] * 2


def test_negative_maximum_flips_the_chosen_region_like_the_release():
    """Dividing by a negative maximum turns the map upside down: the release then crops
    around the *smallest* Grad-CAM values; without the division the largest ones."""
    features, grads = blobs(0, -1.0)
    cam = grad_cam(features, grads)
    assert (cam.flatten(1).amax(dim=1) < 0).all()
    released = peak_region_boxes(cam, 48, 0.5, region="bbox_max", divide_by_max=True)
    undivided = peak_region_boxes(cam, 48, 0.5, region="bbox_max", divide_by_max=False)
    assert not torch.equal(released, undivided)


# ------------------------------------------------------------------------ FALSE's loss
def release_false_loss(z: torch.Tensor, tau: float, alpha: float, threshold: float):
    """FALSECriterion.forward on one process: S = exp(z z^T / tau); D = 3 outside the
    searched upper triangle (its diagonal and the first half's partners); all pairs at the
    global minimum edited where their anchor's positive is confident."""
    z = F.normalize(z.double(), dim=1)
    n2 = len(z)
    sim = torch.exp(z @ z.T / tau)
    pos_mask, neg_mask = torch.zeros(n2, n2, dtype=z.dtype), torch.ones(n2, n2, dtype=z.dtype)
    for i in range(n2):
        p = (i + n2 // 2) % n2
        pos_mask[i, p], neg_mask[i, p], neg_mask[i, i] = 1, 0, 0
    all_pos, all_neg = sim * pos_mask, sim * neg_mask
    pos_sim = torch.zeros(n2, 1, dtype=z.dtype) - 2
    diff = torch.zeros(n2, n2, dtype=z.dtype) + 3
    for i in range(n2):
        pos_sim[i] = sim[i, i - n2 // 2] if i >= n2 // 2 else sim[i, i + n2 // 2]
        diff[i, i:] = torch.abs(sim[i, i:] - pos_sim[i])
        diff[i, i] = 3
        if i < n2 // 2:
            diff[i, i + n2 // 2] = 3
    rows, cols = torch.where(diff == torch.min(diff))
    for a, m in zip(rows.tolist(), cols.tolist(), strict=True):
        if torch.log(pos_sim[a]) * tau >= threshold:
            if all_pos[a, m] == 0:
                all_pos[a, m] = alpha * all_neg[a, m]
            if all_neg[a, m] != 0:
                all_neg[a, m] = (1 - alpha) * all_neg[a, m]
    pos, neg = all_pos.sum(1), all_neg.sum(1)
    return float(-torch.mean(torch.log(pos / (pos + neg))))


def ours_false_loss(z, tau, alpha, threshold, sentinel):
    logits = cosine_logits(z.double(), tau)
    anchor, negative = select_false_negatives(logits, tau, threshold, "global", sentinel)
    pos, neg = fncc_masks(len(z), anchor, negative, alpha)
    return float(masked_contrastive_loss(logits, pos.double(), neg.double()))


def embeddings(regime: str, seed: int) -> torch.Tensor:
    """``ordinary``: random views of random images (one closest pair, below 3 away);
    ``sentinel``: each image's two views nearly equal, images orthogonal, so every searched
    distance is about e^2 - 1 > 3 and the release's sentinel 3 is the minimum."""
    g = torch.Generator().manual_seed(seed)
    n, dim = 6, 16
    if regime == "ordinary":
        base = torch.randn(n, dim, generator=g)
        return torch.cat([base, base + 1.2 * torch.randn(n, dim, generator=g)])
    base = torch.eye(dim)[:n]
    return torch.cat([base, base + 0.01 * torch.randn(n, dim, generator=g)])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_false_loss_equals_the_release_in_both_regimes(seed, alpha):
    for regime in ("ordinary", "sentinel"):
        z = embeddings(regime, seed)
        expected = release_false_loss(z, 0.5, alpha, threshold=0.1)
        got = ours_false_loss(z, 0.5, alpha, threshold=0.1, sentinel="release")
        assert got == pytest.approx(expected, rel=1e-6), regime  # float32 masks
        logits = cosine_logits(z, 0.5)
        assert beyond_release_sentinel(logits) == (regime == "sentinel")
        pairs = len(select_false_negatives(logits, 0.5, 0.1, "global", "release")[0])
        assert pairs == 1 if regime == "ordinary" else pairs > len(z)  # one, or the many


def test_false_sentinel_inf_differs_from_the_release_only_in_the_sentinel_regime():
    for regime in ("ordinary", "sentinel"):
        z = embeddings(regime, 0)
        release = release_false_loss(z, 0.5, 1.0, threshold=0.1)
        inf = ours_false_loss(z, 0.5, 1.0, threshold=0.1, sentinel="inf")
        if regime == "ordinary":
            assert inf == pytest.approx(release, rel=1e-6)
        else:  # the release turns every lower-triangle negative of a confident row positive
            assert inf > release + 0.1
