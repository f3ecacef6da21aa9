"""Ten-crop evaluation of a training checkpoint on the validation shards (paper, section 4.1).

    python -m pipeline.evaluate --checkpoint results/train/checkpoints/best.pt \
        --shards-manifest results/shards/manifest.json --pca results/pca/pca.json \
        --mean-image results/pca/mean_image.npy --classes results/fetch/classes.tsv \
        --dataset-name demo --batch-size 32 --out-dir results/evaluate [--devices cpu|cuda:0|cuda:0,cuda:1]
    torchrun --nproc_per_node=N -m pipeline.evaluate ...   # each rank scores its share of the shards

Every validation image is decoded once; the DALI loader cuts its ten 224x224
views (four corners, centre, and their reflections) and the network scores
all of them in one batched forward. The ten softmax outputs are averaged for
the ten-crop prediction; view 4 alone is the centre-crop prediction, so the
centre numbers need no second pass. Top-1/top-5 error in percent; a tie with
the true class counts against it (pipeline/metrics.py).

Under torchrun each rank scores its EvalLoader shard, the integer tallies are
summed over ranks, and rank 0 writes. Before the first batch the validation
shards are checked against the sha256 the manifest recorded (pipeline/shards.py
verify_shards). The total is checked against the
manifest's validation count, so an image scored twice or missed fails the
stage instead of skewing the numbers.

Outputs (results/evaluate/): metrics.json (flat: val_top1_err_10crop,
val_top5_err_10crop, val_top1_err_center, val_top5_err_center, ...),
per_class.csv, confusions.csv, comparison.md, per_class.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import report_tables
from pipeline.checkpoint import model_from_checkpoint
from pipeline.devices import DeviceError, InputWait, launch_from_env, synchronize
from pipeline.errors import PipelineError, run_cli
from pipeline.io import read_classes, write_json
from pipeline.layout import checkpoint_kind
from pipeline.loaders import AugmentSettings, EvalLoader, manifest_shards
from pipeline.metrics import EvalCounts, ten_crop_probs
from pipeline.pca_files import load_pca
from pipeline.schema import defaults
from pipeline.shards import ManifestError, read_manifest, verify_shards

EVALUATE = defaults("evaluate")  # the config schema is the one home of defaults


class EvaluateError(PipelineError, ValueError):
    """An input of the evaluation stage that cannot work (named in the message)."""


def val_counts(manifest: str | os.PathLike) -> tuple[int, list[int] | None]:
    """Validation images in the resize manifest: the total and, where listed, per class."""
    try:
        m = read_manifest(manifest)
        total = int(m["val"]["images"])
    except (ManifestError, ValueError, KeyError, TypeError) as exc:
        raise EvaluateError(f"{manifest}: no validation image count ({exc}); rerun the resize stage") from exc
    per_class = [c.get("val") for c in m.get("classes", [])]
    return total, per_class if per_class and all(isinstance(n, int) for n in per_class) else None


def score(
    model: torch.nn.Module, loader, num_classes: int, progress: bool = True, max_images: int = 0
) -> tuple[EvalCounts, float, float]:
    """Tallies over every (N, 10, 3, 224, 224) batch of `loader` (or the batches that reach
    `max_images`, when above 0), the seconds it took, and the seconds of it spent waiting for batches."""
    counts = EvalCounts(num_classes, device=model.output_device)  # plain tensors: they are summed later
    input_device = model.input_device
    wait = InputWait([input_device, model.output_device])
    start = time.perf_counter()
    with (
        torch.inference_mode(),
        tqdm(
            total=len(loader),
            unit="img",
            desc="ten-crop",
            file=sys.stderr,
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        for images, labels, _keys in wait.batches(loader):
            if len(labels) == 0:  # DALI can end a rank's share with an empty batch
                continue
            if images.ndim != 5:
                raise EvaluateError(
                    f"the evaluation loader gave images of shape {tuple(images.shape)}; "
                    "expected (N, 10, 3, 224, 224) ten-crop views"
                )
            probs_10crop, probs_center = ten_crop_probs(model, images.to(input_device, non_blocking=True))
            counts.update(probs_10crop, probs_center, labels)
            bar.update(len(labels))
            if 0 < max_images <= counts.images:
                break
    synchronize([input_device, model.output_device])
    return counts, time.perf_counter() - start, wait.take()


def make_loader(
    shards: list[str],
    pca_json,
    mean_image,
    augment: dict,
    batch_size: int,
    device,
    shard_id: int = 0,
    num_shards: int = 1,
    threads: int = 2,
):
    """The ten-crop EvalLoader with the checkpoint's normalisation."""
    pca = load_pca(str(pca_json), str(mean_image))
    return EvalLoader(
        shards,
        pca,
        batch_size,
        views="ten",
        settings=AugmentSettings(**augment),
        device=str(device),
        shard_id=shard_id,
        num_shards=num_shards,
        threads=threads,
    )


