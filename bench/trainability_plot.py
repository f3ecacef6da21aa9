"""Training runs side by side: the loss against ln(classes) and fc7's dead share, per step, and a
table of the trainability verdict per run (pipeline/training/verdict.py, as the preflight's forecast
reports it).

    python bench/trainability_plot.py bench/trainability_cpu --png bench/trainability_cpu/curves.png

Each subfolder of the given folder holding a metrics.jsonl is one run, named by the folder.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.io import read_jsonl  # noqa: E402
from pipeline.training.verdict import run_verdict  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--png", required=True)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    runs = {
        d.name: read_jsonl(d / "metrics.jsonl")
        for d in sorted(Path(a.folder).iterdir())
        if (d / "metrics.jsonl").exists()
    }
    fig = Figure(figsize=(11, 4.2))
    loss_ax, dead_ax = fig.subplots(1, 2)
    print(
        "| run | steps | left chance (-0.1) | clearly (-0.5) | first -> last window loss | best held-out top-5 err | fc7 dead, last |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name, rows in runs.items():
        windows = [r for r in rows if "train_loss" in r]
        if not windows:
            continue
        steps = [w["step"] for w in windows]
        loss_ax.plot(steps, [w["train_loss"] for w in windows], lw=1, label=name)
        dead = [(w["step"], w["health"]["fc7"]["dead"]) for w in windows if "fc7" in w.get("health", {})]
        dead_ax.plot([s for s, _ in dead], [d for _, d in dead], lw=1, label=name)
        v = run_verdict(name, rows, a.classes, a.batch_size)
        top5 = f"{v['best_val_top5_err']:.1f}%" if v["best_val_top5_err"] is not None else "-"
        last_dead = f"{dead[-1][1]:.0%}" if dead else "-"
        print(
            f"| {name} | {v['steps']} | {v['left_chance_step'] or 'no'} | {v['clearly_left_step'] or 'no'} | "
            f"{v['first_loss']:.3f} -> {v['final_loss']:.3f} | {top5} | {last_dead} |"
        )
    loss_ax.axhline(math.log(a.classes), color="k", ls="--", lw=0.7, label=f"ln({a.classes})")
    loss_ax.set(xlabel="SGD step", ylabel="train loss (window mean)", title=f"{a.classes} classes")
    dead_ax.set(xlabel="SGD step", ylabel="fc7 dead share (ReLU output 0)", ylim=(0, 1), title="fc7")
    loss_ax.legend(fontsize=7)
    dead_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
