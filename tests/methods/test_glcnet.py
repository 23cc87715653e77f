import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.config import PretrainConfig
from bench.correspondence import (
    ViewGeometry,
    make_view,
    matched_regions,
    sample_crop_boxes,
    sample_dihedral,
)
from bench.methods import StepContext
from bench.methods.glcnet import GLCNet, GLCNetParams, region_means, style_vector
from bench.models import build_segmentation_model

COMBINATIONS = list(itertools.product(range(4), range(4)))  # (flip code, quarter turns)


def geometry(boxes, flip=0, turns=0):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).view(-1, 4)
    n = len(boxes)
    return ViewGeometry(boxes, torch.full((n,), flip), torch.full((n,), turns))


def flip_then_rotate(x, flip, turns):
    dims = {0: [], 1: [-1], 2: [-2], 3: [-2, -1]}[flip]
    return torch.rot90(x.flip(dims) if dims else x, turns, dims=(-2, -1))


def ramp_images(batch, height, width):
    """Channel 0 = x, channel 1 = y of each source pixel: bilinear sampling of a linear
    function returns the exact sampling location (clamped at the border)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None].expand(batch, 2, height, width).contiguous()


@pytest.mark.parametrize("flip,turns", COMBINATIONS)
def test_full_view_is_torch_flip_and_rot90_of_image_and_index(flip, turns):
    images = torch.rand(2, 3, 16, 16)
    view, index = make_view(images, geometry([[0, 0, 16, 16]] * 2, flip, turns), 16)
    assert torch.allclose(view, flip_then_rotate(images, flip, turns), atol=1e-5)
    source_index = torch.arange(256).view(1, 16, 16).expand(2, 16, 16)
    assert torch.equal(index, flip_then_rotate(source_index, flip, turns))


@pytest.mark.parametrize("flip,turns", COMBINATIONS)
def test_index_map_follows_the_image_through_crop_resize_flip_and_rot90(flip, turns):
    """Every view pixel's index names the source pixel nearest to where the image was
    sampled, for upscaling, downscaling and non-square crops."""
    height, width, size = 40, 36, 24
    boxes = [[5, 7, 17, 19], [0, 0, 36, 40], [3, 10, 33, 26]]  # 12 px, full, 30x16
    views, index = make_view(ramp_images(3, height, width), geometry(boxes, flip, turns), size)
    assert (views[:, 0] - (index % width).float()).abs().max() <= 0.5 + 1e-4
    assert (views[:, 1] - (index // width).float()).abs().max() <= 0.5 + 1e-4
    for b, (x0, y0, x1, y1) in enumerate(boxes):  # the view covers the crop box
        cols, rows = index[b] % width, index[b] // width
        assert (cols.min(), cols.max(), rows.min(), rows.max()) == (x0, x1 - 1, y0, y1 - 1)


@pytest.mark.parametrize("flip,turns", COMBINATIONS)
def test_matched_pixels_show_the_same_source_value_in_both_views(flip, turns):
    """A pixel's value in view 1 equals the value at its matched location in view 2 (image
    resampled with nearest neighbours so values are copied, not blended)."""
    torch.manual_seed(flip * 4 + turns)
    batch, side, size = 4, 32, 24
    images = torch.randperm(batch * side * side).float().view(batch, 1, side, side)
    first = ViewGeometry(
        sample_crop_boxes(batch, side, side, (0.4, 1.0)), *sample_dihedral(4, 0, 0)
    )
    second = geometry(sample_crop_boxes(batch, side, side, (0.4, 1.0)), flip, turns)
    view1, index1 = make_view(images, first, size, image_mode="nearest")
    view2, index2 = make_view(images, second, size, image_mode="nearest")
    matched = 0
    for b in range(batch):
        where2 = {int(i): p for p, i in enumerate(index2[b].flatten())}
        for p1, i in enumerate(index1[b].flatten().tolist()):
            if i in where2:
                assert view1[b, 0].flatten()[p1] == view2[b, 0].flatten()[where2[i]]
                matched += 1
    assert matched > 0
    # Region centres are such matched pixels.
    boxes1, boxes2 = matched_regions(index1, index2, 8, 4, side * side)
    for box1, box2 in zip(boxes1.long(), boxes2.long(), strict=True):
        b, c1, c2 = box1[0], box1[1:3] + 4, box2[1:3] + 4
        assert index1[b, c1[1], c1[0]] == index2[b, c2[1], c2[0]]
        assert view1[b, 0, c1[1], c1[0]] == view2[b, 0, c2[1], c2[0]]


def test_regions_never_overlap_and_lie_inside_both_views():
    torch.manual_seed(0)
    batch, side, size, region = 32, 64, 48, 12
    first = ViewGeometry(
        sample_crop_boxes(batch, side, side, (0.4, 1.0)), *sample_dihedral(32, 0, 0)
    )
    second = ViewGeometry(
        sample_crop_boxes(batch, side, side, (0.4, 1.0)), *sample_dihedral(32, 0.6, 0.8)
    )
    images = ramp_images(batch, side, side)
    view1, index1 = make_view(images, first, size)
    view2, index2 = make_view(images, second, size)
    boxes1, boxes2 = matched_regions(index1, index2, region, 4, side * side)
    assert len(boxes1) == len(boxes2) > 2 * batch
    for boxes in (boxes1, boxes2):
        assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] <= size).all()
        assert torch.equal(boxes[:, 3] - boxes[:, 1], torch.full((len(boxes),), float(region)))
        assert torch.equal(boxes[:, 4] - boxes[:, 2], torch.full((len(boxes),), float(region)))
        for b in range(batch):
            mine = boxes[boxes[:, 0] == b, 1:]
            assert len(mine) <= 4
            for p, q in itertools.combinations(mine.tolist(), 2):
                overlap_x = min(p[2], q[2]) - max(p[0], q[0])
                overlap_y = min(p[3], q[3]) - max(p[1], q[1])
                assert overlap_x <= 0 or overlap_y <= 0, (b, p, q)
    # Centres show the same ground: same source pixel, within a pixel in the bilinear image.
    for box1, box2 in zip(boxes1.long(), boxes2.long(), strict=True):
        b, (x1, y1), (x2, y2) = box1[0], box1[1:3] + 6, box2[1:3] + 6
        assert index1[b, y1, x1] == index2[b, y2, x2]
        assert (view1[b, :, y1, x1] - view2[b, :, y2, x2]).abs().max() <= 1.0 + 1e-4


def test_identical_views_always_give_all_regions_and_disjoint_views_none():
    torch.manual_seed(1)
    index = make_view(torch.rand(8, 3, 64, 64), geometry([[0, 0, 64, 64]] * 8), 48)[1]
    boxes1, boxes2 = matched_regions(index, index, 12, 4, 64 * 64)
    assert len(boxes1) == 32 and torch.equal(boxes1, boxes2)
    left = make_view(torch.rand(1, 3, 64, 64), geometry([[0, 0, 32, 64]]), 48)[1]
    right = make_view(torch.rand(1, 3, 64, 64), geometry([[32, 0, 64, 64]]), 48)[1]
    assert len(matched_regions(left, right, 12, 4, 64 * 64)[0]) == 0


def test_style_vector_is_channel_mean_and_unbiased_variance():
    features = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    expected = np.concatenate(
        [features.numpy().mean(axis=(2, 3)), features.numpy().var(axis=(2, 3), ddof=1)], axis=1
    )
    assert np.allclose(style_vector(features).numpy(), expected, atol=1e-6)


def test_region_means_are_means_of_the_segmentation_head_output():
    """Pooling the stride-4 map with roi_align equals averaging smp's full-resolution head
    output (1x1 conv, then x4 bilinear upsampling with align_corners=True) over the region."""
    torch.manual_seed(2)
    model = build_segmentation_model("resnet18", 3, num_classes=64)
    decoded = torch.randn(2, 256, 12, 12)
    boxes = torch.tensor([[0, 0, 0, 12, 12], [0, 30, 5, 42, 17], [1, 17, 36, 29, 48]]).float()
    with torch.no_grad():
        full = model.segmentation_head(decoded)  # [2, 64, 48, 48]
        pooled = region_means(model.segmentation_head[0](decoded), boxes, 48)
    for k, (b, x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        expected = full[b, :, y0:y1, x0:x1].mean(dim=(1, 2))
        assert torch.allclose(pooled[k], expected, atol=1e-5)
    # The same as the upsampling written out, so the head is what the docstring says.
    upsampled = F.interpolate(decoded[:1], size=48, mode="bilinear", align_corners=True)
    assert torch.allclose(
        region_means(decoded[:1], boxes[:1], 48)[0],
        upsampled[0, :, :12, :12].mean((1, 2)),
        atol=1e-5,
    )


def make(**params):
    torch.manual_seed(0)
    return GLCNet(
        GLCNetParams(region_size=12, **params),
        PretrainConfig(batch_size=4, view_size=48),
        3,
        [0.5] * 3,
        [0.25] * 3,
    )


def test_loss_is_weighted_sum_of_global_and_local_contrasts():
    method = make(global_weight=0.3)
    loss, logs = method.training_step(torch.rand(4, 3, 64, 64), StepContext(0, 1, 0))
    assert 0 < logs["regions_per_image"] <= 4
    assert loss.item() == pytest.approx(0.3 * logs["global"] + 0.7 * logs["local"], rel=1e-5)
    # GLCNet's variant: the positive is not in the denominator.
    z1, z2 = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    z = F.normalize(torch.cat([z1, z2]), dim=1).numpy()
    s = np.exp(z @ z.T / 0.5)
    expected = np.mean(
        [
            -np.log(
                s[i, (i + 5) % 10] / sum(s[i, j] for j in range(10) if j not in (i, (i + 5) % 10))
            )
            for i in range(10)
        ]
    )
    assert method.contrast(z1, z2).item() == pytest.approx(expected, rel=1e-6)
    released = make(positive_in_denominator=True).contrast(z1, z2).item()
    assert released == pytest.approx(
        np.mean([-np.log(s[i, (i + 5) % 10] / (s[i].sum() - s[i, i])) for i in range(10)]), rel=1e-6
    )


def test_settings_that_cannot_work_fail_clearly():
    with pytest.raises(ValueError, match="multiple of 16"):
        GLCNet(GLCNetParams(region_size=8), PretrainConfig(view_size=40), 3, [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="region_size=48"):
        GLCNet(GLCNetParams(), PretrainConfig(view_size=48), 3, [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="global_weight"):
        GLCNetParams(global_weight=1.5)
