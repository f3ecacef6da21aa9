"""The real set's odd files: CMYK and grayscale JPEGs and a PNG named .JPEG; which a split carries,
and each image's file bytes."""

from __future__ import annotations

import io

from PIL import Image

from pipeline.sources import ILSVRC_TRAIN_IMAGES

JPEG_QUALITY = 90

# Quirks of the real train set (ILSVRC_TRAIN_IMAGES): 22 CMYK JPEGs and one PNG named .JPEG (the lists in
# TensorFlow's models/research/inception build_imagenet_data.py, from github.com/cytsai/ilsvrc-cmyk-image-list).
# No sourced count of its grayscale JPEGs was found, so the rate is 0 and each split keeps the one
# every split carries anyway. Val takes the same rates: its one CMYK JPEG in 50,000 (the same list)
# matches, and it has no PNG, but the rehearsal reads one in each split. sizes: demo keeps its fixed
# quirks (DEMO_QUIRKS).
QUIRK_RATES = {"cmyk": 22 / ILSVRC_TRAIN_IMAGES, "gray": 0.0, "png": 1 / ILSVRC_TRAIN_IMAGES}
DEMO_QUIRKS = (("cmyk", "gray", "png"), ("gray",))  # train, val


def encode(img: Image.Image, quirk: str | None) -> bytes:
    """JPEG bytes; or a quirk of the real set: 'cmyk', 'gray' JPEG, or 'png' data."""
    buf = io.BytesIO()
    if quirk == "png":
        img.save(buf, format="PNG")
    elif quirk == "cmyk":
        img.convert("CMYK").save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif quirk == "gray":
        img.convert("L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def quirk_list(sizes: str, split: int, n_images: int) -> tuple[str, ...]:
    """The quirks one split carries (split 0 train, 1 val), one entry per image."""
    if sizes == "demo":
        return DEMO_QUIRKS[split]
    return tuple(q for q, rate in QUIRK_RATES.items() for _ in range(max(1, round(rate * n_images))))
