"""The demo's training over several seeds: best ten-crop top-1 error, collapse, warnings.

    make demo                                   # shards, PCA (results/)
    python bench/demo_seeds.py --seeds 0 1 2 3 4 --out bench/demo_seeds
    python bench/demo_seeds.py --seeds 0 1 --out /tmp/x -- --warmup-steps 0   # extra train flags after --
    python bench/demo_seeds.py --seeds 0 1 2 --torch-threads 1 --out bench/demo_seeds/t1   # other summation orders

Trains with the train stage's CLI and the demo's settings from config.yaml
(plus any flags after --), evaluates every run's best.pt with the evaluate
stage's CLI (ten-crop and centre), and prints a markdown table; the rows go to
OUT/seeds.json. About 4 minutes per seed on 2 CPU cores (40 epochs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_KEYS = (
    "width",
    "init",
    "dropout_style",
    "decay",
    "warmup_steps",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_factor",
    "patience",
    "epochs",
    "log_every",
)


def max_setback(errors: list[float], chance: float) -> float:
    """Largest rise of the validation error above its best so far, once that best has left chance
    (10 points below it): how much of what it had learned a run lost at worst, in points."""
    best, worst = float("inf"), 0.0
    for err in errors:
        if best <= chance - 10:
            worst = max(worst, err - best)
        best = min(best, err)
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--results", default="results")
    p.add_argument("--config", default=str(REPO / "config.yaml"))
    p.add_argument("--out", required=True)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=2,
        help="torch CPU threads of each training: 1 and 2 sum in different orders, as other machines do",
    )
    p.add_argument("extra", nargs="*", help="more train flags (after --)")
    args = p.parse_args()
    train_cfg = yaml.safe_load(Path(args.config).read_text())["train"]
    res, out = Path(args.results), Path(args.out)
    inputs = [
        "--manifest",
        res / "shards/manifest.json",
        "--pca",
        res / "pca/pca.json",
        "--mean-image",
        res / "pca/mean_image.npy",
        "--classes",
        res / "fetch/classes.tsv",
    ]
    rows = []
    for seed in args.seeds:
        run = out / f"seed-{seed}"
        flags = [f"--{k.replace('_', '-')}={train_cfg[k]}" for k in TRAIN_KEYS if k in train_cfg]
        cmd = [
            sys.executable,
            "-m",
            "pipeline.train",
            *map(str, inputs),
            "--out-dir",
            str(run),
            "--fresh",
            "--devices",
            "cpu",
            "--seed",
            str(seed),
            "--torch-threads",
            str(args.torch_threads),
            *flags,
            *args.extra,
        ]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        ev = run / "evaluate"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.evaluate",
                "--checkpoint",
                str(run / "checkpoints/best.pt"),
                "--shards-manifest",
                str(inputs[1]),
                *map(str, inputs[2:]),
                "--dataset-name",
                "demo",
                "--devices",
                "cpu",
                "--out-dir",
                str(ev),
            ],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary = json.loads((run / "train.json").read_text())
        metrics = json.loads((ev / "metrics.json").read_text())
        losses = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [r["val_top1_err"] for r in losses if "val_top1_err" in r]
        rows.append(
            {
                "seed": seed,
                "torch_threads": args.torch_threads,
                "best_epoch": summary["best_epoch"],
                "best_center_top1_err": summary["best_val_top1_err"],
                "ten_crop_top1_err": metrics["val_top1_err_10crop"],
                "final_center_top1_err": summary["final_val_top1_err"],
                "collapsed_epoch": summary["collapsed_epoch"],
                "warnings": [w["kind"] for w in summary["warnings"]],
                "max_window_loss": max(r["train_loss"] for r in losses if "train_loss" in r),
                "max_setback": max_setback(epochs, summary["chance_top1_err"]),
                "train_time_s": summary["train_time_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "seeds.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| seed | torch threads | best epoch | best centre top-1 err | ten-crop top-1 err (best.pt) | final centre | "
        "collapse | warnings | max window loss | largest setback |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seed']} | {r['torch_threads']} | {r['best_epoch']} | {r['best_center_top1_err']:.1f}% | {r['ten_crop_top1_err']:.1f}% "
            f"| {r['final_center_top1_err']:.1f}% | {r['collapsed_epoch'] or 'no'} | "
            f"{', '.join(r['warnings']) or 'none'} | {r['max_window_loss']:.2f} | {r['max_setback']:.1f} |"
        )


if __name__ == "__main__":
    main()
