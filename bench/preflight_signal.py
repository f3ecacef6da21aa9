"""Is there a class signal in the preflight's 1000-class data? A linear probe on tiny thumbnails.

    python bench/preflight_signal.py --manifest RESULTS/shards/manifest.json [--side 16] [--epochs 30]

Separates two questions the full network's flat start at ln(1000) mixes up:
whether the generated images carry a learnable per-class signal, and how
long the paper's recipe needs to leave chance. Each resized image (shards of
the resize stage) is decoded at 1/8 scale (JPEG draft mode), shrunk to
side x side RGB, standardised per pixel, and a softmax regression is trained
on the training shards with Adam, full-batch epochs of minibatches. Prints
the training loss per epoch against ln(classes) and the validation top-1 and
top-5 error against chance, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.shards import manifest_entries, read_shard  # noqa: E402


def thumbnails(manifest: Path, split: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for entry in manifest_entries(manifest, split):
        for _, jpeg, label in read_shard(entry["tar"]):
            img = Image.open(io.BytesIO(jpeg))
            img.draft("RGB", (side * 2, side * 2))  # decode at a fraction of the size: the probe needs little
            xs.append(np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR), np.float32).ravel())
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def errors(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    return (
        100.0 * (1 - (top5[:, 0] == y).float().mean().item()),
        100.0 * (1 - (top5 == y[:, None]).any(1).float().mean().item()),
    )


def probe(train: tuple, val: tuple, classes: int, epochs: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    mean, std = train[0].mean(0), train[0].std(0) + 1e-3
    xt, yt = torch.from_numpy((train[0] - mean) / std), torch.from_numpy(train[1]).long()
    xv, yv = torch.from_numpy((val[0] - mean) / std), torch.from_numpy(val[1]).long()
    model = torch.nn.Linear(xt.shape[1], classes)
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)  # starts exactly at ln(classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for epoch in range(1, epochs + 1):
        order, losses = torch.randperm(len(xt)), []
        for i in range(0, len(xt), batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        top1, top5 = errors(model, xv, yv)
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_top1_err": top1, "val_top5_err": top5})
        print(
            f"epoch {epoch:3d}: train loss {curve[-1]['train_loss']:.3f} (ln {classes} = {math.log(classes):.3f}), "
            f"val top-1 {top1:.1f}% top-5 {top5:.1f}%",
            flush=True,
        )
    return {
        "curve": curve,
        "chance_loss": math.log(classes),
        "chance_top1_err": 100.0 * (1 - 1 / classes),
        "chance_top5_err": 100.0 * (1 - 5 / classes),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--side", type=int, default=16, help="thumbnail side in pixels")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    train, val = thumbnails(a.manifest, "train", a.side), thumbnails(a.manifest, "val", a.side)
    classes = int(max(train[1].max(), val[1].max())) + 1
    print(
        f"{len(train[1])} training and {len(val[1])} validation images, {classes} classes, "
        f"{a.side}x{a.side} thumbnails, decoded in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    result = probe(train, val, classes, a.epochs, a.batch, a.lr, a.seed)
    result.update(train_images=len(train[1]), val_images=len(val[1]), classes=classes, side=a.side)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
