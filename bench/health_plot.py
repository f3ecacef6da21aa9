"""Plot a training run's loss and per-layer health figures from its metrics.jsonl.

    python bench/health_plot.py WORK/train/metrics.jsonl --classes 100 --png bench/hard100_cpu.png \
        --title "width 1.0, the ImageNet preset's recipe, 100-class set, 2-core CPU"
"""

import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--title", default="")
    a = p.parse_args()
    rows = [json.loads(line) for line in open(a.jsonl)]
    train = [r for r in rows if "train_loss" in r and "health" in r]
    val = [r for r in rows if "val_top1_err" in r]
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(steps, [r["train_loss"] for r in train], label="train loss (window mean)")
    ax.axhline(math.log(a.classes), color="gray", ls=":", label=f"ln({a.classes})")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in val], [r["val_top1_err"] for r in val], "o-", color="tab:red", label="val top-1 err")
    ax2.set_ylabel("validation top-1 error (%)")
    ax = axes[0, 1]
    for layer in LAYERS:
        ax.plot(steps, [r["health"][layer]["dead"] for r in train], label=layer)
    ax.set_title("share of ReLU outputs that are zero")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for layer in (*LAYERS, "fc8"):
        ax.plot(steps, [r["health"][layer]["update_ratio"] for r in train], label=layer)
    ax.set_yscale("log")
    ax.set_title("|update| / |weight| per step")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    ax.plot(steps, [r["health"]["fc8"]["act_std"] for r in train], label="logits std")
    ax.plot(steps, [r["health"]["fc7"]["act_std"] for r in train], label="fc7 std")
    ax.set_title("activation std")
    ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xlabel("step")
    fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.png, dpi=90)


if __name__ == "__main__":
    main()
