"""Drawing an image at a photograph's detail (sizes: imagenet): clutter and a fine texture, so that
its JPEG carries ImageNet's bytes per pixel."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from pipeline.demo.draw import background, class_object, stripes

# sizes: imagenet, bytes. ILSVRC2012_img_train.tar is 147,897,477,120 bytes (the "138 GB" archive, the size
# pipeline/forecast.py carries) for 1,281,167 images: 115.4 kB a file with its tar header, about 114.7 kB of
# JPEG. Decoding costs what the entropy-coded bytes cost, so the rehearsal's files carry that rate, through
# their content: draw_photo draws every image at its own size with clutter (CLUTTER strokes whose size
# follows the image) and a fine texture (TEXTURE_*, at the pixel scale). Only the mean is published; the
# split is this module's: 0.51 B/px at 500 px, 0.44 B/px over 1000 px (a camera original has less detail
# per pixel than a downscaled "medium" photo). Half of all pixels lie in the tail over 1000 px, so the
# mean file follows it: 122 kB a file in the preflight's 10,000 training images (seed 0), 0.48 B/px
# (bench/generated_bytes.py; bench/RESULTS-scale.md, "Generated images at ImageNet's byte rate").
TEXTURE_TILE = 1024  # the texture is one seeded tile (cut at a random offset, repeated past 1024 px)
TEXTURE_LUMA = 10.0  # per-pixel grain, grey levels (all three channels alike)
TEXTURE_OCTAVES = ((2, 12.0), (4, 8.0), (8, 6.0), (16, 6.0), (32, 6.0))  # (px, grey levels): a 1/f-like mottle
TEXTURE_CHROMA = 5.0  # per-channel grain, grey levels
CLUTTER = 150  # strokes on the background, each a dull colour


def texture_tile(seed: int) -> np.ndarray:
    """The photographs' fine texture (sizes: imagenet): a seamless TEXTURE_TILE square of int16 offsets,
    per-pixel grain in all channels alike, a mottle of bilinear octaves (TEXTURE_OCTAVES), and a little
    grain per channel."""
    rng = np.random.default_rng([seed, 4])
    n = TEXTURE_TILE
    luma = rng.standard_normal((n, n), dtype=np.float32) * TEXTURE_LUMA
    for px, amplitude in TEXTURE_OCTAVES:
        grid = rng.standard_normal((n // px + 1, n // px + 1), dtype=np.float32) * amplitude
        grid[-1], grid[:, -1] = grid[0], grid[:, 0]  # wrap around, so that repeated tiles meet without a seam
        octave = Image.fromarray(grid, "F").resize((n, n), Image.BILINEAR, box=(0, 0, n // px, n // px))
        luma += np.asarray(octave)
    chroma = rng.standard_normal((n, n, 3), dtype=np.float32) * TEXTURE_CHROMA
    return np.clip(np.rint(chroma + luma[..., None]), -96, 96).astype(np.int16)


def _add_tiled(img: np.ndarray, tile: np.ndarray, oy: int, ox: int) -> None:
    """img += the tile repeated over it, starting at (oy, ox) of the tile."""
    n = tile.shape[0]
    h, w = img.shape[:2]
    y = 0
    while y < h:
        ty = (oy + y) % n
        dy = min(h - y, n - ty)
        x = 0
        while x < w:
            tx = (ox + x) % n
            dx = min(w - x, n - tx)
            img[y : y + dy, x : x + dx] += tile[ty : ty + dy, tx : tx + dx]
            x += dx
        y += dy


def draw_stripes(
    draw: ImageDraw.ImageDraw, period: float, angle: float, origin: tuple[int, int], size: tuple[int, int]
) -> None:
    """The dark stripes of draw.stripe_mask as polygons, the bands where the phase's fraction is under 1/2,
    on a canvas of `size` whose corner is `origin` of the image (the phase is the image's). Drawn, not
    computed per pixel, so a 12-megapixel image costs little more than a small one."""
    c, s = math.cos(angle), math.sin(angle)
    (x0, y0), (w, h) = origin, size
    along = [x * c + y * s for x, y in ((x0, y0), (x0 + w, y0), (x0, y0 + h), (x0 + w, y0 + h))]
    reach = w + h  # half-length of a band, past the canvas's corners
    cx, cy = x0 + w / 2, y0 + h / 2  # bands are drawn from the point nearest the canvas's centre
    for k in range(math.floor(min(along) / period) - 1, math.ceil(max(along) / period) + 1):
        corners = []
        for d, sign in (((k * period), 1), ((k + 0.5) * period, -1)):
            t = -cx * s + cy * c  # the centre's position along a band
            px, py = d * c - t * s - x0, d * s + t * c - y0
            corners += [(px - sign * reach * s, py + sign * reach * c), (px + sign * reach * s, py - sign * reach * c)]
        draw.polygon(corners, fill=255)


def _dull_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> list[tuple[int, int, int]]:
    """draw.rgb over arrays (colorsys's formula), for many colours at once."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(int) % 6
    rgb = [np.choose(i, sector) for sector in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))]
    return [tuple(c) for c in np.rint(255 * np.stack(rgb, 1)).astype(int).tolist()]


def draw_photo(
    rng: np.random.Generator, look: dict, n_classes: int, size: tuple[int, int], texture: np.ndarray
) -> Image.Image:
    """One image of the class `look` at `size` (width, height), drawn at that size with a photograph's
    detail (sizes: imagenet): draw.draw_image's background, blobs and class object, plus CLUTTER strokes
    under the object and the texture over everything. The class code (hue, shape, stripes) is drawn
    as in draw.draw_image, at the same relative sizes."""
    w, h = size
    side = min(w, h)
    bg = background(rng, w, h)
    draw = ImageDraw.Draw(bg)
    # Clutter: short dull strokes (grass, twigs, edges), sized with the image, so a large image has fewer
    # edges per pixel, as a camera original has next to a downscaled photo.
    x, y, length, angle, width, hue, sat, val = rng.random((8, CLUTTER))
    x, y, length, angle = x * w, y * h, (0.02 + 0.13 * length) * side, angle * math.pi
    dx, dy = length * np.cos(angle), length * np.sin(angle)
    ends = np.stack([x - dx, y - dy, x + dx, y + dy], 1).tolist()
    widths = np.maximum(1, np.rint((0.003 + 0.012 * width) * side)).astype(int).tolist()
    for end, fill, px in zip(ends, _dull_rgb(hue, 0.3 * sat, 0.15 + 0.8 * val), widths):
        draw.line(end, fill=fill, width=px)
    colour, mask = class_object(rng, look, n_classes, w, h)
    bg.paste(colour, mask=mask)
    if look["stripes"]:  # the dark stripes, drawn over the object's box only
        period, angle = stripes(rng, look, side)
        box = mask.getbbox()
        if box is not None:
            dark = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
            draw_stripes(ImageDraw.Draw(dark), period, angle, box[:2], dark.size)
            bg.paste(tuple(int(c * 0.45) for c in colour), box, mask=ImageChops.multiply(dark, mask.crop(box)))
    img = np.array(bg, np.int16)
    n = texture.shape[0]
    _add_tiled(img, texture, int(rng.integers(0, n)), int(rng.integers(0, n)))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
