"""What each step of the DALI training graph costs on the CPU, and the alternatives tried.

Every variant below is a complete DALI CPU pipeline on the same 256x256
shards (reader, decoder, random crop position and flip), differing only in
what follows the decoder. Images per CPU-second of the process (all DALI
threads), best of --repeats passes of --batches batches: the difference
between two rows is the per-image CPU cost of what one adds.

    decode        reader + decoder only
    crop_float    crop_mirror_normalize to float CHW, no mean/std (a plain conversion)
    crop_u8       crop_mirror_normalize, uint8 CHW out
    channel       crop + flip + per-channel (x - mean) / std to float CHW: normalize=channel
    mean_image    image - mean image (float32 constant), then crop + flip + normalize:
                  normalize=mean_image, the paper's (what pipeline/dali_pipes.py builds)
    mean_image_plain  the same without crop_mirror_normalize's mean/std arguments
    sub3_plain    image - mean image - lighting offset in one arithmetic expression, then a plain crop
    sub_only      image - mean image alone (no crop)
    crop_then_sub crop the image and the mean image at the same place, then subtract
    arith_channel crop_float, then (x - mean) * (1 / std) as DALI arithmetic
    sub_lighting  crop_then_sub, minus a per-sample lighting offset broadcast over H, W
    *_fast_idct   the same with libjpeg-turbo's fast integer IDCT (decoder use_fast_idct)

    python bench/dali_cpu_ops.py --images 2048 --dali-threads 2 --repeats 5

Figures: bench/RESULTS-augment.md. Needs nvidia-dali, numpy and pillow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from synthetic import make_shards  # noqa: E402  (bench/ is on sys.path when run as a script)

from pipeline import dali_pipes as dp  # noqa: E402
from pipeline.shards import index_path  # noqa: E402

VARIANTS = [
    "decode",
    "crop_float",
    "crop_u8",
    "channel",
    "mean_image",
    "mean_image_plain",
    "sub3_plain",
    "sub_only",
    "crop_then_sub",
    "arith_channel",
    "sub_lighting",
    "decode_fast_idct",
    "mean_image_fast_idct",
]
MEAN = [123.7, 116.3, 103.5]
STD = [58.4, 57.1, 57.4]


def crop(x, pos_x, pos_y, mirror, dtype=types.FLOAT, **norm):
    return fn.crop_mirror_normalize(
        x,
        crop=(dp.CROP, dp.CROP),
        crop_pos_x=pos_x,
        crop_pos_y=pos_y,
        mirror=mirror,
        dtype=dtype,
        output_layout="CHW",
        **norm,
    )


@pipeline_def
def variant_pipe(shards, variant, mean_image):
    jpegs, _ = dp.read(shards, [str(index_path(s)) for s in shards], 0, 1, shuffle=True)
    fast = variant.endswith("_fast_idct")
    variant = variant.removesuffix("_fast_idct")
    image = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB, use_fast_idct=fast)
    pos_x, pos_y = fn.random.uniform(values=dp.CROP_POS), fn.random.uniform(values=dp.CROP_POS)
    mirror = fn.random.coin_flip(probability=0.5)
    mean_c = types.Constant(mean_image)
    if variant == "decode":
        return image
    if variant == "crop_float":
        return crop(image, pos_x, pos_y, mirror)
    if variant == "crop_u8":
        return crop(image, pos_x, pos_y, mirror, dtype=types.UINT8)
    if variant == "channel":
        return crop(image, pos_x, pos_y, mirror, mean=MEAN, std=STD)
    if variant == "mean_image":
        return crop(image - mean_c, pos_x, pos_y, mirror, mean=[0.0] * 3, std=[1.0] * 3)
    if variant == "mean_image_plain":
        return crop(image - mean_c, pos_x, pos_y, mirror)
    if variant == "sub3_plain":
        offset = fn.reshape(fn.random.normal(shape=[3], stddev=5.0), shape=[1, 1, 3])
        return crop(image - mean_c - offset, pos_x, pos_y, mirror)
    if variant == "sub_only":
        return image - mean_c
    if variant == "arith_channel":
        inv_std = types.Constant(np.array(STD, np.float32).reshape(3, 1, 1) ** -1)
        return (
            crop(image, pos_x, pos_y, mirror) - types.Constant(np.array(MEAN, np.float32).reshape(3, 1, 1))
        ) * inv_std
    diff = crop(image, pos_x, pos_y, mirror) - crop(mean_c, pos_x, pos_y, mirror)
    if variant == "crop_then_sub":
        return diff
    if variant == "sub_lighting":
        return diff - fn.reshape(fn.random.normal(shape=[3], stddev=5.0), shape=[3, 1, 1])
    raise ValueError(variant)


def measure(pipes: dict, batch: int, batches: int, repeats: int) -> dict:
    """Best images/CPU-s and images/s of each built pipeline over `repeats` passes.

    The passes are interleaved (every variant once per round) so that a slow
    spell of a shared or virtual machine hits every variant alike.
    """
    best = {k: [0.0, 0.0] for k in pipes}
    for _ in range(repeats):
        for name, pipe in pipes.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(batches):
                pipe.run()
            n = batches * batch
            best[name][0] = max(best[name][0], n / (time.process_time() - c0))
            best[name][1] = max(best[name][1], n / (time.perf_counter() - t0))
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2048, help="synthetic images in the shards")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dali-threads", type=int, default=2, help="DALI threads")
    p.add_argument("--batches", type=int, default=8, help="timed batches per pass")
    p.add_argument("--repeats", type=int, default=5, help="interleaved passes; the best counts")
    p.add_argument("--only", nargs="*", choices=VARIANTS, help="measure only these")
    a = p.parse_args(argv)
    mean_image = np.ascontiguousarray(np.random.default_rng(0).uniform(0, 255, (256, 256, 3)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        shards, size = make_shards(tmp, a.images, "ops", per_shard=1024)
        pipes = {}
        for variant in a.only or VARIANTS:
            pipes[variant] = variant_pipe(
                shards=shards,
                variant=variant,
                mean_image=mean_image,
                batch_size=a.batch,
                num_threads=a.dali_threads,
                device_id=None,
                seed=1,
                prefetch_queue_depth=1,
            )
            pipes[variant].build()
            pipes[variant].run()  # warm-up
        rows = measure(pipes, a.batch, a.batches, a.repeats)
        del pipes
    print(f"DALI CPU, batch {a.batch}, {a.dali_threads} threads, {a.images} images of {size:.0f} bytes\n")
    print("| variant | images/CPU-s | CPU ms/image | images/s |")
    print("| --- | ---: | ---: | ---: |")
    for variant, (cpu, wall) in rows.items():
        print(f"| {variant} | {cpu:.0f} | {1e3 / cpu:.3f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
