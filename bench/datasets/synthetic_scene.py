"""Procedural aerial land-cover patches with pixel labels (the benchmark's built-in dataset).

Every patch is drawn from ``np.random.default_rng([seed, SPLIT_CODES[split], index])`` alone, so
any patch can be rendered on its own, in any order, and the same arguments always give
byte-identical arrays.

Scene model
-----------
A patch is a nadir view of a small piece of town. Each patch draws:

* a scene type (residential, road, park, industrial) that decides which objects are placed;
* a street-grid angle: roads, buildings, parking lots and fields are aligned to a rotated
  "street frame" (u along the grid, v across it), so aligned shapes are simple box masks;
* a sun azimuth and elevation for roof shading, tree-crown shading and cast shadows;
* a season (green to dry vegetation) and imaging conditions (colour cast, brightness,
  contrast, haze, blur, sensor noise).

Objects are painted back to front into a label map, a material map and a height map:
ground, water (rivers, ponds, pools), roads with sidewalks and dashed lane markings, paths,
parking lots, buildings (rectangles or L-shapes with two-tone gable or four-tone hip roofs,
or flat roofs with rim and rooftop units), cars (small oriented boxes with windows),
clutter (bare soil, sand, containers, odd small objects) and trees (unions of discs with a
domed canopy). Labels follow the ISPRS convention: sidewalks and markings are impervious
surface, anything on a roof is building, tree crowns hide what lies below them.

Colour is deliberately ambiguous: palettes overlap between classes (red paving and tiled
roofs, grey roofs and asphalt, dry grass and bare soil, dark roofs and water and shadow,
the occasional green roof, cars of any colour), and per-image season, colour cast and haze
move every class around colour space. Shapes, textures, context and shadows carry the rest
of the signal. Shadows are cast from the height map and only darken pixels; they never
change labels.

The optional near-infrared band makes vegetation bright and water dark, with per-material
spread and noise, so it helps without solving the task (trees vs grass, roofs vs paving
stay ambiguous).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple, TypeVar

import numpy as np
from scipy import ndimage

from bench.datasets.synthetic_palettes import (
    ASPHALT,
    BEIGE_PAVING,
    CAR_GLASS,
    CAR_PAINT,
    CONCRETE,
    FLAT_ROOF_PROBS,
    FLAT_ROOFS,
    GRASS_DRY,
    GRASS_GREEN,
    HAZE,
    HOUSE_ROOF_PROBS,
    HOUSE_ROOFS,
    ODD_OBJECT,
    POOL,
    RED_PAVING,
    ROAD_MARKING,
    ROOFTOP_UNIT,
    SHADOW_TINT,
    SIDEWALKS,
    SOIL,
    SOLAR_PANEL,
    TREE_DRY,
    TREE_GREEN,
    WATER_BODY,
    Palette,
)

CLASS_NAMES: tuple[str, ...] = (
    "impervious_surface",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "water",
    "clutter",
)
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # impervious surface: white
    (0, 0, 255),  # building: blue
    (0, 255, 255),  # low vegetation: cyan
    (0, 255, 0),  # tree: green
    (255, 255, 0),  # car: yellow
    (0, 0, 128),  # water: dark blue
    (255, 0, 0),  # clutter: red
)
SPLIT_CODES = {"train": 0, "test": 1}

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, WATER, CLUTTER = range(len(CLASS_NAMES))

MIN_SIZE = 16
UNIFORM_TO_UNIT_SD = np.sqrt(12.0)  # scales uniform [-0.5, 0.5) noise to unit variance
NIR_JITTER = 12.0  # standard deviation of a material's NIR level around its palette's
REFERENCE_SIZE = 64  # object dimensions below are in pixels at this patch size


# Object dimensions in pixels at REFERENCE_SIZE.
CAR_HALF_LENGTH = 3.0
CAR_HALF_WIDTH = 1.4
CAR_HEIGHT = 1.3
LANE_MARK_HALF_WIDTH = 0.45
DASH_PERIOD = 7.0
DASH_LENGTH = 3.5
PARKING_STALL_WIDTH = 3.8

SCENE_TYPES = ("residential", "road", "park", "industrial")
SCENE_PROBS = (0.4, 0.25, 0.15, 0.2)

T = TypeVar("T")
# Columns of the material table built while painting: R, G, B, NIR, then texture weights.
_TEXTURE_WEIGHTS, _STRIPE, _DOME = slice(4, 8), 6, 7
_FULL = (slice(None), slice(None))
_GROUND = np.zeros(len(CLASS_NAMES), bool)
_GROUND[[IMPERVIOUS, LOW_VEG]] = True
_NOT_BUILDING = np.ones(len(CLASS_NAMES), bool)
_NOT_BUILDING[BUILDING] = False


class _Road(NamedTuple):
    axis: int  # 0: runs along u, 1: runs along v
    offset: float  # position across the road, in the street frame
    half_width: float  # carriageway plus sidewalk
    lanes: tuple[float, ...]  # lane centres across the road


def _to_frame(axis: int, along: T, across: T) -> tuple[T, T]:
    """Street-frame (u, v) of a pair given along and across something running along ``axis``
    (0: along u, 1: along v). Works for positions, half-sizes and coordinate arrays alike."""
    return (along, across) if axis == 0 else (across, along)


@lru_cache(maxsize=16)
def _pixel_centres(size: int) -> np.ndarray:
    """Read-only coordinates of pixel centres along one axis, origin at the patch centre."""
    centres = np.arange(size, dtype=np.float32) + 0.5 - size / 2
    centres.setflags(write=False)
    return centres


class _Canvas:
    """Per-patch drawing state: label, material and height maps plus the patch's random draws."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.size = size
        self.scale = size / REFERENCE_SIZE
        self.extent = 0.72 * size  # half-width of the street frame region covering the patch
        self.centres = _pixel_centres(size)
        self.x, self.y = self.centres[None, :], self.centres[:, None]  # broadcast to (H, W)
        self.angle = self.uniform(0.0, np.pi / 2)
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        self.u = self.x * cos + self.y * sin
        self.v = self.y * cos - self.x * sin
        self.sun_azimuth = self.uniform(0.0, 2 * np.pi)
        self.shadow_run = self.uniform(0.5, 1.6)  # shadow length per unit of height
        self.dryness = min(max(self.uniform(-0.3, 1.2), 0.0), 1.0)
        self.label = np.full((size, size), LOW_VEG, np.uint8)
        self.material = np.zeros((size, size), np.int32)
        self.height = np.zeros((size, size), np.float32)
        self.materials: list[list[float]] = []
        self.roads: list[_Road] = []

    # --- random draws (scalar draws go through rng.random(), the cheapest call) -----------
    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.rng.random()

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high)."""
        return low + int((high - low) * self.rng.random())

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def choose(self, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
        """One of ``options``, uniformly or with the given probabilities."""
        if probs is None:
            return options[int(len(options) * self.rng.random())]
        index = bisect.bisect(list(itertools.accumulate(probs)), self.rng.random() * sum(probs))
        return options[min(index, len(options) - 1)]

    def length(self, low: float, high: float) -> float:
        """A uniform length in pixels, given at REFERENCE_SIZE and scaled to this patch."""
        return self.uniform(low, high) * self.scale

    def point(self, margin: float = 0.0) -> tuple[float, float]:
        """A uniform position (image coordinates) inside the patch, ``margin`` from the edge."""
        half = self.size / 2 - margin
        return self.uniform(-half, half), self.uniform(-half, half)

    def pick(self, palette: Palette, jitter: float = 7.0) -> tuple[np.ndarray, float]:
        """One colour of a palette with a small random shift, and its NIR level."""
        draws = self.rng.random(5)  # colour choice, then uniform RGB and NIR jitter
        base = palette.colours[int(draws[0] * len(palette.colours))]
        shift = (draws[1:] - 0.5) * UNIFORM_TO_UNIT_SD
        return np.add(base, jitter * shift[:3]), palette.nir + NIR_JITTER * shift[3]

    def pick_vegetation(self, green: Palette, dry: Palette) -> tuple[np.ndarray, float]:
        """A vegetation colour between its green and dry palettes, following the season."""
        green_rgb, green_nir = self.pick(green)
        dry_rgb, dry_nir = self.pick(dry)
        t = min(max(self.dryness + self.uniform(-0.2, 0.2), 0.0), 1.0)
        return (1 - t) * green_rgb + t * dry_rgb, (1 - t) * green_nir + t * dry_nir

    # --- geometry -----------------------------------------------------------------------
    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Image coordinates of a street-frame point."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return u * cos - v * sin, u * sin + v * cos

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
        """Slices of the pixels within ``radius`` (box) of an image point; None if off-patch."""
        half = self.size / 2
        x0, x1 = max(int(cx - radius + half), 0), min(int(cx + radius + half) + 2, self.size)
        y0, y1 = max(int(cy - radius + half), 0), min(int(cy + radius + half) + 2, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def offsets(self, cx: float, cy: float, radius: float):
        """Window around an image point and the offsets of its pixels from the point:
        (slices, dx as a row, dy as a column), or None if off-patch."""
        sl = self.window(cx, cy, radius)
        if sl is None:
            return None
        return sl, self.centres[None, sl[1]] - cx, self.centres[sl[0], None] - cy

    def local(self, cx: float, cy: float, radius: float, angle: float):
        """Window around an image point and the window's coordinates in a frame rotated by
        ``angle`` and centred on the point: (slices, along, across), or None if off-patch."""
        found = self.offsets(cx, cy, radius)
        if found is None:
            return None
        sl, dx, dy = found
        cos, sin = np.cos(angle), np.sin(angle)
        return sl, dx * cos + dy * sin, dy * cos - dx * sin

    def on_road(self, uc: float, vc: float, hu: float, hv: float) -> bool:
        """Whether a street-frame box overlaps any road drawn so far (sidewalks included)."""
        for road in self.roads:
            centre, half = (vc, hv) if road.axis == 0 else (uc, hu)  # across the road
            if abs(centre - road.offset) < half + road.half_width:
                return True
        return False

    def label_at(self, cx: float, cy: float) -> int:
        """Current class of the pixel under an image point (clamped to the patch)."""
        half = self.size / 2
        col = min(max(int(cx + half), 0), self.size - 1)
        row = min(max(int(cy + half), 0), self.size - 1)
        return int(self.label[row, col])

    # --- painting -----------------------------------------------------------------------
    def add_material(
        self,
        colour: tuple[np.ndarray, float],
        tone: float = 1.0,
        *,
        fine: float = 0.04,
        coarse: float = 0.04,
        stripe: float = 0.0,
        dome: float = 0.0,
    ) -> int:
        """Register a material (colour scaled by ``tone`` plus texture weights); return its id."""
        rgb, nir = colour
        self.materials.append([*(rgb * tone), nir * tone, fine, coarse, stripe, dome])
        return len(self.materials) - 1

    def paint(
        self,
        sl: tuple[slice, slice],
        mask: np.ndarray,
        cls: int,
        material: int,
        height: float | np.ndarray = 0.0,
        onto: np.ndarray | None = None,
    ) -> np.ndarray:
        """Paint class, material and height into ``mask`` of window ``sl``; with ``onto`` (a
        boolean table over classes) only over pixels whose current class it allows. Returns
        the mask actually painted."""
        label = self.label[sl]
        if onto is not None:
            mask = mask & onto[label]
        label[mask] = cls
        self.material[sl][mask] = material
        self.height[sl][mask] = height[mask] if isinstance(height, np.ndarray) else height
        return mask


# --- objects ------------------------------------------------------------------------------


def _fill_ground(cv: _Canvas, cls: int, material: int) -> None:
    cv.label[:] = cls
    cv.material[:] = material


def _add_grass(cv: _Canvas, mown: bool = False) -> None:
    grass = cv.add_material(
        cv.pick_vegetation(GRASS_GREEN, GRASS_DRY),
        fine=0.06,
        coarse=0.1,
        stripe=0.05 if mown else 0.0,
    )
    _fill_ground(cv, LOW_VEG, grass)


def _add_road(
    cv: _Canvas, axis: int, offset: float, width: float, lanes: int, sidewalk: float
) -> _Road:
    """A straight road across the patch along a street-frame axis, with sidewalks and dashed
    lane markings (all impervious)."""
    s = cv.scale
    along, across = _to_frame(axis, cv.u, cv.v)
    distance = np.abs(across - offset)
    paving = cv.add_material(cv.pick(cv.choose(SIDEWALKS)), fine=0.07)
    cv.paint(_FULL, distance <= width / 2 + sidewalk, IMPERVIOUS, paving)
    asphalt = cv.add_material(cv.pick(ASPHALT), fine=0.05, coarse=0.05)
    cv.paint(_FULL, distance <= width / 2, IMPERVIOUS, asphalt)
    lane_width = width / lanes
    if lanes > 1:
        marking = cv.add_material(cv.pick(ROAD_MARKING), fine=0.03)
        dashes = (along - cv.uniform(0, DASH_PERIOD * s)) % (DASH_PERIOD * s) < DASH_LENGTH * s
        for k in range(1, lanes):
            line = np.abs(across - (offset - width / 2 + k * lane_width))
            cv.paint(_FULL, (line <= LANE_MARK_HALF_WIDTH * s) & dashes, IMPERVIOUS, marking)
    centres = tuple(offset - width / 2 + (k + 0.5) * lane_width for k in range(lanes))
    road = _Road(axis, offset, width / 2 + sidewalk, centres)
    cv.roads.append(road)
    return road


def _add_traffic(cv: _Canvas, road: _Road, mean_gap: float, lanes: tuple[float, ...]) -> None:
    """Cars along the given lane centres of a road, separated by random gaps."""
    rng, s = cv.rng, cv.scale
    for centre in lanes:
        pos = -cv.extent + rng.exponential(mean_gap * s)
        while pos < cv.extent:
            across = centre + rng.normal(0.0, 0.25 * s)
            _add_car(cv, *_to_frame(road.axis, pos, across), road.axis)
            pos += (2 * CAR_HALF_LENGTH + 1.5) * s + rng.exponential(mean_gap * s)


def _add_car(cv: _Canvas, u: float, v: float, axis: int) -> None:
    """A car centred at street-frame (u, v), pointing along ``axis``, with dark windows."""
    rng, s = cv.rng, cv.scale
    angle = cv.angle + axis * np.pi / 2 + rng.normal(0.0, 0.05) + np.pi * cv.integer(0, 2)
    half_length = CAR_HALF_LENGTH * s * cv.uniform(0.85, 1.2)
    half_width = CAR_HALF_WIDTH * s * cv.uniform(0.9, 1.1)
    found = cv.local(*cv.to_image(u, v), half_length + 1, angle)
    if found is None:
        return
    sl, along, across = found
    body = (np.abs(along) <= half_length) & (np.abs(across) <= half_width)
    body = cv.paint(
        sl, body, CAR, cv.add_material(cv.pick(CAR_PAINT, 10.0)), CAR_HEIGHT * s, _GROUND
    )
    windscreen = (along > 0.1 * half_length) & (along < 0.5 * half_length)
    rear_window = (along < -0.55 * half_length) & (along > -0.8 * half_length)
    windows = body & (windscreen | rear_window) & (np.abs(across) < 0.8 * half_width)
    cv.paint(sl, windows, CAR, cv.add_material(cv.pick(CAR_GLASS)), CAR_HEIGHT * s)


def _roof_tone(cv: _Canvas, facing: float, relief: float) -> float:
    """Brightness of a roof facet whose downslope faces image direction ``facing``."""
    return 1.0 + relief * np.cos(facing - cv.sun_azimuth)


def _add_building(
    cv: _Canvas,
    u: float,
    v: float,
    half_u: float,
    half_v: float,
    roof: str,
    colour: tuple[np.ndarray, float],
    height: float,
) -> None:
    """A grid-aligned box building centred at street-frame (u, v); ``roof`` is "gable" (two
    tones split along the ridge), "hip" (four facets) or "flat" (rim and rooftop units)."""
    s = cv.scale
    found = cv.local(*cv.to_image(u, v), np.hypot(half_u, half_v) + 1, cv.angle)
    if found is None:
        return
    sl, du, dv = found
    body = (np.abs(du) <= half_u) & (np.abs(dv) <= half_v)
    if np.any(cv.label[sl][body] == WATER):  # no buildings on water
        return
    if roof == "flat":
        rim = cv.add_material(colour, cv.uniform(0.85, 1.15), fine=0.03, coarse=0.03)
        cv.paint(sl, body, BUILDING, rim, height)
        inset = cv.uniform(0.7, 1.3) * s
        inner = (np.abs(du) <= half_u - inset) & (np.abs(dv) <= half_v - inset)
        cv.paint(sl, inner, BUILDING, cv.add_material(colour, coarse=0.08), height)
        for _ in range(cv.integer(0, 4)):
            unit_u = du - cv.uniform(-0.6, 0.6) * half_u
            unit_v = dv - cv.uniform(-0.6, 0.6) * half_v
            unit = (np.abs(unit_u) <= cv.length(1.0, 2.5)) & (np.abs(unit_v) <= cv.length(1.0, 2.0))
            material = cv.add_material(cv.pick(ROOFTOP_UNIT), fine=0.02)
            cv.paint(sl, unit & inner, BUILDING, material, height + 1.0 * s)
        return
    # Pitched roof: ridge along the longer side, facets lit according to the sun.
    if half_u >= half_v:
        along, across, half_long, half_short, across_dir = du, dv, half_u, half_v, cv.angle
        across_dir += np.pi / 2
    else:
        along, across, half_long, half_short, across_dir = dv, du, half_v, half_u, cv.angle
    along_dir = across_dir - np.pi / 2
    relief = cv.uniform(0.15, 0.32)
    facets = [(body & (across < 0), across_dir + np.pi), (body & (across >= 0), across_dir)]
    if roof == "hip":
        ends = np.abs(along) - (half_long - half_short) > np.abs(across)
        facets += [
            (body & ends & (along < 0), along_dir + np.pi),
            (body & ends & (along >= 0), along_dir),
        ]
    for mask, facing in facets:
        material = cv.add_material(colour, _roof_tone(cv, facing, relief), coarse=0.05)
        cv.paint(sl, mask, BUILDING, material, height)
    if cv.chance(0.2):  # solar panels on one side of the ridge
        side = 1.0 if cv.chance(0.5) else -1.0
        panel = (np.abs(along) <= 0.6 * half_long) & (
            np.abs(across - side * 0.5 * half_short) <= 0.3 * half_short
        )
        cv.paint(
            sl, panel & body, BUILDING, cv.add_material(cv.pick(SOLAR_PANEL), fine=0.02), height
        )


def _add_house(
    cv: _Canvas, road: _Road, along: float, across: float, half_along: float, half_across: float
) -> None:
    """A house facing ``road`` with a pitched roof, sometimes L-shaped with a wing at the back.
    Positions and half-sizes are given along and across the road."""
    colour = cv.pick(cv.choose(HOUSE_ROOFS, HOUSE_ROOF_PROBS))
    roof = "gable" if cv.chance(0.65) else "hip"
    height = cv.length(4.0, 7.0)
    centre, half = (
        _to_frame(road.axis, along, across),
        _to_frame(road.axis, half_along, half_across),
    )
    _add_building(cv, *centre, *half, roof, colour, height)
    if cv.chance(0.35):
        wing_half_along, wing_half_across = (
            half_across * cv.uniform(0.55, 0.85),
            cv.length(2.5, 4.5),
        )
        wing_along = along + (half_along - wing_half_along) * (1 if cv.chance(0.5) else -1)
        back = 1.0 if across > road.offset else -1.0
        wing_across = across + back * (half_across + wing_half_across - 0.5 * cv.scale)
        centre = _to_frame(road.axis, wing_along, wing_across)
        half = _to_frame(road.axis, wing_half_along, wing_half_across)
        _add_building(cv, *centre, *half, "gable", colour, height)


def _blob(cv: _Canvas, cx: float, cy: float, radius: float, wobble: float):
    """(slices, mask) of an irregular round shape; None if off-patch."""
    found = cv.offsets(cx, cy, radius * (1 + 2 * wobble))
    if found is None:
        return None
    sl, dx, dy = found
    theta = np.arctan2(dy, dx)
    edge = 1.0
    for k in (2, 3, 5):
        edge += cv.uniform(0, wobble) * np.sin(k * theta + cv.uniform(0, 2 * np.pi))
    return sl, dx * dx + dy * dy <= (radius * edge) ** 2


def _add_tree(cv: _Canvas, cx: float, cy: float, radius: float) -> None:
    """A tree crown: union of discs, domed height (for shading and shadow), not over roofs."""
    rng = cv.rng
    found = cv.offsets(cx, cy, radius * 1.6)
    if found is None:
        return
    sl, dx, dy = found
    discs = cv.integer(1, 5)
    centres = rng.normal(0.0, 0.35 * radius, (discs, 2))
    crown = -1.0  # max over discs of r^2 - distance^2: positive inside the crown
    for (ox, oy), r in zip(centres, radius * rng.uniform(0.55, 0.95, discs), strict=True):
        crown = np.maximum(crown, r * r - (dx - ox) ** 2 - (dy - oy) ** 2)
    mask = crown > 0
    height = cv.length(3.0, 6.0) + 0.8 * np.sqrt(np.maximum(crown, 0.0))
    colour = cv.pick_vegetation(TREE_GREEN, TREE_DRY)
    material = cv.add_material(colour, cv.uniform(0.85, 1.1), fine=0.08, coarse=0.18, dome=1.0)
    cv.paint(sl, mask, TREE, material, height, _NOT_BUILDING)


def _add_trees(cv: _Canvas, count: int, radius: tuple[float, float]) -> None:
    """``count`` trees centred on random low-vegetation pixels (none if there are none)."""
    candidates = np.flatnonzero(cv.label == LOW_VEG)
    if len(candidates) == 0:
        return
    half = cv.size / 2
    for flat in cv.rng.choice(candidates, count):
        row, col = divmod(int(flat), cv.size)
        _add_tree(cv, col + 0.5 - half, row + 0.5 - half, cv.length(*radius))


def _add_clutter(cv: _Canvas, cx: float, cy: float, radius: float) -> None:
    """A small odd object on the ground: box, ellipse or heap, in an odd colour."""
    found = cv.local(cx, cy, radius + 1, cv.uniform(0, np.pi))
    if found is None:
        return
    sl, a, b = found
    kind = cv.integer(0, 3)
    if kind == 0:
        mask = (np.abs(a) <= radius) & (np.abs(b) <= radius * cv.uniform(0.3, 0.8))
    elif kind == 1:
        mask = (a / radius) ** 2 + (b / (radius * cv.uniform(0.4, 0.9))) ** 2 <= 1
    else:
        mask = (np.abs(a) + np.abs(b) <= radius) | (
            (np.abs(a) <= 0.4 * radius) & (np.abs(b) <= radius)
        )
    palette = SOIL if cv.chance(0.25) else ODD_OBJECT
    material = cv.add_material(cv.pick(palette, 12.0), fine=0.08, coarse=0.06)
    cv.paint(sl, mask, CLUTTER, material, cv.uniform(0.3, 1.5) * cv.scale, _GROUND)


def _add_container(cv: _Canvas, cx: float, cy: float) -> None:
    """A shipping container or skip: car-like in size, shape and colour, but clutter."""
    s = cv.scale
    found = cv.local(cx, cy, 6 * s, cv.angle + np.pi / 2 * cv.integer(0, 2))
    if found is not None:
        sl, along, across = found
        mask = (np.abs(along) <= cv.length(3.0, 5.5)) & (np.abs(across) <= cv.length(1.2, 1.8))
        material = cv.add_material(cv.pick(ODD_OBJECT), fine=0.03, stripe=0.05)
        cv.paint(sl, mask, CLUTTER, material, 2.0 * s, _GROUND)


def _add_scattered_clutter(cv: _Canvas, count: int, radius: tuple[float, float]) -> None:
    for _ in range(count):
        _add_clutter(cv, *cv.point(), cv.length(*radius))


def _add_soil(cv: _Canvas, cx: float, cy: float, radius: float) -> None:
    """A bare-soil or sand patch (clutter) on the ground."""
    found = _blob(cv, cx, cy, radius, 0.2)
    if found is not None:
        material = cv.add_material(cv.pick(SOIL, 10.0), fine=0.1, coarse=0.1)
        cv.paint(*found, CLUTTER, material, 0.0, _GROUND)


def _add_pond(cv: _Canvas, cx: float, cy: float, radius: float) -> None:
    found = _blob(cv, cx, cy, radius, 0.18)
    if found is not None:
        cv.paint(*found, WATER, cv.add_material(cv.pick(WATER_BODY), fine=0.02, coarse=0.06))


def _add_river(cv: _Canvas) -> None:
    """A meandering band of water across the patch, at any angle."""
    angle = cv.uniform(0, np.pi)
    along = cv.x * np.cos(angle) + cv.y * np.sin(angle)
    across = cv.y * np.cos(angle) - cv.x * np.sin(angle)
    wavelength = cv.length(60.0, 140.0)
    centre = cv.length(-20.0, 20.0) + cv.length(3.0, 12.0) * np.sin(
        2 * np.pi * along / wavelength + cv.uniform(0, 2 * np.pi)
    )
    water = np.abs(across - centre) <= cv.length(5.0, 10.0)
    cv.paint(_FULL, water, WATER, cv.add_material(cv.pick(WATER_BODY), fine=0.02, coarse=0.06))


def _add_pool(cv: _Canvas, cx: float, cy: float) -> None:
    """A small grid-aligned swimming pool in a garden."""
    found = cv.local(cx, cy, cv.length(3, 5), cv.angle)
    if found is not None:
        sl, du, dv = found
        mask = (np.abs(du) <= cv.length(1.5, 3.0)) & (np.abs(dv) <= cv.length(1.0, 2.0))
        cv.paint(sl, mask, WATER, cv.add_material(cv.pick(POOL), fine=0.02), onto=_GROUND)


def _add_path(cv: _Canvas) -> None:
    """A curving footpath (impervious) across the patch."""
    angle = cv.uniform(0, np.pi)
    along = cv.x * np.cos(angle) + cv.y * np.sin(angle)
    across = cv.y * np.cos(angle) - cv.x * np.sin(angle)
    centre = cv.length(-25.0, 25.0) + cv.length(2.0, 10.0) * np.sin(
        2 * np.pi * along / cv.length(40.0, 100.0) + cv.uniform(0, 2 * np.pi)
    )
    palette = cv.choose((BEIGE_PAVING, CONCRETE, ASPHALT, RED_PAVING))
    material = cv.add_material(cv.pick(palette), fine=0.08)
    cv.paint(_FULL, np.abs(across - centre) <= cv.length(1.2, 2.2), IMPERVIOUS, material)


def _add_field(cv: _Canvas, u: float, v: float, half_u: float, half_v: float) -> None:
    """A striped crop field or meadow (low vegetation), aligned to the street grid."""
    found = cv.local(*cv.to_image(u, v), np.hypot(half_u, half_v) + 1, cv.angle)
    if found is not None:
        sl, du, dv = found
        mask = (np.abs(du) <= half_u) & (np.abs(dv) <= half_v)
        colour = cv.pick_vegetation(GRASS_GREEN, GRASS_DRY if cv.chance(0.6) else SOIL)
        material = cv.add_material(colour, fine=0.05, coarse=0.05, stripe=0.16)
        cv.paint(sl, mask, LOW_VEG, material, onto=_GROUND)


def _add_parking(cv: _Canvas, u: float, v: float, half_u: float, half_v: float) -> None:
    """An asphalt parking lot with two rows of marked stalls, partly occupied by cars."""
    rng, s = cv.rng, cv.scale
    found = cv.local(*cv.to_image(u, v), np.hypot(half_u, half_v) + 1, cv.angle)
    if found is None:
        return
    sl, du, dv = found
    lot = (np.abs(du) <= half_u) & (np.abs(dv) <= half_v)
    asphalt = cv.add_material(cv.pick(ASPHALT), fine=0.05, coarse=0.05)
    lot = cv.paint(sl, lot, IMPERVIOUS, asphalt, onto=_GROUND)
    stall_width, stall_depth = PARKING_STALL_WIDTH * s, min(7.0 * s, half_v * 0.6)
    in_rows = np.abs(dv) >= half_v - stall_depth
    lines = (du + half_u) % stall_width < LANE_MARK_HALF_WIDTH * 2 * s
    marking = cv.add_material(cv.pick(ROAD_MARKING), fine=0.03)
    cv.paint(sl, lot & in_rows & lines, IMPERVIOUS, marking)
    occupancy = cv.uniform(0.3, 0.9)
    stall_u = np.arange(-half_u + stall_width / 2, half_u - stall_width / 2, stall_width)
    for side in (-1.0, 1.0):
        for su in stall_u[rng.random(len(stall_u)) < occupancy]:
            _add_car(cv, u + su, v + side * (half_v - stall_depth / 2), 1)


def _add_house_rows(cv: _Canvas, road: _Road, rows: int) -> None:
    """Rows of houses with driveways, parked cars and gardens on both sides of a road."""
    s = cv.scale
    for side in (-1.0, 1.0):
        front = road.offset + side * (road.half_width + cv.length(2.5, 6.0))
        for _ in range(rows):
            half_v = cv.length(4.5, 6.0)
            centre_v = front + side * half_v
            pos = -cv.extent + cv.length(0.0, 12.0)
            while pos < cv.extent:
                half_u = cv.length(5.0, 8.5)
                centre_u = pos + half_u
                pos += 2 * half_u + cv.length(3.0, 8.0)
                centre = _to_frame(road.axis, centre_u, centre_v)
                if cv.on_road(*centre, *_to_frame(road.axis, half_u, half_v)):
                    continue
                _add_house(cv, road, centre_u, centre_v, half_u, half_v)
                if cv.chance(0.5):
                    _add_driveway(cv, road, centre_u + half_u + 1.8 * s, front, side)
            front = centre_v + side * (half_v + cv.length(8.0, 16.0))


def _add_driveway(cv: _Canvas, road: _Road, along: float, front: float, side: float) -> None:
    """A paved strip from a road's sidewalk to a house front, sometimes with a car on it."""
    s = cv.scale
    start = road.offset + side * road.half_width
    middle, half_depth = (start + front) / 2 + side * 2 * s, abs(front - start) / 2 + 2 * s
    u, v = _to_frame(road.axis, along, middle)
    found = cv.local(*cv.to_image(u, v), half_depth + 2 * s, cv.angle)
    if found is None:
        return
    sl, du, dv = found
    d_along, d_across = _to_frame(road.axis, du, dv)
    mask = (np.abs(d_along) <= 1.7 * s) & (np.abs(d_across) <= half_depth)
    palette = cv.choose((CONCRETE, RED_PAVING, ASPHALT, BEIGE_PAVING))
    cv.paint(sl, mask, IMPERVIOUS, cv.add_material(cv.pick(palette), fine=0.06), onto=_GROUND)
    if cv.chance(0.5):
        _add_car(cv, u, v, 1 - road.axis)


