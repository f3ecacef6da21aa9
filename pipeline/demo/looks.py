"""Each class's look: the hue, shape and stripes that its images share and a CNN learns."""

from __future__ import annotations

import math

from pipeline.demo.class_table import FIXED_CLASSES

SHAPES = ("disc", "triangle", "square", "ring", "cross", "star", "bar", "diamond")
# Looks of more than 100 classes: a code of hue bin x shape x texture (10 x 8 x 13 = 1040 codes). A
# texture is plain or stripes at one of 6 angles and 2 periods. The angles lie in [0, pi/2], so a
# horizontal flip (a -> pi - a), the training's augmentation, never turns one into another.
HUE_BINS = 10
STRIPE_ANGLES = tuple(math.pi / 2 * j / 5 for j in range(6))
STRIPE_PERIODS = (0.035, 0.08)  # of the short side: about 9 and 20 px once resized to 256
TEXTURES = (None,) + tuple((a, p) for a in STRIPE_ANGLES for p in STRIPE_PERIODS)


def class_look(k: int, n_classes: int) -> dict:
    """The class's hue, shape and texture; fixed per class, not per image."""
    if n_classes > FIXED_CLASSES:
        return coded_look(k)
    return {
        "hue": k / n_classes,
        "shape": SHAPES[k % len(SHAPES)],
        "stripes": (k // len(SHAPES)) % 2 == 1 or k % 3 == 2,
        "stripe_angle": math.pi * ((k * 0.381966) % 1.0),
    }


def coded_look(k: int) -> dict:
    """Class k's look as a code of hue bin, shape and texture; distinct for k < 1040.

    With 1000 hues 0.001 apart nothing is learnable; each factor of the code
    is, and each one learned takes the loss below ln(1000)."""
    hue_bin, rest = k % HUE_BINS, k // HUE_BINS
    shape, texture = SHAPES[rest % len(SHAPES)], TEXTURES[rest // len(SHAPES)]
    look = {
        "hue": (hue_bin + 0.5) / HUE_BINS,
        "hue_jitter": 0.2 / HUE_BINS,  # well inside the bin
        "shape": shape,
        "stripes": texture is not None,
    }
    if texture is not None:
        look["stripe_angle"], look["stripe_period"] = texture
    return look
