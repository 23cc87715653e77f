"""Views whose pixels are traced back to the source image, and matched regions between views.

GLCNet's local matching branch (Li et al., "Global and Local Contrastive Self-Supervised
Learning for Semantic Segmentation of HR Remote Sensing Images", IEEE TGRS 2022) needs to
know which pixel of one view shows the same ground as a pixel of the other view. Each view is
made by one sampling grid: a random resized crop of the source, then a flip and a number of
quarter turns. The image is sampled from that grid bilinearly; a map of source-pixel indices
(``y * W + x``) is sampled from the *same* grid with nearest-neighbour sampling, so every view
pixel knows the source pixel nearest to where it was sampled. Two view pixels correspond when
their indices are equal.

``matched_regions`` then picks, per image, up to ``count`` square regions of side ``size``
centred on corresponding pixels, inside both views and not overlapping any other region of
the same view (as the release's ``get_index``, which also samples centres among source pixels
visible in both views' interiors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Flip codes: what is applied to the resized crop before the quarter turns.
FLIPS = ("none", "horizontal", "vertical", "both")


@dataclass(frozen=True)
class ViewGeometry:
    """Per-image parameters of one view: crop box ``(x0, y0, x1, y1)`` in source pixels
    (edges, end exclusive), flip code (index into :data:`FLIPS`), quarter turns as
    ``torch.rot90(view, turns, dims=(-2, -1))`` applied after the flip."""

    boxes: torch.Tensor  # [B, 4] float
    flips: torch.Tensor  # [B] long
    turns: torch.Tensor  # [B] long


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop boxes: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    integer sides clipped to the image, position uniform (one draw, no retries). ``[B, 4]``."""
    area = torch.empty(batch).uniform_(*scale) * height * width
    aspect = torch.exp(torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).round().clamp(1, width)
    h = torch.sqrt(area / aspect).round().clamp(1, height)
    x0 = (torch.rand(batch) * (width - w + 1)).floor()
    y0 = (torch.rand(batch) * (height - h + 1)).floor()
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def sample_dihedral(
    batch: int, flip_prob: float, rot90_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's second-view geometry: with ``flip_prob`` one of horizontal, vertical or
    both (equally likely), else none; with ``rot90_prob`` 0-3 quarter turns (uniform)."""
    flips = torch.where(
        torch.rand(batch) < flip_prob, torch.randint(1, 4, (batch,)), torch.zeros(batch).long()
    )
    turns = torch.where(
        torch.rand(batch) < rot90_prob, torch.randint(0, 4, (batch,)), torch.zeros(batch).long()
    )
    return flips, turns


def _flip(x: torch.Tensor, code: int) -> torch.Tensor:
    dims = {0: (), 1: (-1,), 2: (-2,), 3: (-2, -1)}[code]
    return x.flip(dims) if dims else x


def crop_pixel_coordinates(size: int, flips: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """For each output pixel, the (row, col) of the resized crop it shows after the flip and
    turns: torch's own flip/rot90 applied to a map of coordinates. ``[B, 2, size, size]``,
    on the device of ``flips``."""
    steps = torch.arange(size, device=flips.device)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    base = torch.stack([rows, cols])
    table = torch.stack(
        [torch.rot90(_flip(base, f), k, dims=(-2, -1)) for f in range(4) for k in range(4)]
    )
    return table[flips.long() * 4 + turns.long()]


def sampling_grid(
    geometry: ViewGeometry, size: int, height: int, width: int, device=None
) -> torch.Tensor:
    """``grid_sample`` grid (``align_corners=False``) of a view: the resized crop samples the
    source at its pixel centres (like ``F.interpolate(..., align_corners=False)``), then the
    flip and turns permute the output pixels. ``[B, size, size, 2]``, built on ``device``."""
    flips, turns = geometry.flips.to(device), geometry.turns.to(device)
    coords = crop_pixel_coordinates(size, flips, turns).float()
    boxes = geometry.boxes.to(device).float()
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    src_x = x0 + (coords[:, 1] + 0.5) * (x1 - x0) / size - 0.5
    src_y = y0 + (coords[:, 0] + 0.5) * (y1 - y0) / size - 0.5
    return torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], dim=-1)


def source_index_map(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """``y * W + x`` of every source pixel, as float (exact below 2**24). ``[B, 1, H, W]``."""
    index = torch.arange(height * width, device=device, dtype=torch.float32)
    return index.view(1, 1, height, width).expand(batch, 1, height, width)


def make_view(
    images: torch.Tensor, geometry: ViewGeometry, size: int, image_mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view of ``images`` ``[B, C, H, W]`` and its source-index map ``[B, size, size]``
    (long), both sampled from the same grid; the index map with nearest-neighbour sampling."""
    batch, _, height, width = images.shape
    if height * width >= 2**24:
        raise ValueError(f"{height}x{width} images are too large for a float32 index map")
    grid = sampling_grid(geometry, size, height, width, images.device)
    view = F.grid_sample(
        images, grid.to(images.dtype), mode=image_mode, padding_mode="border", align_corners=False
    )
    index = F.grid_sample(
        source_index_map(batch, height, width, images.device),
        grid,
        mode="nearest",
        padding_mode="border",
        align_corners=False,
    )
    return view, index[:, 0].round().long()


def matched_regions(
    index1: torch.Tensor, index2: torch.Tensor, size: int, count: int, num_source_pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` regions per image pair, as ``roi_align`` boxes ``[K, 5]`` =
    ``(image, x0, y0, x1, y1)`` in each view (pixel edges, end exclusive), row k of both
    showing the same centre pixel.

    A region of side ``size`` is centred on a view-1 pixel (``[c - size // 2, c - size // 2 +
    size)``) that lies far enough from the border for the region to fit, whose source pixel
    also appears at such a place in view 2; the view-2 region is centred there. Centres are
    drawn uniformly among the candidates, one region at a time; after each draw, candidates
    whose region would overlap an earlier one in either view are removed. An image runs out
    of regions when no candidate is left (e.g. views that barely overlap).
    """
    batch, side, _ = index1.shape
    device = index1.device
    half = size // 2
    positions = torch.arange(side * side, device=device)
    rows, cols = positions // side, positions % side
    interior = (
        (rows >= half)
        & (rows - half + size <= side)
        & (cols >= half)
        & (cols - half + size <= side)
    )
    # For each source pixel, one view-2 interior position showing it (the largest), or -1.
    where_in_2 = torch.full((batch, num_source_pixels), -1, device=device, dtype=torch.long)
    where_in_2.scatter_reduce_(
        1,
        index2.flatten(1)[:, interior],
        positions[interior].expand(batch, -1).contiguous(),
        reduce="amax",
    )
    partner = where_in_2.gather(1, index1.flatten(1))  # [B, side^2]: view-2 position or -1
    candidate = interior & (partner >= 0)
    rows2, cols2 = partner // side, partner % side
    picked1, picked2, found = [], [], []
    for _ in range(count):
        scores = torch.rand(batch, side * side, device=device).masked_fill_(~candidate, -1.0)
        centre1 = scores.argmax(dim=1)
        ok = candidate.gather(1, centre1[:, None])[:, 0]
        centre2 = partner.gather(1, centre1[:, None])[:, 0]
        r1, c1 = rows[centre1], cols[centre1]
        r2, c2 = centre2 // side, centre2 % side
        apart1 = ((rows - r1[:, None]).abs() >= size) | ((cols - c1[:, None]).abs() >= size)
        apart2 = ((rows2 - r2[:, None]).abs() >= size) | ((cols2 - c2[:, None]).abs() >= size)
        candidate = candidate & apart1 & apart2
        picked1.append(torch.stack([c1, r1], dim=1))
        picked2.append(torch.stack([c2, r2], dim=1))
        found.append(ok)
    found_all = torch.stack(found, dim=1)  # [B, count]
    image = torch.arange(batch, device=device)[:, None].expand(batch, count)[found_all]

    def boxes(picked: list[torch.Tensor]) -> torch.Tensor:
        corner = torch.stack(picked, dim=1)[found_all] - half  # [K, 2] (x0, y0)
        return torch.cat([image[:, None], corner, corner + size], dim=1).float()

    return boxes(picked1), boxes(picked2)