# --- scenes -------------------------------------------------------------------------------


def _residential(cv: _Canvas) -> None:
    _add_grass(cv)
    if cv.chance(0.3):
        _add_river(cv)
    axis = cv.integer(0, 2)
    lanes = 2 if cv.chance(0.5) else 1
    road = _add_road(cv, axis, cv.length(-18, 18), cv.length(8, 11), lanes, cv.length(1.5, 2.5))
    if cv.chance(0.35):
        _add_road(cv, 1 - axis, cv.length(-25, 25), cv.length(7, 10), 1, cv.length(1.5, 2.5))
    _add_traffic(cv, road, 22.0, (road.lanes[0], road.lanes[-1]))
    _add_house_rows(cv, road, rows=2)
    if cv.chance(0.25):
        _add_pool(cv, *cv.point())
    if cv.chance(0.15):  # bare garden or building site
        _add_soil(cv, *cv.point(), cv.length(3.0, 6.0))
    _add_scattered_clutter(cv, cv.integer(2, 7), (1.2, 3.0))
    _add_trees(cv, cv.integer(8, 18), (3.5, 6.5))


def _road_scene(cv: _Canvas) -> None:
    s = cv.scale
    _add_grass(cv)
    if cv.chance(0.15):
        _add_river(cv)
    axis = cv.integer(0, 2)
    lanes = cv.integer(2, 5)
    width = lanes * cv.length(4.5, 5.5)
    sidewalk, verge = cv.length(2.0, 3.0), cv.length(3.0, 7.0)
    offset = cv.length(-10, 10)
    road = _add_road(cv, axis, offset, width, lanes, sidewalk)
    if cv.chance(0.4):
        _add_road(cv, 1 - axis, cv.length(-25, 25), cv.length(7, 10), 1, cv.length(1.5, 2.5))
    _add_traffic(cv, road, cv.uniform(10.0, 30.0), road.lanes)
    for side in (-1.0, 1.0):
        edge = offset + side * road.half_width
        beyond = edge + side * verge
        layout = cv.choose(("blocks", "parking", "green"), (0.7, 0.15, 0.15))
        if layout == "blocks":
            _add_blocks(cv, axis, beyond, side)
        elif layout == "parking":
            _add_roadside_parking(cv, axis, beyond, side)
        if cv.chance(0.7):  # a row of street trees on the verge
            _add_tree_row(cv, axis, edge + side * verge / 2, min(verge / 2 + 1.5 * s, 4.5 * s))
    if cv.chance(0.15):  # building site
        _add_soil(cv, *cv.point(), cv.length(4.0, 8.0))
    _add_scattered_clutter(cv, cv.integer(0, 4), (1.2, 3.0))
    _add_trees(cv, cv.integer(1, 6), (3.0, 6.0))


