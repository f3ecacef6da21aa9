"""Do DALI's thread counts change what the loaders produce? (They should not: rule train's
dali_threads is a runtime knob because of it.)

    python bench/dali_threads.py --results results [--device cuda:0] [--dali-threads 1 4]

Builds the training loader (the config's augmentation, batch 16, seed 5) and the ten-crop
loader once per thread count on the results' shards and PCA, and compares the first batches
of epochs 0 and 1 (training) and of the evaluation pass bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.loaders import AugmentSettings, EvalLoader, TrainLoader, manifest_shards  # noqa: E402
from pipeline.pca_files import load_pca  # noqa: E402


def batches(loader, epoch=None, n=3):
    out = []
    for i, batch in enumerate(loader.epoch(epoch) if epoch is not None else loader):
        if i == n:
            break
        out.append([t.clone() if isinstance(t, torch.Tensor) else t for t in batch])
    return out


def equal(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(p, q)) for p, q in zip(a, b)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results")
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dali-threads", type=int, nargs=2, default=[1, 4])
    a = p.parse_args()
    r = Path(a.results)
    pca = load_pca(r / "pca" / "pca.json", r / "pca" / "mean_image.npy")
    manifest = r / "shards" / "manifest.json"
    train, val = manifest_shards(manifest, "train"), manifest_shards(manifest, "val")
    got = {}
    for t in a.dali_threads:
        tl = TrainLoader(train, pca, 16, AugmentSettings(), device=a.device, seed=5, threads=t)
        ev = EvalLoader(val, pca, 8, views="ten", settings=AugmentSettings(), device=a.device, threads=t)
        got[t] = {"train": batches(tl, 0) + batches(tl, 1), "ten-crop": batches(ev)}
        ev.close()
    t1, t2 = a.dali_threads
    ok = True
    for kind in ("train", "ten-crop"):
        same = equal(got[t1][kind], got[t2][kind])
        ok &= same
        print(
            f"== {kind} on {a.device}: threads {t1} vs {t2}: {'identical' if same else 'DIFFERENT'} "
            f"({len(got[t1][kind])} batches)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
