"""The augment stage: the DALI pipelines of training and test on the real shards (paper, section 4.1).

    python -m pipeline.augment --manifest results/shards/manifest.json \
        --pca results/pca/pca.json --mean-image results/pca/mean_image.npy --out-dir results/augment

Builds both pipelines (pipeline/loaders.py, which training and evaluation use
in-process) and writes grid.png (augmented training samples beside their
originals) and augment.json (images/s of the training, centre and ten-crop
pipelines).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline import dali_pipes
from pipeline.errors import run_cli
from pipeline.io import atomic_path, write_json
from pipeline.loaders import (
    DALI_THREADS,
    LIGHTING,
    NORMALIZE,
    VIEWS,
    AugmentSettings,
    EvalLoader,
    LoaderError,
    TrainLoader,
    as_numpy,
    manifest_shards,
)
from pipeline.pca_files import load_pca
from pipeline.schema import defaults
from pipeline.shards import read_manifest


def rate(batches, count, warmup=1, sync=False):
    """(seconds to the first batch, images/s over the next `count` batches)."""
    t0 = time.perf_counter()
    n, first, t1 = 0, None, None
    for i, batch in enumerate(batches):
        if sync:
            torch.cuda.synchronize()
        if i + 1 == warmup:
            first = t1 = time.perf_counter()
            first -= t0
        elif i + 1 > warmup:
            n += len(batch[1])
            if i + 1 == warmup + count:
                break
    if sync:
        torch.cuda.synchronize()
    return first, (n / (time.perf_counter() - t1) if n else float("nan"))


def cycle_epochs(loader: TrainLoader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


def cycle_eval(loader: EvalLoader):
    while True:
        yield from loader


def save_grid(train: TrainLoader, samples: int, png, class_names: list[str] = ()) -> None:
    """Originals with the crop box drawn, beside the augmented patch with normalisation undone;
    each titled with its class index and, where given, name (an index alone says little at 1000 classes)."""

    pipe = train.pipeline(0, batch_size=samples, expose=True)
    images, labels, decoded, pos_x, pos_y, mirror, offset = (as_numpy(t) for t in pipe.run())
    del pipe
    s, pca = train.settings, train.pca
    cols = 2 if samples > 1 else 1
    rows = -(-samples // cols)
    fig = Figure(figsize=(4.4 * cols, 2.3 * rows))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(samples):
        ox, oy = round(float(pos_x[i]) * dali_pipes.SPAN), round(float(pos_y[i]) * dali_pipes.SPAN)
        flip = bool(mirror[i])
        patch = images[i].transpose(1, 2, 0)
        if s.normalize == "mean_image":
            m = pca.mean_image[oy : oy + dali_pipes.CROP, ox : ox + dali_pipes.CROP]
            patch = patch + (m[:, ::-1] if flip else m)
        else:
            patch = patch * pca.std + pca.mean
        a, b = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        a.imshow(decoded[i])
        a.add_patch(Rectangle((ox - 0.5, oy - 0.5), dali_pipes.CROP, dali_pipes.CROP, fill=False, ec="yellow", lw=1.5))
        label = int(labels[i, 0])
        name = f" {class_names[label].split(',')[0][:22]}" if label < len(class_names) else ""
        a.set_title(f"class {label}{name}: crop at x={ox} y={oy}", fontsize=7)
        b.imshow(np.clip(np.rint(patch), 0, 255).astype(np.uint8))
        light = ", ".join(f"{v:+.1f}" for v in offset[i].ravel())
        b.set_title(f"{'flipped, ' if flip else ''}lighting RGB ({light})", fontsize=7)
    fig.suptitle(
        f"training augmentation: lighting={s.lighting} (std {s.lighting_std}), normalize={s.normalize}"
        + ("" if s.crops else ", centre crops")
        + ("" if s.flips else ", no flips"),
        fontsize=8,
    )
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


AUGMENT, TRAIN = defaults("augment"), defaults("train")  # the config schema is the one home of defaults


def augment(
    manifest,
    pca_json,
    mean_image,
    out_dir,
    settings: AugmentSettings | None = None,
    batch_size=TRAIN["batch_size"],
    threads=DALI_THREADS,
    device="auto",
    grid_samples=AUGMENT["grid_samples"],
    bench_batches=AUGMENT["bench_batches"],
    seed=TRAIN["seed"],
) -> dict:
    """The stage: grid.png of augmented training samples and augment.json with throughput."""
    settings = settings or AugmentSettings()
    device = ("cuda:0" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    pca = load_pca(pca_json, mean_image)
    train = TrainLoader(manifest_shards(manifest, "train"), pca, batch_size, settings, device, seed, threads=threads)
    val = manifest_shards(manifest, "val")
    out_dir = Path(out_dir)
    names = [c.get("names", "") for c in read_manifest(manifest).get("classes", [])]
    save_grid(train, grid_samples, out_dir / "grid.png", names)
    if len(train) == 0:
        raise LoaderError(
            f"{manifest}: {train.total} training images make no batch of {batch_size}; lower train.batch_size"
        )
    sync = train.gpu
    train_first, train_rate = rate(cycle_epochs(train), bench_batches, sync=sync)
    result = {
        "device": str(train.device),
        "threads": threads,
        "batch_size": batch_size,
        "train_images": train.total,
        "train_batches_per_epoch": len(train),
        **dataclasses.asdict(settings),
        "train_images_per_s": train_rate,
        "train_first_batch_s": train_first,
    }
    for views in VIEWS:
        ev = EvalLoader(val, pca, batch_size, views, settings, device, threads=threads)
        first, r = rate(cycle_eval(ev), bench_batches, sync=sync)
        result.update({"val_images": len(ev), f"eval_{views}_images_per_s": r, f"eval_{views}_first_batch_s": first})
    write_json(out_dir / "augment.json", result)
    print(
        f"augment: train {train_rate:.0f} img/s, centre {result['eval_center_images_per_s']:.0f} img/s, "
        f"ten-crop {result['eval_ten_images_per_s']:.0f} img/s on {device} ({threads} threads, batch {batch_size}); "
        f"grid of {grid_samples} samples in {out_dir / 'grid.png'}",
        file=sys.stderr,
    )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, help="results/shards/manifest.json")
    p.add_argument("--pca", required=True, help="results/pca/pca.json")
    p.add_argument("--mean-image", required=True, help="results/pca/mean_image.npy")
    p.add_argument("--out-dir", required=True)
    d, t = AUGMENT, TRAIN
    p.add_argument("--lighting", default=d["lighting"], choices=LIGHTING)
    p.add_argument("--lighting-std", type=float, default=d["lighting_std"])
    p.add_argument("--normalize", default=d["normalize"], choices=NORMALIZE)
    p.add_argument("--crops", action=argparse.BooleanOptionalAction, default=d["crops"], help="random 224 patches")
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=d["flips"], help="random mirroring")
    p.add_argument("--batch-size", type=int, default=t["batch_size"])
    p.add_argument("--dali-threads", type=int, default=DALI_THREADS, help="DALI CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda:0 if available, else cpu) | cpu | cuda:N")
    p.add_argument("--grid-samples", type=int, default=d["grid_samples"])
    p.add_argument("--bench-batches", type=int, default=d["bench_batches"])
    p.add_argument("--seed", type=int, default=t["seed"])
    a = p.parse_args(argv)
    settings = AugmentSettings(a.lighting, a.lighting_std, a.normalize, a.crops, a.flips)
    return run_cli(
        augment,
        a.manifest,
        a.pca,
        a.mean_image,
        a.out_dir,
        settings,
        a.batch_size,
        a.dali_threads,
        a.device,
        a.grid_samples,
        a.bench_batches,
        a.seed,
    )


if __name__ == "__main__":
    sys.exit(main())
