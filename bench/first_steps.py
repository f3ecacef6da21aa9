"""The first SGD steps of a recipe, instrumented: per-layer health at every step.

    python bench/first_steps.py --steps 30 --init paper --dropout-style inverted --out bench/first_steps/inverted.json
    python bench/first_steps.py --plot bench/first_steps/*.json --png bench/first_steps.png

Runs the train stage's own pieces (its loaders, model, optimizer, warm-up and
health monitor, pipeline/health.py) on the shards of a finished run
(default: results/, e.g. after `make demo`), with the monitor armed on every
step, and writes one JSON with the step losses and per-layer figures:
activation mean/std after ReLU, dead-ReLU share, gradient norm,
update-to-weight ratio, and the logits' mean/std. Findings:
bench/RESULTS-train.md, "Why the first steps explode".
About 16 s per step at width 1.0, batch 128, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import build_model  # noqa: E402
from pipeline.devices import Dist, seed_everything  # noqa: E402
from pipeline.health import LAYERS, HealthMonitor  # noqa: E402
from pipeline.io import read_classes  # noqa: E402
from pipeline.train import TrainConfig, make_loaders, make_optimizer, warmup_factor  # noqa: E402
from pipeline.training.recipe import set_lr  # noqa: E402


def run(args) -> dict:
    res = Path(args.results)
    cfg = TrainConfig(
        width=args.width,
        init=args.init,
        dropout_style=args.dropout_style,
        decay=args.decay,
        warmup_steps=args.warmup_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        dali_threads=2,
        devices="cpu",
    )
    num_classes = len(read_classes(res / "fetch/classes.tsv"))
    seed_everything(cfg.seed)
    model = build_model(cfg.model_config(num_classes), ["cpu"])
    model.train()
    train_loader, _ = make_loaders(
        cfg, res / "shards/manifest.json", res / "pca/pca.json", res / "pca/mean_image.npy", Dist(), "cpu"
    )
    opt = make_optimizer(model, cfg)
    monitor = HealthMonitor(model)
    rows, step, epoch, t0 = [], 0, 0, time.perf_counter()
    while step < args.steps:
        epoch += 1
        for images, labels in train_loader.epoch(epoch):
            if step == args.steps:
                break
            labels = labels.view(-1).long()
            monitor.arm()
            loss = F.cross_entropy(model(images).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            warm = warmup_factor(step, cfg.warmup_steps)
            set_lr(opt, cfg.lr * warm)  # the biases at their share of it (train.bias_lr_factor)
            opt.step()
            step += 1
            rows.append({"step": step, "loss": loss.item(), "lr": cfg.lr * warm, "health": monitor.collect(opt)})
            h = rows[-1]["health"]
            print(
                f"step {step:3d} loss {loss.item():8.3f}  logits std {h['fc8']['act_std']:7.2f}  "
                f"fc8 upd/w {h['fc8']['update_ratio']:.3g}  fc7 dead {h['fc7']['dead']:.2f}  "
                f"conv5 dead {h['conv5']['dead']:.2f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("plot", "png", "out")},
        "num_classes": num_classes,
        "rows": rows,
    }


def plot(paths: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(p).stem, json.loads(Path(p).read_text())) for p in paths]
    panels = [
        ("loss", None, "loss"),
        ("logits std", "fc8", "act_std"),
        ("fc7 dead share", "fc7", "dead"),
        ("conv5 dead share", "conv5", "dead"),
        ("fc8 update/weight", "fc8", "update_ratio"),
        ("fc7 update/weight", "fc7", "update_ratio"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, layer, key) in zip(axes.flat, panels):
        for name, r in runs:
            xs = [row["step"] for row in r["rows"]]
            ys = [row["loss"] if layer is None else row["health"][layer][key] for row in r["rows"]]
            ax.plot(xs, ys, label=name, lw=1.2)
        if layer is None:
            ax.axhline(
                torch.log(torch.tensor(float(runs[0][1]["num_classes"]))).item(),
                color="gray",
                ls=":",
                label="ln(classes)",
            )
        if key == "update_ratio":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("First SGD steps at width 1.0, batch 128 (bench/first_steps.py)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def table(path: str, steps=(1, 2, 3, 5, 10)) -> str:
    """Markdown: per-layer figures at a few steps of one run."""
    r = json.loads(Path(path).read_text())
    lines = ["| step | loss | " + " | ".join(LAYERS) + " |", "|" + " --- |" * (len(LAYERS) + 2)]
    for row in r["rows"]:
        if row["step"] not in steps:
            continue
        h = row["health"]
        cells = [f"{h[l]['act_std']:.3g} / {h[l].get('dead', 0):.2f} / {h[l]['update_ratio']:.2g}" for l in LAYERS]
        lines.append(f"| {row['step']} | {row['loss']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--init", default="paper")
    p.add_argument("--dropout-style", default="paper")
    p.add_argument("--decay", default="weights")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--plot", nargs="*")
    p.add_argument("--png")
    p.add_argument("--table")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.plot:
        plot(args.plot, args.png)
        return
    torch.set_num_threads(2)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
