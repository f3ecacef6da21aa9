"""Speed of ten-crop against centre-crop evaluation (pipeline/evaluate.py), per image.

On the same 256x256 shards and the same network, images/s of:
    center       EvalLoader(views="center"), one forward per image, softmax, top-k tallies
    ten          EvalLoader(views="ten"), the N*10 views in one forward, softmax averaged
                 over the views, top-k tallies for ten-crop and centre: what the stage does
    load_center  the centre loader alone (decode + crop + normalise, no network)
    load_ten     the ten-view loader alone
ratio = (seconds per image, ten) / (seconds per image, center), in wall time
and in the process's CPU time (steadier on a shared machine). Target: at most
10.5: the ten views share one decode, so only the network's work should grow
tenfold. Each rate is the best of --repeats passes over all images (the modes
interleaved), timed from the first batch on (pipeline build and first batch
excluded).

    python bench/eval_speed.py --images 96 --widths 0.25,1.0 --device cpu --batch 16 --dali-threads 2
    python bench/eval_speed.py --images 4096 --widths 1.0 --device cuda:0 --batch 128 --dali-threads 8

Needs torch, nvidia-dali, numpy and pillow. Writes synthetic shards (smooth
random scenes with grain, JPEG quality 90 like the resize stage) to a
temporary folder. Figures: bench/RESULTS-eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from synthetic import IMAGENET_PCA as PCA  # noqa: E402  (bench/ is on sys.path when run as a script)
from synthetic import make_shards

from model.alexnet import AlexNet  # noqa: E402
from pipeline.loaders import AugmentSettings, EvalLoader  # noqa: E402
from pipeline.metrics import EvalCounts, ten_crop_probs  # noqa: E402
from pipeline.pca_files import as_pca  # noqa: E402

CLASSES = 1000


def timed_pass(loader, step, device) -> tuple[float, float]:
    """(images/s, images per CPU-second of this process) over one pass, from the first batch's arrival on.

    CPU time counts every thread of the process (DALI's and torch's) and hardly
    depends on what else runs on the machine; wall time does.
    """
    n, t0, c0 = 0, None, None
    for images, labels, _keys in loader:
        if t0 is None:  # the first batch pays for the pipeline build
            step(images, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            continue
        step(images, labels)
        n += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def run(shards, width: float, device: torch.device, batch: int, threads: int, repeats: int) -> dict:
    pca = as_pca(PCA, np.full((256, 256, 3), 118.0, np.float32))
    settings = AugmentSettings()
    model = AlexNet(num_classes=CLASSES, width=width, devices=[device]).eval()
    counts = EvalCounts(CLASSES, device=device)

    def center(images, labels):
        with torch.inference_mode():
            probs = torch.softmax(model(images.to(device)).float(), dim=1)
            counts.update(probs, probs, labels)

    def ten(images, labels):
        with torch.inference_mode():
            probs_10crop, probs_center = ten_crop_probs(model, images.to(device))
            counts.update(probs_10crop, probs_center, labels)

    def nothing(images, labels):
        pass

    modes = (
        ("load_center", "center", nothing),
        ("load_ten", "ten", nothing),
        ("center", "center", center),
        ("ten", "ten", ten),
    )
    loaders = {
        views: EvalLoader(shards, pca, batch, views=views, settings=settings, device=str(device), threads=threads)
        for views in ("center", "ten")
    }
    out = {"width": width, **{name: 0.0 for name, _, _ in modes}, **{f"{name}_cpu": 0.0 for name, _, _ in modes}}
    for _ in range(repeats):  # interleaved, so a busy spell on a shared machine hits every mode alike
        for name, views, step in modes:
            wall, cpu = timed_pass(loaders[views], step, device)
            out[name], out[f"{name}_cpu"] = max(out[name], wall), max(out[f"{name}_cpu"], cpu)
    for name, _, _ in modes:
        print(
            f"width {width}: {name:12s} {out[name]:9.1f} images/s {out[name + '_cpu']:9.1f} images/CPU-s",
            file=sys.stderr,
        )
    out["ratio"] = out["center"] / out["ten"]
    out["ratio_cpu"] = out["center_cpu"] / out["ten_cpu"]
    return out


def markdown(rows: list[dict], args, device_name: str) -> str:
    lines = [
        f"Device: {device_name}; {args.images} images, batch {args.batch}, DALI threads {args.dali_threads}, "
        f"torch threads {torch.get_num_threads()}; best of {args.repeats}. "
        "Images/s (images per CPU-second in brackets).",
        "",
        "| width | load centre | load ten | centre | ten-crop | ten/centre per image, wall (CPU) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [f"{r[k]:.1f} ({r[k + '_cpu']:.1f})" for k in ("load_center", "load_ten", "center", "ten")]
        lines.append(f"| {r['width']:g} | " + " | ".join(cells) + f" | {r['ratio']:.2f}x ({r['ratio_cpu']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96, help="synthetic validation images")
    p.add_argument("--widths", default="0.25,1.0", help="AlexNet width multipliers, comma-separated")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (DALI decodes on the GPU then)")
    p.add_argument("--batch", type=int, default=16, help="images per batch (ten-crop: 10x the views)")
    p.add_argument("--dali-threads", type=int, default=2, help="DALI threads")
    p.add_argument("--repeats", type=int, default=2, help="passes per measurement; the best counts")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.images < 2 * args.batch:
        p.error(
            f"--images {args.images} with --batch {args.batch}: need at least two batches "
            "(the first one pays for the pipeline build and is not timed)"
        )
    device = torch.device(args.device)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards, _ = make_shards(tmp, args.images, "val", classes=CLASSES, discs=0)
        rows = [
            run(shards, float(w), device, args.batch, args.dali_threads, args.repeats) for w in args.widths.split(",")
        ]
    text = markdown(rows, args, device_name)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "args": vars(args), "rows": rows}, f, indent=2)
    worst = max(max(r["ratio"], r["ratio_cpu"]) for r in rows)
    print(
        f"ten-crop costs {worst:.2f}x centre-crop per image at worst (target <= 10.5x): "
        f"{'met' if worst <= 10.5 else 'NOT met'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
