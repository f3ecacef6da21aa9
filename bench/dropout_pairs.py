"""The paper's dropout against torch's inverted dropout, paired: same seed, init, data and steps.

    python bench/dropout_pairs.py --results /tmp/hard100/results --seeds 0 1 2 --steps 40 \\
        --out bench/dropout_pairs/hard100
    python bench/dropout_pairs.py --results <preflight results> --seeds 0 1 2 --steps 24 --out ...

Each run is the train stage's own CLI with the ImageNet preset's recipe
(workflow/presets/imagenet.yaml: width 1.0, the paper's init, weight decay on
weights, lr 0.01, batch 128, no warm-up), one epoch of `--steps` steps with a
metrics line and the per-layer health figures at every step; only
`--dropout-style` differs within a pair. A run that diverges (non-finite loss:
the stage stops) is recorded as such. Writes OUT/pairs.json (per run: the
step losses, logits' std, fc7's dead share, fc8's update/weight, warnings),
OUT/pairs.png and prints a markdown table. About 6 s per step at full width
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.schema import defaults

REPO = Path(__file__).resolve().parents[1]
STYLES = ("paper", "inverted")
PRESET_KEYS = ("width", "init", "decay", "warmup_steps", "lr")


def train_once(res: Path, run: Path, seed: int, style: str, steps: int, threads: int) -> int:
    # the preset holds only its deviations; the schema holds the rest
    preset = {**defaults("train"), **yaml.safe_load((REPO / "workflow/presets/imagenet.yaml").read_text())["train"]}
    flags = [f"--{k.replace('_', '-')}={preset[k]}" for k in PRESET_KEYS]
    cmd = [sys.executable, "-m", "pipeline.train", "--manifest", res / "shards/manifest.json"]
    cmd += ["--pca", res / "pca/pca.json", "--mean-image", res / "pca/mean_image.npy"]
    cmd += ["--classes", res / "fetch/classes.tsv", "--out-dir", run, "--fresh", "--devices", "cpu"]
    cmd += [*flags, "--dropout-style", style, "--seed", seed, "--batch-size", 128, "--momentum", 0.9]
    cmd += ["--weight-decay", 0.0005, "--epochs", 1, "--steps-per-epoch", steps, "--log-every", 1]
    cmd += ["--torch-threads", threads, "--dali-threads", 2, "--flat-after", 10**6]
    done = subprocess.run(list(map(str, cmd)), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    (run / "stderr.log").write_text(done.stderr)
    return done.returncode


def summarise(run: Path, seed: int, style: str, code: int, classes: int) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "train_loss" in r]
    finite = [r["train_loss"] for r in steps if math.isfinite(r["train_loss"])]
    health = lambda layer, key: [r["health"][layer][key] for r in steps if "health" in r]  # noqa: E731
    return {
        "seed": seed,
        "dropout_style": style,
        "exit_code": code,
        "diverged": code != 0 or len(finite) < len(steps),
        "steps": len(steps),
        "loss": [r["train_loss"] for r in steps],
        "logits_std": health("fc8", "act_std"),
        "fc7_dead": health("fc7", "dead"),
        "fc8_update_ratio": health("fc8", "update_ratio"),
        "max_loss": max(finite) if finite else None,
        "last_loss": finite[-1] if finite else None,
        "ln_classes": math.log(classes),
        "warnings": [r["warning"] for r in lines if "warning" in r],
    }


def plot(rows: list[dict], png: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    panels = (("loss", "train loss (window = 1 step)"), ("logits_std", "logits std"), ("fc7_dead", "fc7 dead share"))
    colours = {"paper": "tab:blue", "inverted": "tab:red"}
    for ax, (key, label) in zip(axes, panels):
        for r in rows:
            ys = r[key]
            ax.plot(
                range(1, len(ys) + 1),
                ys,
                color=colours[r["dropout_style"]],
                lw=1,
                alpha=0.8,
                ls=("-", "--", ":")[r["seed"] % 3],
                label=f"{r['dropout_style']}, seed {r['seed']}",
            )
        if key == "loss":
            ax.axhline(rows[0]["ln_classes"], color="gray", ls=":", lw=0.8)
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="a finished run's results/ (shards, PCA, classes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    res, out = Path(args.results).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = len((res / "fetch/classes.tsv").read_text().splitlines()) - 1
    rows = []
    for seed in args.seeds:
        for style in STYLES:
            run = out / "runs" / f"seed-{seed}-{style}"
            run.mkdir(parents=True, exist_ok=True)
            code = train_once(res, run, seed, style, args.steps, args.torch_threads)
            rows.append(summarise(run, seed, style, code, classes))
            shutil.rmtree(run / "checkpoints", ignore_errors=True)  # 438 MB a run at full width; the figures stay
            r = rows[-1]
            print(
                f"seed {seed} {style}: max loss {r['max_loss']}, last {r['last_loss']}, "
                f"diverged {r['diverged']}, warnings {r['warnings']}",
                flush=True,
            )
    (out / "pairs.json").write_text(json.dumps({"classes": classes, "steps": args.steps, "runs": rows}) + "\n")
    plot(rows, out / "pairs.png", f"{classes} classes, width 1.0, lr 0.01, batch 128: paper vs inverted dropout")
    print(
        "| seed | dropout | steps | first loss | max loss | last loss | max logits std | max fc7 dead | "
        "diverged | warnings |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seed']} | {r['dropout_style']} | {r['steps']} | {r['loss'][0]:.3f} | {r['max_loss']:.3f} | "
            f"{r['last_loss']:.3f} | {max(r['logits_std']):.2f} | {max(r['fc7_dead']):.2f} | "
            f"{'yes' if r['diverged'] else 'no'} | {', '.join(r['warnings']) or 'none'} |"
        )


if __name__ == "__main__":
    main()