def _add_blocks(cv: _Canvas, axis: int, start: float, side: float) -> None:
    """Apartment or office blocks in a row beyond ``start`` across the street frame."""
    s = cv.scale
    half_v = cv.length(6.0, 11.0)
    centre_v = start + side * (half_v + cv.length(1.0, 4.0))
    pos = -cv.extent + cv.length(0.0, 10.0)
    while pos < cv.extent:
        half_u = cv.length(7.0, 16.0)
        centre_u = pos + half_u
        u, v = _to_frame(axis, centre_u, centre_v)
        hu, hv = _to_frame(axis, half_u, half_v)
        pos += 2 * half_u + cv.length(3.0, 9.0)
        if cv.on_road(u, v, hu, hv):
            continue
        roof = cv.choose(("flat", "hip", "gable"), (0.5, 0.3, 0.2))
        palettes, probs = (
            (FLAT_ROOFS, FLAT_ROOF_PROBS) if roof == "flat" else (HOUSE_ROOFS, HOUSE_ROOF_PROBS)
        )
        colour = cv.pick(cv.choose(palettes, probs))
        _add_building(cv, u, v, hu, hv, roof, colour, cv.length(6.0, 12.0))
        if cv.chance(0.3):  # bins or crates behind the block
            behind = _to_frame(axis, centre_u, centre_v + side * (half_v + 2 * s))
            _add_clutter(cv, *cv.to_image(*behind), cv.length(1.0, 2.0))


