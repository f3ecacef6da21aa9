"""Drawing an image of a class (sizes: demo): a background, the class's object, pixel noise.

The background and the object are pipeline/demo/photo.py's too, so both sizes draw a class alike.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 512  # images are drawn at most this size, then upscaled


def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """An HSV colour (hue taken modulo 1) as 8-bit RGB."""
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 4)[:3]]
    elif shape == "square":
        pts = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    elif shape == "diamond":
        pts = [(1.0, 0), (0, 0.45), (-1.0, 0), (0, -0.45)]
    elif shape == "bar":
        pts = [(1.0, 0.22), (-1.0, 0.22), (-1.0, -0.22), (1.0, -0.22)]
    elif shape == "cross":
        a, b = 1.0, 0.3
        pts = [
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
        ]
    elif shape == "star":
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5),
            )
            for i in range(10)
        ]
    else:
        raise ValueError(shape)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A dull random colour and a few dull blobs."""
    bg = Image.new("RGB", (w, h), rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8)))
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.35) * min(w, h)
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], fill=rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        )
    return bg


def class_object(
    rng: np.random.Generator, look: dict, n_classes: int, w: int, h: int
) -> tuple[tuple[int, int, int], Image.Image]:
    """The object's colour, in the class's hue, and its mask: the class's shape, once or twice, at a
    random place, size and angle."""
    jitter = look.get("hue_jitter", 0.25 / n_classes)
    colour = rgb(look["hue"] + rng.uniform(-jitter, jitter), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for i in range(1 + int(rng.random() < 0.3)):
        r = rng.uniform(0.18, 0.35) * min(w, h) * (0.6 if i else 1.0)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        _draw_shape(mdraw, look["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi))
    return colour, mask


def noise_pool(seed: int) -> np.ndarray:
    """Gaussian pixel noise (sigma 12) that images crop at random offsets; cheaper than fresh noise."""
    rng = np.random.default_rng([seed, 3])
    return np.clip(rng.normal(0.0, 12.0, size=(2 * CANVAS, 2 * CANVAS, 3)), -64, 64).astype(np.int16)


def draw_image(
    rng: np.random.Generator, look: dict, n_classes: int, size: tuple[int, int], noise: np.ndarray
) -> Image.Image:
    """One image of the class `look` at `size` (width, height)."""
    scale = min(1.0, CANVAS / max(size))
    w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    bg = background(rng, w, h)
    colour, mask = class_object(rng, look, n_classes, w, h)
    fg = Image.new("RGB", (w, h), colour)
    if look["stripes"]:
        fg.paste(tuple(int(c * 0.45) for c in colour), mask=stripe_mask(*stripes(rng, look, min(w, h)), w, h))
    img = np.asarray(Image.composite(fg, bg, mask), np.int16)
    oy, ox = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    img = img + noise[oy : oy + h, ox : ox + w]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if out.size != tuple(size):
        out = out.resize(size, Image.BILINEAR)
    return out


def stripes(rng: np.random.Generator, look: dict, side: int) -> tuple[float, float]:
    """Stripe period (px) and angle of one image; a coded look fixes both up to a little jitter."""
    if "stripe_period" in look:
        # jitter well under half the gap between the code's angles (pi/10) and periods
        return look["stripe_period"] * rng.uniform(0.9, 1.1) * side, look["stripe_angle"] + rng.uniform(-0.08, 0.08)
    return rng.uniform(0.04, 0.07) * side, look["stripe_angle"] + rng.uniform(-0.2, 0.2)


def stripe_mask(period: float, angle: float, w: int, h: int) -> Image.Image:
    """Mode-1 mask of the dark stripes."""
    yy, xx = np.ogrid[:h, :w]
    phase = xx * math.cos(angle) + yy * math.sin(angle)
    phase /= period
    # phase - floor(phase) equals numpy's phase % 1.0 bit for bit (both round the same exact value once)
    # at a sixth of the cost; a mode-1 mask and paste beat indexing a colour table likewise
    frac = np.floor(phase)
    np.subtract(phase, frac, out=frac)
    return Image.fromarray(frac < 0.5)
