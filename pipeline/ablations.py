"""The ablation sweep's comparison: each variant of the paper's recipe against the base run, beside
the difference the paper claims for it (Krizhevsky, Sutskever & Hinton, NIPS 2012, sections 3-4, 7).

    python -m pipeline.ablations --results results --variants '{"no_lrn": {"train": {"lrn": false}}}' \\
        --seeds 0 1 --base-seed 0 --threshold 25 --out-dir results/ablations

Reads each run's evaluation (metrics.json), training log (metrics.jsonl) and job benchmarks, and
writes comparison.json, comparison.md, comparison.png and metrics.json (for the MLflow parent run).

A difference is reported as a finding only where the run could resolve the claim: where the
claimed difference is larger than twice the standard error of the measured one (two error rates
on the same n validation images, and the seeds' spread when there are several seeds). Elsewhere
the table says the run cannot show the claim, rather than printing noise as a finding.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from pipeline.benchmarks import BenchmarkError, read_benchmark
from pipeline.errors import PipelineError, run_cli
from pipeline.io import atomic_path, read_json, read_jsonl, write_json, write_text
from pipeline.layout import Results, variant_run

# (section, key, value) -> the paper's claim. top1/top5: how many points of error the variant adds
# (the paper's setting is better by that much); speed: the variant's epochs to the training-error
# threshold over the base run's; overfit: the claim is about the train-validation gap, with no figure.
CLAIMS = [
    ("train", "activation", "tanh", {"section": "3.1, Fig. 1", "speed": 6.0,
     "text": "ReLU reaches 25% training error six times faster than tanh (4-layer net, CIFAR-10)"}),
    ("train", "columns", 1, {"section": "3.2", "top1": 1.7, "top5": 1.2,
     "text": "two columns: top-1 and top-5 error 1.7% and 1.2% lower than one GPU with half the kernels"}),
    ("train", "lrn", False, {"section": "3.3", "top1": 1.4, "top5": 1.2,
     "text": "response normalization lowers top-1 and top-5 error by 1.4% and 1.2%"}),
    ("train", "overlapping_pool", False, {"section": "3.4", "top1": 0.4, "top5": 0.3,
     "text": "overlapping pooling lowers top-1 and top-5 error by 0.4% and 0.3%"}),
    ("augment", "lighting", "none", {"section": "4.1", "top1": 1.0,
     "text": "PCA lighting lowers top-1 error by over 1%"}),
    ("augment", "crops", False, {"section": "4.1", "overfit": True,
     "text": "without random crops and reflections, substantial overfitting"}),
    ("augment", "flips", False, {"section": "4.1", "overfit": True,
     "text": "without random crops and reflections, substantial overfitting"}),
    ("train", "dropout", 0.0, {"section": "4.2", "overfit": True, "speed": 0.5,
     "text": "without dropout, substantial overfitting; dropout roughly doubles the iterations to converge"}),
    ("train", "drop_conv", 3, {"section": "7", "top1": 2.0,
     "text": "removing any middle convolutional layer costs about 2% top-1"}),
    ("train", "drop_conv", 4, {"section": "7", "top1": 2.0,
     "text": "removing any middle convolutional layer costs about 2% top-1"}),
]  # fmt: skip
IMAGENET_CLASSES = 1000
ERRORS = ("top1_10crop", "top5_10crop", "top1_center", "top5_center")


class AblationsError(PipelineError, ValueError):
    """A run of the sweep is missing or unreadable."""


def claim_of(overrides: dict) -> dict | None:
    """The paper's claim for a variant: the first of its keys that CLAIMS knows."""
    for section, key, value, claim in CLAIMS:
        if key in overrides.get(section, {}) and overrides[section][key] == value:
            return claim
    return None


def epochs_to(rows: list[dict], threshold: float) -> float | None:
    """Epochs (fractional: steps over one epoch's steps) until a logged window's training top-1
    error first reached `threshold` percent; None if it never did."""
    windows = [r for r in rows if "train_top1_err" in r]
    first_epoch = [r["step"] for r in windows if r["epoch"] == 1]
    if not first_epoch:
        return None
    per_epoch = max(first_epoch)
    hit = next((r for r in windows if r["train_top1_err"] <= threshold), None)
    return None if hit is None else hit["step"] / per_epoch


def overfit_gap(rows: list[dict]) -> float | None:
    """The last epoch's centre-crop validation top-1 error minus its training top-1 error (points)."""
    epochs = [r for r in rows if "val_top1_err" in r]
    if not epochs:
        return None
    last = epochs[-1]["epoch"]
    train = [r["train_top1_err"] for r in rows if "train_top1_err" in r and r["epoch"] == last]
    return epochs[-1]["val_top1_err"] - statistics.fmean(train) if train else None


