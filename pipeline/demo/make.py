"""The whole dataset: check the settings, plan and draw the images, write the archives and demo.json."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.demo.archives import DEVKIT_TAR, TRAIN_TAR, VAL_TAR, write_devkit, write_md5sums, write_train, write_val
from pipeline.demo.class_table import CLASSES
from pipeline.demo.devkit_meta import id_order, synsets
from pipeline.demo.image_sizes import SIZES, size_stats
from pipeline.demo.looks import class_look
from pipeline.demo.plan import plan_split, val_order
from pipeline.demo.quirks import quirk_list
from pipeline.demo.render import Job, rendering
from pipeline.errors import PipelineError
from pipeline.io import write_json
from pipeline.schema import defaults

DEMO = defaults("demo")  # the config schema is the one home of defaults


class DemoError(PipelineError, ValueError):
    """Demo settings that cannot make a dataset."""


def check_settings(
    classes: int, train_per_class: int, val_per_class: int, large_fraction: float, sizes: str = "demo", workers: int = 1
) -> None:
    """Refuse, with a DemoError that names the setting, settings that cannot make a dataset."""
    if not 2 <= classes <= len(CLASSES):
        raise DemoError(f"demo.classes = {classes}: the demo has 2 to {len(CLASSES)} classes")
    if train_per_class < 2 or val_per_class < 1:
        raise DemoError(
            f"demo.train_per_class = {train_per_class}, demo.val_per_class = {val_per_class}: "
            "need at least 2 training images per class (three carry the quirks) and 1 val image"
        )
    if not 0.0 <= large_fraction <= 1.0:
        raise DemoError(f"demo.large_fraction = {large_fraction}: must lie in [0, 1]")
    if sizes not in SIZES:
        raise DemoError(f"demo.sizes = {sizes!r}: must be one of {', '.join(SIZES)}")
    if workers < 1:
        raise DemoError(f"--workers {workers}: need at least 1")


def make_demo(
    out_dir: str | Path,
    seed: int = DEMO["seed"],
    classes: int = DEMO["classes"],
    train_per_class: int = DEMO["train_per_class"],
    val_per_class: int = DEMO["val_per_class"],
    large_fraction: float = DEMO["large_fraction"],
    sizes: str = DEMO["sizes"],
    workers: int = 1,
) -> dict:
    """Write the three archives, MD5SUMS and demo.json into `out_dir`; return the metrics.

    `workers` processes draw the images; the bytes do not depend on it."""
    check_settings(classes, train_per_class, val_per_class, large_fraction, sizes, workers)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_val = classes * train_per_class, classes * val_per_class
    job = Job(
        seed,
        classes,
        sizes,
        tuple(class_look(k, classes) for k in range(classes)),
        (
            plan_split(seed, 0, n_train, large_fraction, quirk_list(sizes, 0, n_train)),
            plan_split(seed, 1, n_val, large_fraction, quirk_list(sizes, 1, n_val)),
        ),
    )
    val_classes = val_order(seed, classes, val_per_class)
    drawn = _write_image_archives(out, job, train_per_class, val_classes, workers)
    groups = _write_devkit_for(out, seed, classes, train_per_class, val_classes)
    md5s = write_md5sums(out)
    metrics = {
        "seed": seed,
        "classes": classes,
        "sizes": sizes,
        "train_images": n_train,
        "val_images": n_val,
        "large_images": len(job.splits[0].large) + len(job.splits[1].large),
        **size_stats(drawn),
        "quirks": {"train": job.splits[0].quirk_counts(), "val": job.splits[1].quirk_counts()},
        "non_leaf_synsets": len(groups),
        "train_bytes": (out / TRAIN_TAR).stat().st_size,
        "val_bytes": (out / VAL_TAR).stat().st_size,
        "devkit_bytes": (out / DEVKIT_TAR).stat().st_size,
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 3),
        "md5": md5s,
    }
    write_json(out / "demo.json", metrics)
    return metrics


def _write_image_archives(
    out: Path, job: Job, train_per_class: int, val_classes: list[int], workers: int
) -> list[tuple[int, int]]:
    """Draw every image and write the train and val tars; return the drawn sizes in written order."""
    classes, seed = job.classes, job.seed
    # Train: class k's images are g = k * train_per_class + i, written in sorted-wnid order.
    by_wnid = sorted(range(classes), key=lambda k: CLASSES[k][0])
    names_rng = np.random.default_rng([seed, 0, 2])
    numbers = [
        np.sort(names_rng.choice(np.arange(1, max(20000, 2 * train_per_class)), train_per_class, replace=False))
        for _ in by_wnid
    ]
    tasks = [(0, k * train_per_class + i, k) for k in by_wnid for i in range(train_per_class)] + [
        (1, g, k) for g, k in enumerate(val_classes)
    ]
    drawn: list[tuple[int, int]] = []
    with rendering(job, workers) as render:
        images = iter(render(tasks))
        write_train(out / TRAIN_TAR, images, by_wnid, numbers, drawn)
        write_val(out / VAL_TAR, images, len(val_classes), drawn)
    return drawn


def _write_devkit_for(out: Path, seed: int, classes: int, train_per_class: int, val_classes: list[int]) -> list[dict]:
    """The devkit: meta.mat's synsets in a drawn ILSVRC2012_ID order, and the val ground truth by ID."""
    leaves, groups = synsets(id_order(np.random.default_rng([seed, 2]), classes), train_per_class)
    id_of_class = {s["class"]: s["id"] for s in leaves}
    write_devkit(out / DEVKIT_TAR, leaves, groups, "".join(f"{id_of_class[k]}\n" for k in val_classes).encode())
    return groups
