"""The training curve: train loss and validation error against epoch, from metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.io import atomic_path, read_jsonl


def plot_curve(jsonl: Path, png: Path, num_classes: int | None = None) -> None:
    """Train loss and validation error against epoch, lr drops marked; with `num_classes`, the
    chance levels: ln(classes) for the loss, (1 - 1/classes) for the top-1 error."""
    rows = read_jsonl(jsonl)
    steps = [r for r in rows if "train_loss" in r]
    epochs = [r for r in rows if "val_top1_err" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if steps and epochs:  # steps -> fractional epochs, from each epoch's last step
        ends = [(0, 0)] + [(r["step"], r["epoch"]) for r in epochs]
        xs = np.interp([r["step"] for r in steps], [s for s, _ in ends], [e for _, e in ends])
        ax.plot(xs, [r["train_loss"] for r in steps], color="tab:blue", lw=0.8, label="train loss")
    if num_classes:
        ax.axhline(
            math.log(num_classes), color="tab:blue", ls="--", lw=0.7, alpha=0.6, label=f"chance loss, ln({num_classes})"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (cross-entropy)")
    ax2 = ax.twinx()
    if num_classes:
        ax2.axhline(
            100.0 * (1 - 1 / num_classes), color="tab:red", ls="--", lw=0.7, alpha=0.6, label="chance top-1 error"
        )
    ex = [r["epoch"] for r in epochs]
    held_out = bool(epochs) and epochs[-1].get("validated_on") == "holdout"
    name = "held-out" if held_out else "val"
    ax2.plot(ex, [r["val_top1_err"] for r in epochs], "o-", color="tab:red", label=f"{name} top-1 error")
    ax2.plot(ex, [r["val_top5_err"] for r in epochs], "s--", color="tab:orange", label=f"{name} top-5 error")
    ax2.set_ylabel(
        "held-out training slice error, centre crop (%)" if held_out else "validation error, centre crop (%)"
    )
    for prev, cur in zip(epochs, epochs[1:]):
        if cur.get("lr", 0) < prev.get("lr", 0):
            ax.axvline(prev["epoch"], color="gray", ls=":", lw=1)
            ax.text(prev["epoch"], ax.get_ylim()[1], f" lr {cur['lr']:g}", va="top", fontsize=8, color="gray")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize=8)
    ax.set_title("AlexNet training (lr drops dotted)")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