def _add_roadside_parking(cv: _Canvas, axis: int, start: float, side: float) -> None:
    """A parking lot beyond ``start`` across the street frame from a road along ``axis``."""
    half_v = cv.length(10.0, 13.0)
    if axis == 0:
        _add_parking(cv, 0.0, start + side * half_v, cv.extent, half_v)
    else:
        half_u = cv.length(12.0, 20.0)
        _add_parking(cv, start + side * half_u, cv.length(-15, 15), half_u, half_v)


def _add_tree_row(cv: _Canvas, axis: int, across: float, radius: float) -> None:
    spacing = cv.length(9.0, 14.0)
    pos = -cv.extent + cv.uniform(0, spacing)
    while pos < cv.extent:
        _add_tree(cv, *cv.to_image(*_to_frame(axis, pos, across)), radius * cv.uniform(0.8, 1.1))
        pos += spacing


def _park(cv: _Canvas) -> None:
    rng = cv.rng
    _add_grass(cv, mown=cv.chance(0.5))
    if cv.chance(0.3):
        _add_field(cv, cv.length(-20, 20), cv.length(-20, 20), cv.length(12, 30), cv.length(10, 25))
    if cv.chance(0.65):
        _add_pond(cv, *cv.point(margin=8 * cv.scale), cv.length(9.0, 18.0))
    elif cv.chance(0.3):
        _add_river(cv)
    for _ in range(cv.integer(1, 3)):
        _add_path(cv)
    if cv.chance(0.3):
        road = _add_road(
            cv, cv.integer(0, 2), cv.length(-30, 30), cv.length(7, 10), 2, cv.length(1.5, 2.5)
        )
        _add_traffic(cv, road, 20.0, road.lanes)
    if cv.chance(0.45):  # pavilion or kiosk
        colour = cv.pick(cv.choose(HOUSE_ROOFS, HOUSE_ROOF_PROBS))
        u, v, half_u, half_v = (
            cv.length(-25, 25),
            cv.length(-25, 25),
            cv.length(3, 7),
            cv.length(3, 6),
        )
        if not cv.on_road(u, v, half_u, half_v):
            _add_building(cv, u, v, half_u, half_v, "hip", colour, cv.length(3.0, 5.0))
    if cv.chance(0.6):  # sandpit or bare patch
        _add_soil(cv, *cv.point(), cv.length(3.0, 6.0))
    _add_scattered_clutter(cv, cv.integer(1, 6), (1.0, 2.5))
    for _ in range(cv.integer(2, 6)):  # tree clusters
        cx, cy = cv.point()
        spread = cv.length(6.0, 14.0)
        for _ in range(cv.integer(3, 9)):
            tx, ty = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
            if cv.label_at(tx, ty) in (LOW_VEG, TREE, CLUTTER):
                _add_tree(cv, tx, ty, cv.length(3.5, 7.0))
    _add_trees(cv, cv.integer(0, 4), (2.5, 5.5))


