"""How good is the preflight's forecast? Forecast a bigger preflight from a smaller one and compare.

    python bench/forecast_accuracy.py SMALL_RESULTS BIG_RESULTS --cores 2 [--wall-s SECONDS]

SMALL_RESULTS and BIG_RESULTS are the results folders of two preflights on
the same machine (bench/preflight_scale.sh runs 10 and 40 images per class).
The forecast from the small one is made for the big one's image counts, its
training cap and evaluation cap; beside it, what the big one measured: each
stage's job seconds from its Snakemake benchmark files (the resize shards as
the elapsed time from the first shard's start to the last one's end), and, with
--wall-s, the big invocation's wall time without the data generation
(which the forecast does not cover). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.forecast import forecast, measure, read_benchmark  # noqa: E402


def actual_seconds(m: dict) -> dict[str, float]:
    """What the big preflight spent per stage, in the forecast's stage names; the resize shards of
    both splits as one elapsed time (from the first shard's start to the last one's end)."""
    out = {"fetch": m["fetch"]["job"]["wall_s"]}
    for split in ("train", "val"):
        out[f"index {split}"] = m["index"][split]["job"]["wall_s"]
    out["resize shards"] = m["resize_elapsed_s"]
    for key, name in (
        ("resize_manifest", "resize manifest"),
        ("pca", "pca"),
        ("augment", "augment"),
        ("train", "train"),
        ("evaluate", "evaluate"),
    ):
        out[name] = m[key]["job"]["wall_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("small")
    p.add_argument("big")
    p.add_argument("--cores", type=int, required=True)
    p.add_argument("--wall-s", type=float, help="the big invocation's wall time (snakemake, end to end)")
    a = p.parse_args(argv)
    small, big = measure(a.small), measure(a.big)
    train_json = json.loads((Path(a.big) / "train" / "train.json").read_text())
    eval_json = json.loads((Path(a.big) / "evaluate" / "metrics.json").read_text())
    fc = forecast(
        small,
        big["train_images"],
        big["val_images"],
        epochs=train_json["epochs"],
        cores=a.cores,
        archive_bytes=big["fetch"]["archive_bytes"],
        steps_per_epoch=train_json["steps_per_epoch_cap"],
        eval_images=eval_json["val_images"],
    )
    actual = actual_seconds(big)
    stages = dict(fc["stages"])
    train_shards, val_shards = stages.pop("resize train"), stages.pop("resize val")
    stages = {"resize shards": {"seconds": train_shards["seconds"] + val_shards["seconds"]}, **stages}
    print(
        f"Forecast from {small['train_images']} + {small['val_images']} images for "
        f"{big['train_images']} + {big['val_images']} images, {a.cores} cores\n"
    )
    print("| stage | forecast (s) | measured (s) | off by |")
    print("| --- | ---: | ---: | ---: |")
    total_f = total_a = 0.0
    for name, stage in stages.items():
        f = stage["seconds"]
        total_f, total_a = total_f + f, total_a + actual[name]
        print(f"| {name} | {f:.1f} | {actual[name]:.1f} | {100 * (f - actual[name]) / actual[name]:+.0f}% |")
    print(f"| **sum of stages** | {total_f:.1f} | {total_a:.1f} | {100 * (total_f - total_a) / total_a:+.0f}% |")
    if a.wall_s:
        demo = read_benchmark(Path(a.big) / "benchmarks" / "demo.tsv")["wall_s"]
        wall = a.wall_s - demo
        print(
            f"| **invocation wall, without the data generation** | {total_f:.1f} | {wall:.1f} "
            f"| {100 * (total_f - wall) / wall:+.0f}% |"
        )
    small_actual = actual_seconds(small)
    ratio = big["train_images"] / small["train_images"]
    print(
        f"\nCost growth: each stage's measured seconds at both sizes ({ratio:.0f}x the images; training and "
        "evaluation are capped at the same steps and images in both)\n"
    )
    print("| stage | small (s) | big (s) | big / small |")
    print("| --- | ---: | ---: | ---: |")
    for name in actual:
        print(
            f"| {name} | {small_actual[name]:.1f} | {actual[name]:.1f} | {actual[name] / max(small_actual[name], 1e-9):.2f} |"
        )
    self_fc = forecast(big, big["train_images"], big["val_images"], 1, a.cores)
    for split in ("train", "val"):
        s, b = fc["stages"][f"resize {split}"], self_fc
        bs = b["stages"][f"resize {split}"]
        print(
            f"\nresize {split}: {s['startup_s_per_job']:.2f} s per job (small) vs {bs['startup_s_per_job']:.2f} (big); "
            f"{s['seconds_per_image'] * 1000:.2f} ms per image (small) vs {bs['seconds_per_image'] * 1000:.2f} (big); "
            f"scheduling {s['scheduling_s_per_job']:.2f} s per job (small) vs {bs['scheduling_s_per_job']:.2f} (big)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
