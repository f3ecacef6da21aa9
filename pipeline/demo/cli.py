"""The command line, as the workflow's demo rule calls it: python -m pipeline.demo --out-dir DIR [settings]."""

from __future__ import annotations

import argparse
import sys

from pipeline.demo.make import DEMO, make_demo
from pipeline.errors import run_cli


def _summary() -> str:
    """The first line of the package's docstring, its one-line account of the dataset."""
    return sys.modules[__package__].__doc__.split("\n")[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=_summary())
    p.add_argument("--out-dir", required=True, help="folder for the archives (config demo.out_dir)")
    p.add_argument("--seed", type=int, default=DEMO["seed"])
    p.add_argument("--classes", type=int, default=DEMO["classes"])
    p.add_argument("--train-per-class", type=int, default=DEMO["train_per_class"])
    p.add_argument("--val-per-class", type=int, default=DEMO["val_per_class"])
    p.add_argument(
        "--large-fraction",
        type=float,
        default=DEMO["large_fraction"],
        help="share of images over 1000 px on the long side",
    )
    p.add_argument(
        "--sizes",
        default=DEMO["sizes"],
        help="demo: the demo's sizes and quirks | imagenet: ImageNet's size mix, quirks at their rarity",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that draw the images (a runtime knob: the bytes do not depend on it)",
    )
    a = p.parse_args(argv)
    return run_cli(_make_and_report, a)


def _make_and_report(a: argparse.Namespace) -> None:
    m = make_demo(
        a.out_dir, a.seed, a.classes, a.train_per_class, a.val_per_class, a.large_fraction, a.sizes, a.workers
    )
    print(
        f"demo: {m['classes']} classes, {m['train_images']} train + {m['val_images']} val images "
        f"({m['large_images']} large, mean {m['mean_width']:.0f} x {m['mean_height']:.0f} px) in {a.out_dir}, "
        f"{m['seconds']:.1f} s on {m['workers']} worker(s)"
    )