def _industrial(cv: _Canvas) -> None:
    s = cv.scale
    ground = CONCRETE if cv.chance(0.5) else ASPHALT
    _fill_ground(cv, IMPERVIOUS, cv.add_material(cv.pick(ground), fine=0.06, coarse=0.08))
    if cv.chance(0.5):  # strip of grass along the grid
        strip = np.abs(cv.v - cv.length(-25, 25)) <= cv.length(3.0, 8.0)
        grass = cv.add_material(cv.pick_vegetation(GRASS_GREEN, GRASS_DRY), fine=0.06, coarse=0.1)
        cv.paint(_FULL, strip, LOW_VEG, grass)
    if cv.chance(0.25):  # canal with the water surface below the quay
        canal = np.abs(cv.u - cv.length(-25, 25)) <= cv.length(5.0, 10.0)
        water = cv.add_material(cv.pick(WATER_BODY), fine=0.02, coarse=0.06)
        cv.paint(_FULL, canal, WATER, water, -2.0 * s)
    for _ in range(cv.integer(0, 4)):
        _add_soil(cv, *cv.point(), cv.length(3.0, 7.0))
    if cv.chance(0.5):
        road = _add_road(
            cv, cv.integer(0, 2), cv.length(-25, 25), cv.length(8, 12), 2, cv.length(1.0, 2.0)
        )
        _add_traffic(cv, road, 25.0, road.lanes)
    for _ in range(cv.integer(2, 6)):  # halls, each tried at a few spots clear of the road
        half_u, half_v = cv.length(9.0, 24.0), cv.length(7.0, 16.0)
        for _ in range(4):
            u, v = cv.length(-30, 30), cv.length(-30, 30)
            if not cv.on_road(u, v, half_u, half_v):
                colour = cv.pick(cv.choose(FLAT_ROOFS, FLAT_ROOF_PROBS))
                _add_building(cv, u, v, half_u, half_v, "flat", colour, cv.length(5.0, 11.0))
                break
    if cv.chance(0.6):
        u, v = cv.length(-25, 25), cv.length(-25, 25)
        _add_parking(cv, u, v, cv.length(10.0, 25.0), cv.length(10.0, 13.0))
    for _ in range(cv.integer(0, 5)):
        _add_container(cv, *cv.point())
    _add_scattered_clutter(cv, cv.integer(0, 4), (1.0, 2.5))
    _add_trees(cv, cv.integer(0, 4), (2.5, 5.0))


