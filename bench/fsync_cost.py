"""What the power-loss-safe writes (pipeline/io.py: fsync of the file before its rename, of the
folder after) cost the resize stage.

    python bench/fsync_cost.py            # after the demo's index: snakemake --cores all index

Runs `resize_shard` on the demo's train shards (the index and the archive are copied to a
scratch folder first, beside the results so both sit on the same file system), alternating
rounds with pipeline.io's fsync in place and replaced by a no-op, and reports the best wall
time per shard of each, the number of fsync calls per shard and the seconds they took.
A shard writes four files (.tar, .idx, .stats.npz, .json): eight fsyncs, four files and
four folder entries, whatever its image count, so the cost per image shrinks as shards grow
(ImageNet: about 1,250 images a shard against the demo's 250). Figures: bench/RESULTS-io.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pipeline import io, resize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed_fsync(calls: list[float]):
    real = io.fsync_path

    def fsync_path(path):
        t = time.perf_counter()
        real(path)
        calls.append(time.perf_counter() - t)

    return fsync_path


def run_shards(index: Path, source: Path, out: Path, shards: int) -> list[float]:
    seconds = []
    for k in range(shards):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        resize.resize_shard(index, source, out / f"train-{k:05d}.tar", k, shards, stats=True)
        seconds.append(time.perf_counter() - t)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default=REPO / "results" / "index" / "train.tsv", type=Path)
    p.add_argument("--source", default=REPO / "results" / "fetch" / "ILSVRC2012_img_train.tar", type=Path)
    p.add_argument("--shards", type=int, default=4, help="the demo's train shards (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each kind, alternating (default: %(default)s)")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    scratch = Path(tempfile.mkdtemp(prefix="fsync-bench-", dir=REPO / "results"))
    try:
        index, source = scratch / "train.tsv", scratch / "train.tar"
        shutil.copy(args.index, index)
        shutil.copy(os.path.realpath(args.source), source)
        real = io.fsync_path
        best = {"fsync": [float("inf")] * args.shards, "no fsync": [float("inf")] * args.shards}
        calls: list[float] = []
        for _ in range(args.rounds):
            for kind in best:
                calls_before = len(calls)
                io.fsync_path = timed_fsync(calls) if kind == "fsync" else (lambda path: None)
                seconds = run_shards(index, source, scratch / "out", args.shards)
                best[kind] = [min(a, b) for a, b in zip(best[kind], seconds)]
                if kind == "fsync":
                    per_shard_calls = (len(calls) - calls_before) / args.shards
        io.fsync_path = real
        images = sum(1 for _ in open(index)) - 1
        per_shard = images / args.shards
        on, off = sum(best["fsync"]) / args.shards, sum(best["no fsync"]) / args.shards
        print(f"{args.shards} shards of {per_shard:.0f} images, best of {args.rounds} rounds each\n")
        print("| writes | s per shard | ms per image |\n| --- | ---: | ---: |")
        for kind, s in (("fsync (file, then folder)", on), ("no fsync", off)):
            print(f"| {kind} | {s:.3f} | {1000 * s / per_shard:.2f} |")
        print(f"\ndifference: {1000 * (on - off):+.0f} ms per shard ({100 * (on - off) / off:+.1f}%)")
        print(
            f"fsync calls: {per_shard_calls:.0f} per shard, {1000 * sum(calls) / len(calls):.1f} ms each on "
            f"average ({1000 * sum(calls) / (args.rounds * args.shards):.0f} ms per shard), longest "
            f"{1000 * max(calls):.1f} ms"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