def read_run(results: Results, run: str | None, threshold: float) -> dict:
    """One run's errors, training speed, overfitting gap and cost; run None: the base run."""
    train, evaluate = results.train(run), results.evaluate(run)
    if not Path(evaluate.metrics).is_file():
        raise AblationsError(f"{evaluate.metrics} does not exist; run the sweep's evaluate jobs first")
    m = read_json(evaluate.metrics)
    rows = read_jsonl(train.metrics) if Path(train.metrics).is_file() else []
    cost = {}
    for stage, rule in (("train", "train"), ("evaluate", "evaluate")):
        bench = results.benchmark(rule) if run is None else results.benchmark(f"{rule}_variant", run)
        try:
            cost[stage] = read_benchmark(bench, "rerun the sweep")
        except BenchmarkError:
            cost[stage] = None  # a run made before benchmarks were kept: its cost is unknown
    return {
        **{e: m[f"val_{e.split('_')[0]}_err_{e.split('_')[1]}"] for e in ERRORS},
        "val_images": m["val_images"],
        "classes": m.get("classes"),
        "dataset_label": m.get("dataset_label"),
        "epochs_to_threshold": epochs_to(rows, threshold),
        "epochs": max((r["epoch"] for r in rows if "val_top1_err" in r), default=0),
        "overfit_gap": overfit_gap(rows),
        "cpu_minutes": sum((c or {}).get("cpu_s") or 0.0 for c in cost.values()) / 60,
        "wall_minutes": sum((c or {}).get("wall_s") or 0.0 for c in cost.values()) / 60,
    }


def difference(variant: list[dict], base: list[dict], key: str) -> dict:
    """Mean difference (points) over seeds, and its noise: two standard errors of the difference of
    two error rates on n images, or twice the seeds' standard error where that is larger. Every seed
    is scored on the same images, so more seeds do not shrink the first."""
    diffs = [v[key] - b[key] for v, b in zip(variant, base)]
    n = variant[0]["val_images"]
    binomial = [math.sqrt(_variance(v[key], n) + _variance(b[key], n)) for v, b in zip(variant, base)]
    se = statistics.fmean(binomial)
    if len(diffs) > 1:
        se = max(se, statistics.stdev(diffs) / math.sqrt(len(diffs)))
    return {"mean": statistics.fmean(diffs), "per_seed": diffs, "noise": 2 * se}


def _variance(error: float, n: int) -> float:
    """Variance (points squared) of an error rate measured on n images. Agresti-Coull's two added
    errors and two added successes keep it above 0 where no image (or every image) was wrong."""
    p = (error / 100 * n + 2) / (n + 4)
    return p * (1 - p) / (n + 4) * 100**2


def verdict(diff: dict, claimed: float | None, classes: int | None) -> str:
    if claimed is None:
        return "no figure in the paper"
    if claimed <= diff["noise"]:
        return f"cannot show: the noise (±{diff['noise']:.1f}) exceeds the claimed {claimed:+.1f}"
    if classes != IMAGENET_CLASSES:  # resolved, but the paper's figure is about another task
        way = "worse" if diff["mean"] > 0 else "better"
        return f"{way} by {abs(diff['mean']):.1f} on {classes} classes (the paper's figure is for ImageNet's 1000)"
    low, high = diff["mean"] - diff["noise"], diff["mean"] + diff["noise"]
    return "consistent with the claim" if low <= claimed <= high else "differs from the claim"


def compare(results: Results, variants: dict, seeds: list[int], base_seed: int, threshold: float) -> dict:
    def run_id(name: str, seed: int) -> str | None:
        return None if name == "base" and seed == base_seed else variant_run(name, seed)

    base = [read_run(results, run_id("base", s), threshold) for s in seeds]
    rows = []
    for name, overrides in variants.items():
        runs = [read_run(results, run_id(name, s), threshold) for s in seeds]
        claim = claim_of(overrides) or {}
        row = {"variant": name, "overrides": overrides, "claim": claim, "runs": runs}
        for key in ERRORS:
            row[key] = difference(runs, base, key)
            short = key.split("_")[0]
            claimed = claim.get(short) if key.endswith("10crop") else None
            row[key]["verdict"] = verdict(row[key], claimed, base[0]["classes"])
        ratios = [
            v["epochs_to_threshold"] / b["epochs_to_threshold"]
            for v, b in zip(runs, base)
            if v["epochs_to_threshold"] and b["epochs_to_threshold"]
        ]
        row["speed_ratio"] = statistics.fmean(ratios) if len(ratios) == len(seeds) else None
        gaps = [
            v["overfit_gap"] - b["overfit_gap"]
            for v, b in zip(runs, base)
            if None not in (v["overfit_gap"], b["overfit_gap"])
        ]
        row["overfit_gap_diff"] = statistics.fmean(gaps) if gaps else None
        row["cpu_minutes"] = statistics.fmean(r["cpu_minutes"] for r in runs)
        rows.append(row)
    return {
        "dataset": base[0]["dataset_label"],
        "classes": base[0]["classes"],
        "val_images": base[0]["val_images"],
        "seeds": seeds,
        "base_seed": base_seed,
        "threshold": threshold,
        "base": base,
        "variants": rows,
    }


