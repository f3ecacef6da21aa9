"""Resize stage: ILSVRC images -> shuffled 256x256 webdataset shards + RGB statistics.

Paper, section 2: "rescaled the image such that the shorter side was of length
256, and then cropped out the central 256x256 patch". `downsample`
(pipeline/images.py, shared with pipeline/predict.py) does exactly
that geometry (the same integer sizes and crop offset as resize-then-crop) but
decodes less and resizes only the kept square:

- JPEG DCT scaling (PIL `draft`): libjpeg decodes at 1/2, 1/4 or 1/8 scale, the
  smallest that keeps both sides >= 256, so a 1600x1200 photo is decoded as
  400x300 instead of 1.9 MP.
- The antialiased resize reads only the central square (`Image.resize(box=)`).
- Filter: PIL BILINEAR, which is antialiased when downscaling (a triangle
  filter widened by the scale factor) and is what torchvision's
  `Resize(256)` applies to ImageNet. Against full decode + LANCZOS it differs
  by 2.3 levels MAD (35 dB PSNR, the softer filter); BICUBIC (0.9 levels)
  costs +26% per 500x375 image in decode+resize and LANCZOS +48%
  (bench/RESULTS-resize.md).

Measured on one core (bench/resize_speed.py, CPU time): 500x375 photos 3.1 ms
per image with statistics (1.5x faster than the naive full-decode LANCZOS
path), 1600x1200 7.3 ms (4.2x faster, below the 8.5 ms of a full decode).
A job's peak RSS is 52 MB whether it writes 280 or 1,120 images.

Dirty inputs of the real set (22 CMYK JPEGs, grayscale JPEGs, one PNG named
.JPEG) are converted to RGB. An image that cannot be decoded (truncated data
included: PIL's LOAD_TRUNCATED_IMAGES stays False and every image is fully
loaded) is recorded with its reason; a shard job fails when its rejects exceed
`resize.max_reject_fraction`, and the manifest checks the total again.

Shards: the index rows are permuted with `resize.seed`; shard k of S holds
rows [k*n//S, (k+1)*n//S) of that permutation, in that order, so each shard is
an independent job and a rerun redoes only missing shards. Each shard is
streamed to disk (ShardWriter), so a job's memory does not grow with its size,
and hashed on its way there: the report and the manifest record the sha256 of
the tar and of its .idx, which the train and evaluate stages check before they
read a shard (pipeline/shards.py verify_shards).

RGB statistics (train only) are fused into the same pass: for every written
image, its pixel count, sum of outer products and the image itself are added
to float64 sums (`RGBStats`). They are computed on the uint8 array handed to
the JPEG encoder, i.e. the pixels the stage decided to write; the JPEG
round trip changes pixels by a few levels but is zero-mean, so the covariance
of the decoded shards would differ only slightly and would need a second
decoding pass, which this stage never does. Tests recompute the statistics
from `downsample` on the same inputs.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

# One job per core: a threaded BLAS makes the per-image dot products ~10x slower
# (thread hand-off on 65,536-element vectors). Snakemake sets this too.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageFile
from tqdm import tqdm

from pipeline import archive, holdout
from pipeline.errors import PipelineError, run_cli
from pipeline.images import RESAMPLE, crop_box, downsample  # noqa: F401 (crop_box, RESAMPLE: part of the stage's API)
from pipeline.io import atomic_path, read_classes, read_json, write_json
from pipeline.layout import shard_name
from pipeline.schema import defaults
from pipeline.shards import IMAGE_SIZE, ShardWriter, manifest_entry, shard_sample_keys

# Truncated files must raise, not decode as grey padding (PIL's default, kept explicit).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Quality 90 (measured on noisy 256x256 photos): 20 kB per image, 0.35x the
# bytes of quality 100 and 0.7x those of 95, at 2.7 levels mean error (36 dB),
# below the PCA lighting noise training adds anyway (std 0.1 * 0.2175 * 255 =
# 5.5 levels along the first eigenvector, paper section 4.1); about 26 GB for
# the 1.28 M training images; and the usual re-encoding quality of ImageNet
# loaders. The round trip is zero-mean, so it does not bias the statistics,
# which are of the pixels before encoding.
RESIZE = defaults("resize")  # the config schema is the one home of defaults
DEFAULT_QUALITY = RESIZE["jpeg_quality"]
UINT16_IMAGES = 257  # images a uint16 image sum holds exactly (255 * 257 = 65535)


class ResizeError(PipelineError, ValueError):
    """Arguments that name no shard of the split."""


class TooManyRejectsError(PipelineError, RuntimeError):
    """More images failed to decode than resize.max_reject_fraction allows."""


# --- one image ---


def encode_jpeg(im: Image.Image, quality: int = DEFAULT_QUALITY) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)  # baseline, 4:2:0, like the originals
    return buf.getvalue()


# --- RGB statistics ---


class RGBStats:
    """Sums over written pixels (0-255 scale) for the PCA and the mean image.

    All sums are of integers held in float64; they stay exact up to 2**53,
    i.e. beyond the 8.4e10 pixels of the ImageNet training set (outer-product
    sums reach 5.5e15 < 9.0e15), so the order of shards never matters.
    Cost per 256x256 image: one uint8 -> float64 planar copy, six dot products
    and a uint16 add: 0.4 ms alone, 0.6 ms inside the stage's loop (caches
    shared with the codec), +15% on 500x375 images and +8% on 1600x1200.
    """

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = size
        self.images = 0
        self._products = np.zeros(6)  # RR, RG, RB, GG, GB, BB
        self._planes = np.empty((3, size * size))
        self._image_sum16 = np.zeros((size, size, 3), np.uint16)
        self._image_sum = np.zeros((size, size, 3))

    def add(self, pixels: np.ndarray) -> None:
        """Add one (size, size, 3) uint8 image."""
        r, g, b = self._planes
        self._planes[...] = pixels.reshape(-1, 3).T
        # six BLAS dot products on float64 planes: exact (integers < 2**53), and
        # 3x faster than one (3, N) x (N, 3) GEMM in OpenBLAS (measured)
        self._products += (np.dot(r, r), np.dot(r, g), np.dot(r, b), np.dot(g, g), np.dot(g, b), np.dot(b, b))
        np.add(self._image_sum16, pixels, out=self._image_sum16, casting="unsafe")
        self.images += 1
        if self.images % UINT16_IMAGES == 0:
            self._flush()

    def _flush(self) -> None:
        self._image_sum += self._image_sum16
        self._image_sum16[...] = 0

    @property
    def outer(self) -> np.ndarray:
        rr, rg, rb, gg, gb, bb = self._products
        return np.array([[rr, rg, rb], [rg, gg, gb], [rb, gb, bb]])

    def arrays(self) -> dict[str, np.ndarray]:
        """The .stats.npz arrays (docs/formats.md)."""
        self._flush()
        image_sum = self._image_sum.copy()
        return {
            "pixels": np.int64(self.images * self.size * self.size),
            "sum": image_sum.sum(axis=(0, 1)),
            "outer": self.outer,
            "image_sum": image_sum,
            "images": np.int64(self.images),
        }

    def write(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.arrays())


# --- one shard ---


def shard_rows(n: int, shard: int, shards: int, seed: int) -> np.ndarray:
    """Index rows of shard `shard` of `shards`: a slice of one seeded permutation."""
    if not 0 <= shard < shards:
        raise ResizeError(f"--shard {shard} is outside 0..{shards - 1} (--shards {shards})")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[shard * n // shards : (shard + 1) * n // shards]


class _Source:
    """Image bytes by index row: pread from an archive, or a file of a folder tree."""

    def __init__(self, source: str | os.PathLike):
        self.path = Path(source)
        self.folder = self.path.is_dir()
        self.fd = None if self.folder else os.open(self.path, os.O_RDONLY)

    def read(self, member: str, offset: int, size: int) -> bytes:
        if self.folder:
            return (self.path / member).read_bytes()
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise archive.ArchiveIndexError(
                f"{self.path}: {member} at offset {offset} is cut short ({len(data)} of {size} bytes); "
                "the archive changed since it was indexed, rebuild results/index"
            )
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _check_rejects(rejects: list[dict], inputs: int, max_fraction: float, where: str) -> None:
    if len(rejects) > max_fraction * inputs:
        shown = "\n  ".join(f"{r['name']}: {r['reason']}" for r in rejects[:10])
        more = f"\n  ... and {len(rejects) - 10} more" if len(rejects) > 10 else ""
        raise TooManyRejectsError(
            f"{where}: {len(rejects)} of {inputs} images could not be decoded "
            f"({len(rejects) / max(inputs, 1):.2%} > resize.max_reject_fraction {max_fraction:.2%}):\n  "
            f"{shown}{more}\nCheck or replace these files, or raise resize.max_reject_fraction "
            "if losing them is acceptable."
        )


def shard_paths(out_tar: str | os.PathLike) -> dict[str, Path]:
    tar = Path(out_tar)
    stem = tar.name[: -len(".tar")]
    return {
        "tar": tar,
        "idx": tar.with_suffix(".idx"),
        "json": tar.with_name(f"{stem}.json"),
        "stats": tar.with_name(f"{stem}.stats.npz"),
    }


def _remove_stale_temporaries(paths: dict[str, Path]) -> None:
    """Drop <output>.tmp-<pid> files a killed run of this shard left (one job per shard runs at a time)."""
    for path in paths.values():
        for tmp in path.parent.glob(f"{path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)


def resize_shard(
    index: str | os.PathLike,
    source: str | os.PathLike,
    out_tar: str | os.PathLike,
    shard: int,
    shards: int,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    jpeg_quality: int = DEFAULT_QUALITY,
    max_reject_fraction: float = RESIZE["max_reject_fraction"],
    stats: bool = False,
    split: str = "train",
) -> dict:
    """Write one shard (.tar, .idx), its .json and, with `stats`, its .stats.npz. Returns the .json content."""
    started = time.time()
    paths = shard_paths(out_tar)
    _remove_stale_temporaries(paths)
    idx = archive.read_member_index(index, lambda n: shard_rows(n, shard, shards, seed))
    src = _Source(source)
    acc = RGBStats(size) if stats else None
    rejects: list[dict] = []
    labels: dict[int, int] = {}
    loop_started, first_seconds = time.perf_counter(), None
    try:
        with ShardWriter(paths["tar"]) as writer:
            for j in tqdm(range(len(idx)), desc=f"{split} shard {shard}/{shards}", unit="img", disable=None):
                name = idx.name(j)
                data = src.read(name, int(idx.offset[j]), int(idx.size[j]))
                try:
                    im = downsample(data, size)
                except Exception as exc:  # any decoder failure is a reject with its reason
                    rejects.append({"name": name, "reason": f"{type(exc).__name__}: {exc}"})
                    continue
                if acc is not None:
                    acc.add(np.asarray(im))
                label = int(idx.label[j])
                writer.add(archive.image_key(name), encode_jpeg(im, jpeg_quality), label)
                labels[label] = labels.get(label, 0) + 1
                if first_seconds is None:  # the first image also pays the decoders' and buffers' set-up
                    first_seconds = time.perf_counter() - loop_started
            _check_rejects(rejects, len(idx), max_reject_fraction, f"{paths['tar']}")
    finally:
        src.close()
    loop_seconds = time.perf_counter() - loop_started  # per image; the rest is per shard (index, statistics)
    if acc is not None:
        acc.write(paths["stats"])
    seconds = time.time() - started
    images = len(idx) - len(rejects)
    report = {
        "split": split,
        "shard": shard,
        "shards": shards,
        "tar": str(paths["tar"]),
        "idx": str(paths["idx"]),
        "stats": str(paths["stats"]) if acc is not None else None,
        "inputs": len(idx),
        "images": images,
        "rejected": len(rejects),
        "rejects": rejects,
        "bytes": paths["tar"].stat().st_size,
        **writer.checksums,  # sha256 of the tar and the .idx, hashed while written
        "seconds": seconds,
        "loop_seconds": loop_seconds,
        "first_image_seconds": first_seconds or 0.0,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "started": started,
        "finished": started + seconds,
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "settings": {
            "size": size,
            "jpeg_quality": jpeg_quality,
            "seed": seed,
            "shards": shards,
            "max_reject_fraction": max_reject_fraction,
            "resample": RESAMPLE.name,
            "source": str(source),
            "index": str(index),
        },
    }
    write_json(paths["json"], report)  # last: its presence marks a finished shard
    print(
        f"{paths['tar']}: {images} images, {len(rejects)} rejected, {report['bytes'] / 1e6:.1f} MB, "
        f"{seconds:.1f} s ({report['images_per_s']:.0f} images/s)",
        file=sys.stderr,
    )
    return report


# --- index and manifest ---


def build_index(
    split: str,
    source: str | os.PathLike,
    classes: str | os.PathLike,
    val_labels: str | os.PathLike | None,
    out: str | os.PathLike,
) -> int:
    """Write results/index/<split>.tsv for an archive or a <wnid>/ folder tree; returns the row count."""
    if Path(source).is_dir():
        rows = archive.index_folder(source, classes)
    elif split == "train":
        rows = archive.index_train_archive(source, classes)
    else:
        if val_labels is None:
            raise archive.ArchiveIndexError(f"{source}: indexing the validation archive needs --val-labels")
        rows = archive.index_val_archive(source, val_labels)
    count = archive.write_index(rows, out)
    print(f"{out}: {count} {split} images indexed from {source}", file=sys.stderr)
    return count


def split_shard_jsons(shards_dir: str | os.PathLike, split: str, shards: int) -> list[Path]:
    return [Path(shards_dir) / split / f"{shard_name(split, k)}.json" for k in range(shards)]


def write_manifest(
    shards_dir: str | os.PathLike,
    train_shards: int,
    val_shards: int,
    classes: str | os.PathLike,
    out: str | os.PathLike,
    max_reject_fraction: float,
    holdout_shards: int = 0,
) -> dict:
    """Reduce the shard .json files into results/shards/manifest.json; check all rejects together.

    With `holdout_shards`, the held-out slice of the training set
    (pipeline/holdout.py) is a third split whose entry also lists its images'
    keys: the record of which training images the training never sees.
    """
    class_rows = read_classes(classes)
    split_shards = {"train": train_shards, "val": val_shards, **({"holdout": holdout_shards} if holdout_shards else {})}
    counts = {split: [0] * len(class_rows) for split in split_shards}
    splits, all_reports = {}, []
    for split, shards in split_shards.items():
        reports = [read_json(p) for p in split_shard_jsons(shards_dir, split, shards)]
        all_reports += reports
        for r in reports:
            for label, n in r["labels"].items():
                counts[split][int(label)] += n
        splits[split] = {
            "images": sum(r["images"] for r in reports),
            "inputs": sum(r["inputs"] for r in reports),
            "rejected": sum(r["rejected"] for r in reports),
            "bytes": sum(r["bytes"] for r in reports),
            "shards": [manifest_entry(r, out) for r in reports],
            "rejects": [
                dict(rej, shard=os.path.relpath(r["tar"], Path(out).parent)) for r in reports for rej in r["rejects"]
            ],
        }
        if split == "holdout":
            splits[split]["members"] = sorted(key for r in reports for key in shard_sample_keys(r["tar"]))
    rejects = [rej for s in splits.values() for rej in s["rejects"]]
    inputs = sum(s["inputs"] for s in splits.values())
    _check_rejects(rejects, inputs, max_reject_fraction, f"{shards_dir} (all shards)")
    manifest = {
        "totals": {
            "images": sum(s["images"] for s in splits.values()),
            "rejects": len(rejects),
            "bytes": sum(s["bytes"] for s in splits.values()),
            "images_per_s": sum(r["images_per_s"] for r in all_reports),  # summed over jobs
            "wall_seconds": max(r["finished"] for r in all_reports) - min(r["started"] for r in all_reports),
            "job_seconds": sum(r["seconds"] for r in all_reports),
        },
        **splits,
        "classes": [
            {
                "index": int(c["index"]),
                "wnid": c["wnid"],
                "names": c["names"],
                **{split: counts[split][i] for split in split_shards},
            }
            for i, c in enumerate(class_rows)
        ],
        "settings": all_reports[0]["settings"] if all_reports else {},
    }
    write_json(out, manifest)
    t = manifest["totals"]
    print(
        f"{out}: {t['images']} images in {' + '.join(map(str, split_shards.values()))} shards "
        f"({', '.join(split_shards)}), {t['rejects']} rejected, "
        f"{t['bytes'] / 1e6:.1f} MB",
        file=sys.stderr,
    )
    return manifest


# --- CLI ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.resize", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index an archive or folder tree by byte offset")
    p.add_argument("--split", choices=["train", "val"], required=True)
    p.add_argument("--source", required=True, help="ILSVRC2012_img_<split>.tar or a <wnid>/ folder tree")
    p.add_argument("--classes", required=True, help="classes.tsv from fetch")
    p.add_argument("--val-labels", help="val_labels.tsv from fetch (validation archive)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("holdout", help="split a training index into kept and held-out rows (pipeline/holdout.py)")
    p.add_argument("--index", required=True, help="results/index/train.tsv")
    p.add_argument("--per-class", type=int, required=True, help="images held out of every class")
    p.add_argument("--seed", type=int, default=RESIZE["seed"])
    p.add_argument("--out-kept", required=True, help="the rows the training shards are cut from")
    p.add_argument("--out-holdout", required=True, help="the held-out rows")

    p = sub.add_parser("shard", help="write one shard")
    p.add_argument("--split", choices=["train", "val", "holdout"], required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--seed", type=int, default=RESIZE["seed"])
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_QUALITY)
    p.add_argument("--max-reject-fraction", type=float, default=RESIZE["max_reject_fraction"])
    p.add_argument("--stats", action="store_true", help="also write <shard>.stats.npz (training shards)")
    p.add_argument("--out", required=True, help="<split>-<k>.tar; .idx, .json, .stats.npz go beside it")

    p = sub.add_parser("manifest", help="check all shards and write the manifest")
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--train-shards", type=int, required=True)
    p.add_argument("--val-shards", type=int, required=True)
    p.add_argument("--holdout-shards", type=int, default=0, help="shards of the held-out slice (0: none)")
    p.add_argument("--classes", required=True)
    p.add_argument("--max-reject-fraction", type=float, default=RESIZE["max_reject_fraction"])
    p.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    return run_cli(_run_command, args)


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "index":
        build_index(args.split, args.source, args.classes, args.val_labels, args.out)
    elif args.command == "holdout":
        holdout.split_index(args.index, args.per_class, args.seed, args.out_kept, args.out_holdout)
    elif args.command == "shard":
        resize_shard(
            args.index,
            args.source,
            args.out,
            args.shard,
            args.shards,
            args.seed,
            IMAGE_SIZE,
            args.jpeg_quality,
            args.max_reject_fraction,
            args.stats,
            args.split,
        )
    else:
        write_manifest(
            args.shards_dir,
            args.train_shards,
            args.val_shards,
            args.classes,
            args.out,
            args.max_reject_fraction,
            args.holdout_shards,
        )


if __name__ == "__main__":
    sys.exit(main())