_SCENE_BUILDERS = {
    "residential": _residential,
    "road": _road_scene,
    "park": _park,
    "industrial": _industrial,
}


# --- rendering ----------------------------------------------------------------------------


def _white_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (much cheaper to draw than Gaussian noise)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(UNIFORM_TO_UNIT_SD)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise."""
    noise = ndimage.gaussian_filter(_white_noise(rng, (size, size)), sigma)
    return noise / (noise.std() + 1e-6)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, zero outside the array."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = a[
        max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)
    ]
    return out


def _cast_shadow(height: np.ndarray, azimuth: float, run: float) -> np.ndarray:
    """Pixels shaded by something taller between them and the sun (``run``: shadow length per
    unit of height)."""
    size = height.shape[0]
    sun_x, sun_y = np.cos(azimuth), np.sin(azimuth)
    floor = height + 0.3
    shadow = np.zeros(height.shape, bool)
    seen = set()
    for step in range(1, int(np.ceil(float(height.max()) * run)) + 1):
        dy, dx = round(step * sun_y), round(step * sun_x)
        if max(abs(dy), abs(dx)) >= size:
            break
        if (dy, dx) in seen:
            continue
        seen.add((dy, dx))
        shadow |= _shift(height, dy, dx) - step / run > floor
    return shadow


def _dome_shading(cv: _Canvas, weight: np.ndarray) -> np.ndarray:
    """Brightness factor for domed surfaces (tree crowns): slopes facing the sun are lighter,
    i.e. where the height falls towards the sun."""
    step_y, step_x = round(np.sin(cv.sun_azimuth)), round(np.cos(cv.sun_azimuth))
    rise_towards_sun = _shift(cv.height, step_y, step_x) - cv.height
    return 1.0 - weight * np.clip(rise_towards_sun, -1.5, 1.5) * 0.22


def _compose(cv: _Canvas, ir_band: bool) -> np.ndarray:
    """Turn the material and height maps into a uint8 image [C, H, W] with imaging effects."""
    rng, size, s = cv.rng, cv.size, cv.scale
    table = np.asarray(cv.materials, np.float32)
    fine, coarse, stripe, dome = table[:, _TEXTURE_WEIGHTS].T[:, cv.material]
    light = 1.0 + fine * _smooth_noise(rng, size, 0.6) + coarse * _smooth_noise(rng, size, 2 * s)
    stripe_coord = cv.u if cv.chance(0.5) else cv.v
    stripe_period, stripe_phase = cv.length(2.5, 4.0), cv.uniform(0, 2 * np.pi)
    if table[:, _STRIPE].any():
        light += stripe * np.sin(2 * np.pi * stripe_coord / stripe_period + stripe_phase)
    if table[:, _DOME].any():
        light *= _dome_shading(cv, dome)
    bands = table[:, : 4 if ir_band else 3].T[:, cv.material] * light  # [C, H, W]
    shadow = _cast_shadow(cv.height, cv.sun_azimuth, cv.shadow_run)
    tint = SHADOW_TINT * cv.uniform(0.4, 0.62)
    bands[:, shadow] *= tint[: len(bands), None]
    bands = ndimage.gaussian_filter(bands, (0, *(2 * [cv.uniform(0.35, 0.8) * s])))
    # Imaging conditions as one affine map per band: colour cast and brightness, contrast about
    # the band mean, haze towards a bright bluish grey. Then sensor noise.
    gain = np.append(1.0 + rng.normal(0.0, 0.1, 3), cv.uniform(0.85, 1.15))
    gain *= cv.uniform(0.75, 1.25)
    contrast = cv.uniform(0.75, 1.2)
    haze = cv.uniform(0.0, 0.4) if cv.chance(0.5) else 0.0
    mean = bands.mean(axis=(1, 2)) * gain[: len(bands)]
    slope = gain * contrast * (1 - haze)
    offset = (1 - contrast) * (1 - haze) * mean + haze * np.asarray(HAZE[: len(bands)]) + 0.5
    bands = bands * slope[: len(bands), None, None].astype(np.float32)
    bands += offset[:, None, None].astype(np.float32)
    bands[:3] += _white_noise(rng, (3, size, size)) * np.float32(cv.uniform(1.5, 5.0))
    if ir_band:  # drawn last so that the RGB bands do not depend on ir_band
        bands[3] += _white_noise(rng, (size, size)) * np.float32(cv.uniform(4.0, 9.0))
    return np.clip(bands, 0, 255, out=bands).astype(np.uint8)


def render_patch(
    seed: int, split: str, index: int, size: int = 64, ir_band: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render one patch of the synthetic land-cover dataset.

    Deterministic in (seed, split, index, size, ir_band); the RGB bands are the same with or
    without ``ir_band``. ``seed`` and ``index`` must be non-negative.

    Returns (image uint8 [C, size, size] with C = 3 (RGB) or 4 (RGB + near-infrared),
    mask uint8 [size, size] of class indices into CLASS_NAMES).
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_CODES)}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    cv = _Canvas(rng, size)
    scene = cv.choose(SCENE_TYPES, SCENE_PROBS)
    _SCENE_BUILDERS[scene](cv)
    return _compose(cv, ir_band), cv.label.copy()