def _pm(d: dict) -> str:
    return f"{d['mean']:+.1f} ± {d['noise']:.1f}"


def table(c: dict) -> str:
    base1 = statistics.fmean(b["top1_10crop"] for b in c["base"])
    lines = [
        "# The paper's ablations, rerun",
        "",
        f"Data: {c['dataset']}, {c['val_images']} validation images; seeds {c['seeds']}. "
        f"Base run top-1 error (ten-crop) {base1:.1f}%. Differences are the variant's error minus the base "
        "run's, in points, ± two standard errors. A claim is tested only where the noise is smaller than it.",
        "",
        *(
            [
                f"The paper's figures are for ImageNet's {IMAGENET_CLASSES} classes; these {c['classes']} classes are "
                "another task, so even a resolved difference is not a test of the paper's figure.",
                "",
            ]
            if c["classes"] != IMAGENET_CLASSES
            else []
        ),
        "| variant | section | top-1 10-crop | top-5 10-crop | top-1 centre | top-5 centre | paper (top-1 / top-5) "
        "| verdict (top-1) | epochs to threshold (x base) | overfit gap (Δ points) | CPU min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in c["variants"]:
        claim = r["claim"]
        paper = " / ".join(f"+{claim[k]:.1f}" for k in ("top1", "top5") if k in claim) or "no figure"
        missed = [run["epochs"] for run in r["runs"] if run["epochs_to_threshold"] is None]
        speed = f"{r['speed_ratio']:.2f}" if r["speed_ratio"] is not None else "n/a"
        if missed:
            speed = f"not reached in {max(missed)} epochs"
        if "speed" in claim:
            speed += f" (paper {claim['speed']:g})"
        gap = "n/a" if r["overfit_gap_diff"] is None else f"{r['overfit_gap_diff']:+.1f}"
        if claim.get("overfit"):
            gap += " (paper: substantial)"
        lines.append(
            f"| {r['variant']} | {claim.get('section', '-')} | {_pm(r['top1_10crop'])} | {_pm(r['top5_10crop'])} "
            f"| {_pm(r['top1_center'])} | {_pm(r['top5_center'])} | {paper} | {r['top1_10crop']['verdict']} "
            f"| {speed} | {gap} | {r['cpu_minutes']:.1f} |"
        )
    lines += ["", f"Epochs to threshold: until a logged window's training top-1 error reached {c['threshold']:g}%."]
    lines += ["", "The paper's claims:", ""]
    lines += [f"- {r['variant']}: {r['claim'].get('text', 'none for this variant')}" for r in c["variants"]]
    return "\n".join(lines) + "\n"


def plot(c: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = c["variants"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(rows), 4))
    x = range(len(rows))
    ax.bar(x, [r["top1_10crop"]["mean"] for r in rows], yerr=[r["top1_10crop"]["noise"] for r in rows],
           color="tab:blue", alpha=0.7, capsize=4, label="measured (± 2 SE)")  # fmt: skip
    claimed = [(i, r["claim"]["top1"]) for i, r in enumerate(rows) if "top1" in r["claim"]]
    if claimed:
        ax.scatter(*zip(*claimed), marker="D", color="tab:red", zorder=3, label="the paper's claim")
    ax.axhline(0, color="black", lw=0.8)
    if max(abs(r["top1_10crop"]["mean"]) for r in rows) > 20:  # a variant that did not learn would flatten the rest
        ax.set_yscale("symlog", linthresh=5)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks(list(x), [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("top-1 error minus base (points, ten-crop)")
    ax.set_title(f"Ablations on {c['dataset']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def flat_metrics(c: dict) -> dict[str, float]:
    out = {}
    for r in c["variants"]:
        for key in ERRORS:
            out[f"ablation_{r['variant']}_{key}_diff"] = r[key]["mean"]
        if r["speed_ratio"] is not None:
            out[f"ablation_{r['variant']}_epochs_ratio"] = r["speed_ratio"]
    return out


def run(results, variants: dict, seeds: list[int], base_seed: int, threshold: float, out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = compare(Results(str(results)), variants, seeds, base_seed, threshold)
    text = table(c)
    write_text(out / "comparison.md", text)
    plot(c, out / "comparison.png")
    write_json(out / "metrics.json", flat_metrics(c))
    write_json(out / "comparison.json", c)  # last: its presence marks a finished comparison
    print(text, file=sys.stderr)
    return c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="the results folder (paths.results)")
    p.add_argument("--variants", required=True, type=json.loads, help="ablations.variants as JSON")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds every variant trained with")
    p.add_argument("--base-seed", type=int, required=True, help="train.seed: the base run's own seed")
    p.add_argument("--threshold", type=float, default=25.0, help="training top-1 error (%%) for the speed claims")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    return run_cli(lambda: run(a.results, a.variants, a.seeds, a.base_seed, a.threshold, a.out_dir))


if __name__ == "__main__":
    sys.exit(main())
