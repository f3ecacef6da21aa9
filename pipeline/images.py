"""One image to the paper's 256x256 square: the resize stage's geometry, shared with prediction.

Paper, section 2: rescale so that the shorter side is 256, then keep the
central 256x256 patch. The resize stage writes the shards with `downsample`
and pipeline/predict.py prepares a user's photo with the same function, so a
photo is scored on the pixels training saw (see pipeline/resize.py for the
decoding shortcuts and the filter's measured error).
"""

from __future__ import annotations

import io

from PIL import Image

from pipeline.shards import IMAGE_SIZE

RESAMPLE = Image.Resampling.BILINEAR  # antialiased when downscaling; torchvision's Resize(256) filter


def crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """Source box of the central size x size patch after scaling the shorter side to size.

    Uses the integer geometry of resize-then-crop (scaled sides rounded, crop
    offset floored), so resizing only this box gives the same pixels.
    """
    scale = size / min(width, height)
    scaled_w, scaled_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (scaled_w - size) // 2, (scaled_h - size) // 2
    fx, fy = width / scaled_w, height / scaled_h
    return left * fx, top * fy, (left + size) * fx, (top + size) * fy


def downsample(data: bytes, size: int = IMAGE_SIZE) -> Image.Image:
    """Decode an image, scale its shorter side to `size`, keep the central square; RGB.

    Raises whatever PIL raises for undecodable data (OSError for truncated files).
    """
    im = Image.open(io.BytesIO(data))
    width, height = im.size
    drafted = im.draft("RGB", (size, size))  # JPEG only; None for other formats
    im.load()
    dct_scale = width / drafted[1][2] if drafted else 1.0
    if im.mode != "RGB":
        im = im.convert("RGB")  # CMYK, L, P, RGBA, PNG: before resizing (palettes can't be filtered)
    box = tuple(v / dct_scale for v in crop_box(width, height, size))
    return im.resize((size, size), RESAMPLE, box=box)
