"""Tables and the plot of the evaluation stage: per-class accuracy, the most
confused class pairs, and this run beside the published AlexNet numbers.

Published ILSVRC-2012 validation errors (percent, top-1 / top-5):
paper, one CNN, ten-crop 40.7 / 18.2 (Krizhevsky et al. 2012, table 2);
cuda-convnet2 one-GPU variant 42.55 / 19.81 centre crop, 40.42 / 18.15 ten
views; Caffe bvlc_alexnet 42.9 / 19.8 centre crop; torchvision alexnet
43.478 / 20.934 centre crop. A run on anything but the full ILSVRC-2012
validation set (the demo, a subset) is labelled as not comparable.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from matplotlib.figure import Figure

from pipeline.io import atomic_path
from pipeline.sources import ILSVRC_VAL_IMAGES

IMAGENET_CLASSES = 1000

# (who, top-1 centre, top-5 centre, top-1 ten-crop, top-5 ten-crop); None = not reported
REFERENCES = [
    ("Paper, one CNN (Krizhevsky et al. 2012, table 2)", None, None, 40.7, 18.2),
    ("cuda-convnet2, one-GPU variant", 42.55, 19.81, 40.42, 18.15),
    ("Caffe bvlc_alexnet", 42.9, 19.8, None, None),
    ("torchvision alexnet", 43.478, 20.934, None, None),
]


def dataset_label(dataset: str, num_classes: int, images: int) -> str:
    """What data the run used, said plainly enough that nobody compares the wrong numbers."""
    if dataset == "imagenet":
        if num_classes == IMAGENET_CLASSES and images == ILSVRC_VAL_IMAGES:
            return "ILSVRC-2012 validation"
        return (
            f"ILSVRC-2012 validation subset ({images} images, {num_classes} classes) "
            "— not the full set, not directly comparable"
        )
    if dataset == "preflight":
        return (
            f"preflight (generated ImageNet-shaped data, {num_classes} classes, {images} images) "
            "— a rehearsal, not comparable"
        )
    if dataset == "demo":
        return f"demo (synthetic, {num_classes} classes) — not comparable to ImageNet"
    return f"{dataset} ({num_classes} classes, {images} images) — not ILSVRC-2012, not comparable"


def _write_csv(path, header, rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)


def _name(row: dict) -> str:
    return row.get("names", row.get("name", ""))


def per_class_rows(classes: list[dict], class_images, class_top1_10crop, class_top1_center) -> list[list]:
    """index, wnid, name, images, top-1 accuracy (percent) ten-crop and centre; empty accuracy for a class with no images."""
    rows = []
    for i, c in enumerate(classes):
        n = int(class_images[i])
        acc = lambda k: f"{100.0 * int(k[i]) / n:.2f}" if n else ""  # noqa: E731
        rows.append([i, c["wnid"], _name(c), n, acc(class_top1_10crop), acc(class_top1_center)])
    return rows


def write_per_class(path: str | os.PathLike, rows: list[list]) -> None:
    _write_csv(path, ["index", "wnid", "name", "images", "top1_acc_10crop", "top1_acc_center"], rows)


def confusion_pairs(confusion: np.ndarray, top: int) -> list[tuple[int, int, int, float]]:
    """The `top` largest off-diagonal cells: (true, predicted, count, share of the true class's images).

    Ordered by count, then share, then class indices, so equal counts come out
    in the same order every run.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    per_true = confusion.sum(axis=1)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    counts = off[true, pred]
    shares = counts / per_true[true]
    order = np.lexsort((pred, true, -shares, -counts))[:top]
    return [(int(true[o]), int(pred[o]), int(counts[o]), float(shares[o])) for o in order]


def write_confusions(path: str | os.PathLike, classes: list[dict], pairs) -> None:
    rows = [
        [t, classes[t]["wnid"], _name(classes[t]), p, classes[p]["wnid"], _name(classes[p]), n, f"{s:.4f}"]
        for t, p, n, s in pairs
    ]
    _write_csv(
        path,
        [
            "true_index",
            "true_wnid",
            "true_name",
            "predicted_index",
            "predicted_wnid",
            "predicted_name",
            "count",
            "share",
        ],
        rows,
    )


def _cell(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


CHECKPOINT_TEXT = {
    "last": "the final network, as the paper reports its results",
    "best": "the epoch with the lowest validation error, chosen on this same validation set, so these "
    "errors are biased low (evaluate.checkpoint: last scores the final network, as the paper does)",
    "given": "a checkpoint given by path",
}


def comparison_markdown(metrics: dict) -> str:
    """This run beside the paper and the public reproductions (errors in percent)."""
    label = metrics["dataset_label"]
    lines = [
        "# AlexNet: this run beside the published numbers",
        "",
        f"This run: **{label}**; checkpoint `{metrics['checkpoint']}` (epoch {metrics['epoch']}), "
        f"{metrics['images']} images, {metrics['classes']} classes.",
        "",
        f"Checkpoint: {CHECKPOINT_TEXT.get(metrics.get('checkpoint_choice'), 'as given')}.",
        "",
        "Top-1 / top-5 error in percent. Published numbers are on the ILSVRC-2012 validation set (50,000 images).",
        "",
        "| model | data | top-1 centre | top-5 centre | top-1 ten-crop | top-5 ten-crop |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| **this run** | {label} | {_cell(metrics['val_top1_err_center'])} | {_cell(metrics['val_top5_err_center'])} "
        f"| {_cell(metrics['val_top1_err_10crop'])} | {_cell(metrics['val_top5_err_10crop'])} |",
    ]
    for who, c1, c5, t1, t5 in REFERENCES:
        lines.append(f"| {who} | ILSVRC-2012 validation | {_cell(c1)} | {_cell(c5)} | {_cell(t1)} | {_cell(t5)} |")
    lines += [
        "",
        "Ten-crop: the four corner 224x224 patches, the centre patch and their horizontal "
        "reflections, softmax outputs averaged (paper, section 4.1). Centre: the single "
        "centre patch, from the same pass. Ties count against the true class.",
    ]
    if metrics.get("partial"):
        lines += [
            "",
            f"**Partial:** {metrics['images']} of the {metrics['val_images_listed']} validation images "
            "were scored (evaluate.max_images, a rehearsal's cap): the errors are not the set's.",
        ]
    if label != "ILSVRC-2012 validation":
        lines += [
            "",
            f"**Not comparable:** this run used {label.split(' — ')[0]}, not the "
            "ILSVRC-2012 validation set; the published rows are there for orientation only.",
        ]
    return "\n".join(lines) + "\n"


def write_comparison(path: str | os.PathLike, metrics: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(comparison_markdown(metrics))


def plot_per_class(path: str | os.PathLike, rows: list[list], title: str) -> None:
    """Per-class top-1 accuracy (ten-crop and centre): labelled bars up to 40 classes; beyond, the
    classes sorted by accuracy as a curve beside the named hardest and easiest (1000 bars or
    1000 labels cannot be read)."""
    rows = [r for r in rows if r[3]]
    acc10 = np.array([float(r[4]) for r in rows])
    accc = np.array([float(r[5]) for r in rows])
    if len(rows) <= 40:
        x = np.arange(len(rows))
        fig = Figure(figsize=(max(6.0, 0.35 * len(rows)), 4.0))
        ax = fig.subplots()
        ax.bar(x - 0.2, acc10, width=0.4, label="ten-crop")
        ax.bar(x + 0.2, accc, width=0.4, label="centre")
        ax.set_xticks(x, [str(r[2] or r[1])[:18] for r in rows], rotation=60, ha="right", fontsize=7)
    else:
        fig = Figure(figsize=(12.0, 5.0))
        ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        order = np.argsort(-acc10, kind="stable")
        x = np.arange(1, len(rows) + 1)
        ax.plot(x, acc10[order], color="C0", lw=1.2, label="ten-crop")
        ax.plot(x, accc[order], ".", markersize=2, color="C1", label="centre (same classes)")
        for q in (25, 50, 75):
            ax.axvline(len(rows) * q / 100, color="gray", lw=0.5, ls=":")
        ax.set_xlabel(
            f"class rank by ten-crop accuracy ({len(rows)} classes with validation images; "
            f"median {np.median(acc10):.1f}%)",
            fontsize=8,
        )
        side.axis("off")
        side.text(
            0.0,
            1.0,
            _extremes_text(rows, acc10, order),
            va="top",
            ha="left",
            family="monospace",
            fontsize=8,
            transform=side.transAxes,
        )
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(-2, 102)  # a curve at 0% or 100% stays visible
    ax.set_title(title, fontsize=9, loc="left")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)


MIN_IMAGES_TO_RANK = 5  # a class's accuracy from fewer images is too coarse to call it easy or hard


def _extremes_text(rows: list[list], acc10: np.ndarray, order: np.ndarray, n: int = 12) -> str:
    """The easiest and hardest classes by name, ten-crop accuracy first; or why there is no ranking."""
    images = np.array([int(r[3]) for r in rows])
    if np.median(images) < MIN_IMAGES_TO_RANK or acc10.min() == acc10.max():
        return (
            f"no ranking of classes:\n{int(np.median(images))} validation image(s) per class "
            f"(median),\naccuracies from {acc10.min():.1f} to {acc10.max():.1f}%;\n"
            f"a ranking needs {MIN_IMAGES_TO_RANK}+ images per class\nand accuracies that differ"
        )

    def line(i):
        name = str(rows[i][2] or rows[i][1]).split(",")[0]  # the synset's first word names it
        return f"{acc10[i]:5.1f}%  {name[:30]}"

    easiest = [line(i) for i in order[:n]]
    hardest = [line(i) for i in order[::-1][:n]]
    return "\n".join(
        [f"easiest {len(easiest)} (ten-crop top-1 accuracy)", *easiest, "", f"hardest {len(hardest)}", *hardest]
    )