# What the scored checkpoint is, from its file name (pipeline/checkpoint.py names them): last,
# best (picked on the validation set this stage scores: biased low) or given; comparison.md and
# metrics.json say which (report_tables.CHECKPOINT_TEXT).
def checkpoint_choice(checkpoint) -> str:
    return checkpoint_kind(Path(checkpoint).name)


def check_inputs(shards_manifest, pca_json, mean_image, classes_tsv) -> None:
    for path, stage in ((shards_manifest, "resize"), (pca_json, "pca"), (mean_image, "pca"), (classes_tsv, "fetch")):
        if not Path(path).is_file():
            raise EvaluateError(f"{path} does not exist; run the {stage} stage first")


def reduce_over_ranks(counts: EvalCounts, loop_s: float, wait_s: float, env) -> tuple[float, float]:
    """Sum the counts over the DDP ranks; the slowest rank's loop time, the longest wait."""
    if env.world == 1:
        return loop_s, wait_s
    counts.all_reduce()
    times = torch.tensor([loop_s, wait_s], dtype=torch.float64, device=counts.tensors["images"].device)
    torch.distributed.all_reduce(times, op=torch.distributed.ReduceOp.MAX)
    return times[0].item(), times[1].item()


def check_counts(counts: EvalCounts, shards_manifest, max_images: int) -> tuple[int, bool]:
    """(images the manifest lists, whether the scoring was capped short of them); every image
    scored exactly once otherwise."""
    expected, per_class = val_counts(shards_manifest)
    scored = counts.tensors["class_images"].tolist()
    partial = max_images > 0 and counts.images < expected
    if counts.images > expected:
        raise EvaluateError(f"scored {counts.images} validation images but {shards_manifest} lists only {expected}")
    if not partial and (counts.images != expected or (per_class is not None and scored != per_class)):
        raise EvaluateError(
            f"scored {counts.images} validation images but {shards_manifest} lists {expected}"
            + ("" if counts.images != expected else " with other per-class counts")
            + "; every image must be scored exactly once (check the val shards and their .idx files)"
        )
    return expected, partial


