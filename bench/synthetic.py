"""Synthetic inputs shared by the benchmarks: photo-like 256x256 JPEG shards.

Smooth random scenes with grain (and optionally sharp-edged discs) give JPEG
sizes like resized photographs, at quality 90 like the resize stage.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from pipeline.shards import ShardWriter

# fb.resnet.torch's ImageNet statistics (pixels in [0, 1]), moved to the 0-255 scale
IMAGENET_PCA = {
    "eigval": (np.array([0.2175, 0.0188, 0.0045]) * 255**2).tolist(),
    "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
}


def scene(rng, discs: int = 3) -> np.ndarray:
    """A smooth random 256x256 scene with grain and `discs` sharp-edged discs."""
    low = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((256, 256), Image.BICUBIC), np.float32)
    for _ in range(discs):
        cy, cx, r = rng.uniform(0, 256, 2).tolist() + [rng.uniform(15, 70)]
        yy, xx = np.ogrid[:256, :256]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shards(
    folder,
    images: int,
    prefix: str,
    classes: int = 1000,
    per_shard: int = 1024,
    distinct: int = 256,
    discs: int = 3,
    seed: int = 0,
) -> tuple[list[str], float]:
    """`images` samples in shards `<prefix>-NNNNN.tar` (+ .idx), cycling `distinct` encoded
    scenes; returns the shard paths and the mean JPEG size in bytes."""
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(min(distinct, images)):
        buf = io.BytesIO()
        Image.fromarray(scene(rng, discs)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    paths = []
    for k in range(0, images, per_shard):
        path = os.path.join(folder, f"{prefix}-{k // per_shard:05d}.tar")
        with ShardWriter(path) as w:
            for i in range(k, min(k + per_shard, images)):
                w.add(f"img{i:07d}", jpegs[i % len(jpegs)], i % classes)
        paths.append(path)
    return paths, float(np.mean([len(j) for j in jpegs]))
