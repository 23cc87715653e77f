"""The materials of the synthetic scenes (:mod:`bench.datasets.synthetic_scene`): colour
palettes as RGB tones with a near-infrared level, and how haze and shadows tint them.
Palettes overlap between classes on purpose (the scene module's docstring says why)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Palette(NamedTuple):
    """Candidate RGB colours of one material family and its near-infrared level (0-255)."""

    colours: tuple[tuple[int, int, int], ...]
    nir: float


# Paved ground. Overlaps grey/light/red roofs on purpose.
ASPHALT = Palette(((72, 73, 76), (88, 88, 90), (102, 100, 98), (62, 64, 69), (116, 114, 110)), 70)
CONCRETE = Palette(((150, 148, 142), (172, 170, 163), (190, 186, 178), (132, 132, 130)), 125)
RED_PAVING = Palette(((148, 86, 70), (166, 102, 82), (132, 92, 82), (176, 124, 98)), 115)
BEIGE_PAVING = Palette(((186, 172, 146), (168, 158, 136), (200, 188, 160)), 140)
ROAD_MARKING = Palette(((226, 226, 222), (236, 230, 200)), 190)
SIDEWALKS = (CONCRETE, RED_PAVING, BEIGE_PAVING)
# Roofs. Overlap paving, soil, water and vegetation on purpose.
ROOF_TILE = Palette(
    ((164, 76, 56), (150, 88, 68), (178, 98, 72), (128, 66, 56), (170, 110, 85)), 120
)
ROOF_GREY = Palette(((98, 99, 102), (122, 121, 118), (84, 88, 93), (148, 148, 146)), 95)
ROOF_DARK = Palette(((48, 50, 57), (40, 43, 50), (60, 57, 56), (52, 60, 70)), 55)
ROOF_LIGHT = Palette(((198, 196, 190), (214, 210, 200), (180, 182, 184)), 165)
ROOF_GREEN = Palette(((92, 122, 74), (72, 108, 84), (110, 128, 80)), 100)
ROOF_BROWN = Palette(((124, 94, 72), (140, 112, 84), (110, 96, 86)), 110)
SOLAR_PANEL = Palette(((38, 46, 72), (30, 36, 58), (46, 52, 66)), 40)
ROOFTOP_UNIT = Palette(((170, 170, 172), (120, 122, 126), (200, 200, 198)), 120)
HOUSE_ROOFS = (ROOF_TILE, ROOF_GREY, ROOF_DARK, ROOF_BROWN, ROOF_GREEN)
HOUSE_ROOF_PROBS = (0.38, 0.3, 0.16, 0.12, 0.04)
FLAT_ROOFS = (ROOF_LIGHT, ROOF_GREY, ROOF_DARK, ROOF_TILE, ROOF_GREEN)
FLAT_ROOF_PROBS = (0.35, 0.35, 0.17, 0.08, 0.05)
# Vegetation: the colour is blended from the green to the dry palette by the season.
GRASS_GREEN = Palette(
    ((92, 138, 58), (108, 148, 68), (84, 124, 56), (120, 150, 80), (70, 108, 50)), 205
)
GRASS_DRY = Palette(((166, 150, 96), (150, 134, 86), (178, 162, 112), (140, 128, 90)), 140)
TREE_GREEN = Palette(((48, 88, 40), (60, 98, 46), (44, 78, 46), (70, 104, 52), (86, 118, 60)), 185)
TREE_DRY = Palette(((92, 96, 52), (122, 102, 54), (140, 92, 48), (104, 90, 62)), 140)
# Water. Dark like shadows and dark roofs; pools are bright turquoise.
WATER_BODY = Palette(
    (
        (34, 54, 78),
        (40, 68, 74),
        (30, 44, 58),
        (56, 70, 62),
        (60, 84, 96),
        (72, 86, 62),
        (92, 84, 64),
        (84, 102, 106),
    ),
    25,
)
POOL = Palette(((70, 160, 190), (90, 180, 200), (60, 140, 170)), 45)
# Clutter: bare soil and sand (like dry grass and brown roofs) and odd-coloured objects.
SOIL = Palette(((142, 116, 86), (156, 132, 96), (122, 100, 76), (170, 150, 115)), 120)
ODD_OBJECT = Palette(
    (
        (206, 92, 34),
        (60, 92, 170),
        (168, 62, 140),
        (220, 200, 64),
        (232, 232, 228),
        (92, 62, 42),
        (150, 40, 40),
        (70, 120, 110),
    ),
    110,
)
# Cars: any common paint colour, so colour alone says little.
CAR_PAINT = Palette(
    (
        (232, 232, 230),
        (28, 30, 34),
        (138, 140, 146),
        (168, 32, 32),
        (42, 62, 132),
        (192, 192, 196),
        (96, 98, 102),
        (40, 90, 60),
    ),
    110,
)
CAR_GLASS = Palette(((30, 34, 40), (44, 50, 58)), 30)
HAZE = (188.0, 194.0, 204.0, 150.0)  # RGB + NIR colour that haze blends towards
SHADOW_TINT = np.array([0.92, 0.97, 1.1, 0.8], np.float32)  # shadows are bluish, dark in NIR