def evaluate(
    checkpoint,
    shards_manifest,
    pca_json,
    mean_image,
    classes_tsv,
    out_dir,
    dataset_name: str = "demo",
    batch_size: int = EVALUATE["batch_size"],
    devices: str = "auto",
    threads: int = 2,
    top_confusions: int = 20,
    max_images: int = EVALUATE["max_images"],
) -> dict:
    """The stage: score the checkpoint on all validation images, write the outputs; returns metrics.json's dict.

    `threads`: DALI CPU threads. max_images > 0 scores only about that many (whole batches; a
    rehearsal's cap, so the preflight measures the ten-crop speed without scoring 50,000 images
    on a CPU): metrics.json then says partial: true and the per-class counts are not checked."""
    t0 = time.perf_counter()
    check_inputs(shards_manifest, pca_json, mean_image, classes_tsv)
    try:
        env, devs = launch_from_env(devices)
    except DeviceError as exc:
        raise EvaluateError(f"--devices {devices!r}: {exc}") from exc
    try:
        model, meta = model_from_checkpoint(checkpoint, devices=devs)
        config = meta["config"]
        num_classes = config["model"]["num_classes"]
        classes = read_classes(classes_tsv)
        if len(classes) != num_classes:
            raise EvaluateError(
                f"{classes_tsv} lists {len(classes)} classes but checkpoint {checkpoint} "
                f"has {num_classes} outputs; evaluate a checkpoint trained on this dataset"
            )
        verify_shards(shards_manifest, "val", env.rank, env.world)  # before the first batch
        loader = make_loader(
            manifest_shards(shards_manifest, "val"),
            pca_json,
            mean_image,
            config.get("augment", {}),
            batch_size,
            model.input_device,
            env.rank,
            env.world,
            threads,
        )
        rank_cap = -(-max_images // env.world) if max_images > 0 else 0
        counts, loop_s, wait_s = score(model, loader, num_classes, progress=env.main, max_images=rank_cap)
        loop_s, wait_s = reduce_over_ranks(counts, loop_s, wait_s, env)
        expected, partial = check_counts(counts, shards_manifest, max_images)
        metrics = {
            **counts.errors(),
            "val_images": counts.images,
            "partial": partial,
            "val_images_listed": expected,
            "classes": num_classes,
            "checkpoint_epoch": meta.get("epoch"),
            "checkpoint_choice": checkpoint_choice(checkpoint),
            "eval_seconds": time.perf_counter() - t0,
            "eval_images_per_s": counts.images / loop_s if loop_s > 0 else 0.0,
            "data_wait_s": wait_s,
            "data_wait_fraction": wait_s / loop_s if loop_s > 0 else 0.0,
            "world_size": env.world,
            "dataset": dataset_name,
            "dataset_label": report_tables.dataset_label(dataset_name, num_classes, counts.images),
            "checkpoint": str(checkpoint),
            "devices": ",".join(devs),
        }
        if env.main:
            write_outputs(Path(out_dir), metrics, counts, classes, top_confusions)
            print(
                f"{dataset_name}: {counts.images} images, top-1/top-5 error ten-crop "
                f"{metrics['val_top1_err_10crop']:.2f}/{metrics['val_top5_err_10crop']:.2f}%, centre "
                f"{metrics['val_top1_err_center']:.2f}/{metrics['val_top5_err_center']:.2f}% "
                f"({metrics['eval_images_per_s']:.1f} images/s)",
                file=sys.stderr,
            )
        return metrics
    finally:
        if env.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def write_outputs(out_dir: Path, metrics: dict, counts: EvalCounts, classes: list[dict], top_confusions: int) -> None:
    """Tables and plot first, metrics.json last: its presence means the stage finished."""
    t = {k: v.cpu() for k, v in counts.tensors.items()}
    rows = report_tables.per_class_rows(classes, t["class_images"], t["class_top1_10crop"], t["class_top1_center"])
    report_tables.write_per_class(out_dir / "per_class.csv", rows)
    pairs = report_tables.confusion_pairs(t["confusion"].numpy(), top_confusions)
    report_tables.write_confusions(out_dir / "confusions.csv", classes, pairs)
    report_metrics = {**metrics, "images": metrics["val_images"], "epoch": metrics["checkpoint_epoch"]}
    report_tables.write_comparison(out_dir / "comparison.md", report_metrics)
    report_tables.plot_per_class(
        out_dir / "per_class.png", rows, f"per-class top-1 accuracy, {metrics['dataset_label']}"
    )
    write_json(out_dir / "metrics.json", metrics)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="any training checkpoint (best.pt, last.pt, epoch-NNN.pt)")
    p.add_argument("--shards-manifest", required=True, help="results/shards/manifest.json")
    p.add_argument("--pca", required=True, help="results/pca/pca.json")
    p.add_argument("--mean-image", required=True, help="results/pca/mean_image.npy")
    p.add_argument("--classes", required=True, help="results/fetch/classes.tsv")
    p.add_argument("--out-dir", required=True, help="results/evaluate")
    p.add_argument("--dataset-name", default="demo", help="demo | imagenet | other: labels the comparison table")
    p.add_argument(
        "--batch-size", type=int, default=EVALUATE["batch_size"], help="images per batch (each gives 10 views)"
    )
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:N | cuda:0,cuda:1 (two-column split)")
    p.add_argument("--dali-threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--top-confusions", type=int, default=20, help="class pairs in confusions.csv")
    p.add_argument(
        "--max-images",
        type=int,
        default=EVALUATE["max_images"],
        help="0: every validation image; N: about the first N only (a rehearsal: metrics say partial)",
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(
        evaluate,
        args.checkpoint,
        args.shards_manifest,
        args.pca,
        args.mean_image,
        args.classes,
        args.out_dir,
        dataset_name=args.dataset_name,
        batch_size=args.batch_size,
        devices=args.devices,
        threads=args.dali_threads,
        top_confusions=args.top_confusions,
        max_images=args.max_images,
    )


if __name__ == "__main__":
    sys.exit(main())
