"""Bytes per file and per pixel of the generated training images, and what the resize stage pays for them.

    python bench/generated_bytes.py --out-dir /tmp/gen --classes 100 --train-per-class 10 --workers 2

Generates a dataset with pipeline/demo/ (`sizes: imagenet` by default, the
preflight's large_fraction 0.03), then over its training JPEGs (the quirks
excluded: PNG, CMYK and grayscale files are not what the byte rate is about):
- bytes per file and bytes per pixel, mean over all and over the large ones
  (long side over 1000 px) and the 500 px ones;
- the resize stage's per-image work as the stage's loop does it
  (`images.downsample`, `resize.RGBStats.add`, `resize.encode_jpeg`), in CPU
  seconds of this thread, best of `--rounds` passes, so that other processes
  on a shared machine delay it but do not add to it.
ILSVRC-2012's training set for comparison: ILSVRC2012_img_train.tar is
147,897,477,120 bytes ("138 GB", in GiB; the size pipeline/forecast.py
carries) over 1,281,167 images: 115.4 kB per image, tar headers and padding
(about 0.8 kB per member) included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import demo, images, resize  # noqa: E402


def train_jpegs(path) -> list[bytes]:
    """Every plain RGB JPEG of a generated training archive (one <wnid>.tar per class)."""
    out = []
    with tarfile.open(path) as outer:
        for m in outer:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())) as inner:
                for im in inner:
                    data = inner.extractfile(im).read()
                    head = Image.open(io.BytesIO(data))
                    if head.format == "JPEG" and head.mode == "RGB":
                        out.append(data)
    return out


def byte_stats(jpegs: list[bytes]) -> dict:
    sizes = np.array([Image.open(io.BytesIO(d)).size for d in jpegs], np.int64)
    nbytes = np.array([len(d) for d in jpegs], np.float64)
    pixels = sizes.prod(1).astype(np.float64)
    long_side = sizes.max(1)
    groups = {"all": long_side > 0, "over_1000px": long_side > 1000, "500px": long_side == 500}
    stats = {}
    for name, sel in groups.items():
        stats[name] = {
            "files": int(sel.sum()),
            "mean_kB": round(float(nbytes[sel].mean()) / 1e3, 1) if sel.any() else None,
            "bytes_per_pixel": round(float(nbytes[sel].sum() / pixels[sel].sum()), 3) if sel.any() else None,
            "mean_pixels": round(float(pixels[sel].mean())) if sel.any() else None,
        }
    return stats


def resize_ms(jpegs: list[bytes], rounds: int) -> dict:
    """Per-image CPU milliseconds of decode + resize, statistics and encode, best of `rounds` per image."""
    acc = resize.RGBStats()
    best = np.full(len(jpegs), np.inf)
    for _ in range(rounds):
        for i, data in enumerate(jpegs):
            t0 = time.thread_time()
            im = images.downsample(data)
            acc.add(np.asarray(im))
            resize.encode_jpeg(im)
            best[i] = min(best[i], time.thread_time() - t0)
    long_side = np.array([max(Image.open(io.BytesIO(d)).size) for d in jpegs])
    big = long_side > 1000
    return {
        "mean_ms": round(1e3 * float(best.mean()), 3),
        "over_1000px_ms": round(1e3 * float(best[big].mean()), 2) if big.any() else None,
        "up_to_1000px_ms": round(1e3 * float(best[~big].mean()), 3),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--train-per-class", type=int, default=10)
    p.add_argument("--val-per-class", type=int, default=1)
    p.add_argument("--large-fraction", type=float, default=0.03)
    p.add_argument("--sizes", default="imagenet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="passes of the resize timing (0: skip it)")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    m = demo.make_demo(
        a.out_dir, a.seed, a.classes, a.train_per_class, a.val_per_class, a.large_fraction, a.sizes, a.workers
    )
    jpegs = train_jpegs(os.path.join(a.out_dir, demo.TRAIN_TAR))
    result = {
        "settings": vars(a),
        "generation_seconds": m["seconds"],
        "train_tar_bytes": m["train_bytes"],
        "train_images": m["train_images"],
        "bytes": byte_stats(jpegs),
    }
    if a.rounds:
        result["resize"] = resize_ms(jpegs, a.rounds)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
