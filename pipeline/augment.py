"""DALI input pipelines: AlexNet's training augmentation and its test views (paper, section 4.1).

    python -m pipeline.augment --manifest results/shards/manifest.json \
        --pca results/pca/pca.json --mean-image results/pca/mean_image.npy --out-dir results/augment

The stage builds both pipelines on the real shards and writes grid.png
(augmented training samples beside their originals) and augment.json
(images/s of the training, centre and ten-crop pipelines). Training and
evaluation use the same code in-process:

    from pipeline.augment import AugmentSettings, TrainLoader, EvalLoader, load_pca
    s = AugmentSettings(lighting="paper", lighting_std=0.1, normalize="mean_image")
    pca = load_pca("results/pca/pca.json", "results/pca/mean_image.npy")
    loader = TrainLoader(shards, pca, batch_size, settings=s, device="cuda:0", seed=0,
                         shard_id=rank, num_shards=world, threads=2)
    len(loader)                            # full batches per epoch, the same on every rank
    for images, labels in loader.epoch(e): # (N,3,224,224) float32, (N,) int64, on `device`
    ev = EvalLoader(val_shards, pca, batch_size, views="center" or "ten", settings=s,
                    device="cuda:0", shard_id=rank, num_shards=world, threads=2)
    len(ev)                                # images this rank scores (exact, no padding)
    for images, labels, keys in ev:        # (N,3,224,224) or (N,10,3,224,224); keys: sample names
    ev.close()                             # every complete pass reuses one pipeline; this frees it

Training (section 4.1): a 224x224 patch at an integer offset drawn uniformly
from the 33x33 positions of the 256x256 image, a horizontal flip with p=0.5,
PCA lighting, then normalisation. Test: the centre 224 patch, or the ten views
in this order: top-left, top-right, bottom-left, bottom-right, centre, then the
same five flipped horizontally; no augmentation but normalisation.

PCA lighting adds V diag(l) alpha to every pixel, alpha ~ N(0, lighting_std)
per image per presentation (V: eigenvectors as columns, from results/pca):
- "paper" (default): l = eigval/255 in 0-255 units, i.e. the paper's
  [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with the eigenvalues of pixels in [0, 1],
  which is what fb.resnet.torch's widely copied constants are (eigval
  [0.2175, 0.0188, 0.0045]; datasets/imagenet.lua, transforms.lua Lighting).
- "sqrt": l = sqrt(eigval) on 0-255 pixels, as Krizhevsky's cuda-convnet2
  (convdata.py: color noise = randn * sqrt-eigenvalue stdevs, times 0.1).
  Larger by 255/sqrt(eigval_i): on ImageNet 2.1x along the first component,
  7x and 15x along the weaker two.
- "none".
Normalisation: "mean_image" (paper, section 2: subtract the training mean
image; crop and flip act on image - mean_image) or "channel" ((x - mean)/std
per channel with the PCA stage's statistics).

Reproducible: epoch e is read by a pipeline built afresh from (seed, e,
shard_id): the shard files are visited in an order drawn from (seed, e), the
reader's shard rotates with e (so ranks see different data each epoch), and
the crop/flip/lighting draws and the shuffle buffer (initial_fill samples)
are seeded from (seed, e, shard_id). A run restarted at epoch e yields the
same batches as one that never stopped.

Evidence (tests/test_augment.py; bench/RESULTS-augment.md): crop offsets read
back from position-encoding images cover 0..32 on both axes, uniform by a
chi-square test over 960 crops, flips within 4 sd of half; lighting offsets
have covariance V diag((0.1 l)^2) V^T within 4 standard errors over 1024
draws, in both modes; normalisation equals numpy on the same decoded pixels
(bit for bit for the mean image); the ten views equal numpy crops and flips;
23 validation images at batch 5 are each scored once on 1, 2 and 3 ranks.
Speed: 25-30 k training images/s on one H200 at batch 256, bound by JPEG
decoding; on 2 CPU cores 2.5x a PIL + numpy DataLoader (3.0x per CPU-second).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import dali_pipes
from pipeline.dali_pipes import IMAGE, READER, TEN_CROP_NAMES  # noqa: F401 (re-exported)
from pipeline.io import read_json, write_json

LIGHTING = ("paper", "sqrt", "none")
NORMALIZE = ("mean_image", "channel")
VIEWS = ("center", "ten")


class AugmentError(ValueError):
    """Bad input to the augmentation stage: names the file or value and what to do."""


@dataclass(frozen=True)
class AugmentSettings:
    lighting: str = "paper"         # paper | sqrt | none (see the module docstring)
    lighting_std: float = 0.1       # paper, section 4.1: alpha ~ N(0, 0.1)
    normalize: str = "mean_image"   # mean_image (paper, section 2) | channel

    def __post_init__(self):
        if self.lighting not in LIGHTING:
            raise AugmentError(f"lighting={self.lighting!r}: expected one of {LIGHTING}")
        if self.normalize not in NORMALIZE:
            raise AugmentError(f"normalize={self.normalize!r}: expected one of {NORMALIZE}")
        if not (math.isfinite(self.lighting_std) and self.lighting_std >= 0):
            raise AugmentError(f"lighting_std={self.lighting_std!r}: expected a number >= 0")


@dataclass
class PCA:
    """The PCA stage's output, 0-255 scale: eigvec[:, i] belongs to eigval[i]."""
    eigval: np.ndarray              # (3,), descending
    eigvec: np.ndarray              # (3, 3), eigenvectors as columns
    mean: np.ndarray                # (3,)
    std: np.ndarray                 # (3,)
    mean_image: np.ndarray | None   # (256, 256, 3) float32


def load_pca(pca_json, mean_image_npy=None) -> PCA:
    """Read results/pca/pca.json (and mean_image.npy), checking shapes and values."""
    try:
        d = read_json(pca_json)
    except (OSError, json.JSONDecodeError) as exc:
        raise AugmentError(f"{pca_json}: cannot read the PCA statistics ({exc}); rerun the pca stage") from exc
    return as_pca(d, mean_image_npy, source=str(pca_json))


def as_pca(d, mean_image=None, source="pca") -> PCA:
    """A PCA from a dict (pca.json's keys) or a PCA; mean_image: array or .npy path."""
    if isinstance(d, PCA):
        return d
    want = {"eigval": (3,), "eigvec": (3, 3), "mean": (3,), "std": (3,)}
    arrays = {}
    for key, shape in want.items():
        try:
            a = np.asarray(d[key], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise AugmentError(f"{source}: key {key!r} missing or not numeric ({exc}); rerun the pca stage") from exc
        if a.shape != shape or not np.all(np.isfinite(a)):
            raise AugmentError(f"{source}: {key} has shape {a.shape}, expected finite values of shape {shape}")
        arrays[key] = a
    if np.any(arrays["eigval"] < 0) or np.any(arrays["std"] <= 0):
        raise AugmentError(f"{source}: eigval must be >= 0 and std > 0 (got {arrays['eigval']}, {arrays['std']})")
    if mean_image is not None and not isinstance(mean_image, np.ndarray):
        try:
            mean_image = np.load(mean_image)
        except (OSError, ValueError) as exc:
            raise AugmentError(f"{mean_image}: cannot read the mean image ({exc}); rerun the pca stage") from exc
    if mean_image is not None and mean_image.shape != (IMAGE, IMAGE, 3):
        raise AugmentError(f"mean image has shape {mean_image.shape}, expected ({IMAGE}, {IMAGE}, 3)")
    return PCA(mean_image=None if mean_image is None else mean_image.astype(np.float32), **arrays)


def lighting_matrix_for(settings: AugmentSettings, pca: PCA) -> np.ndarray:
    """M with lighting offset = M @ alpha (0-255 units); zeros for lighting='none'."""
    if settings.lighting == "none":
        return np.zeros((3, 3))
    return dali_pipes.lighting_matrix(settings.lighting, pca.eigval, pca.eigvec)


# ---------------------------------------------------------------- shards and ranks

def index_path(shard) -> Path:
    return Path(shard).with_suffix(".idx")


def read_index(shard, names=False):
    """Sample count of a shard from its DALI index header; with names, the sample keys too."""
    idx = index_path(shard)
    try:
        lines = idx.read_text().splitlines()
        version, count = lines[0].split()[:2]
        count = int(count)
    except (OSError, IndexError, ValueError) as exc:
        raise AugmentError(f"{idx}: missing or not a DALI wds2idx index ({exc}); rerun the resize stage") from exc
    if len(lines) - 1 != count:
        raise AugmentError(f"{idx}: header says {count} samples, found {len(lines) - 1} lines; rerun the resize stage")
    if not names:
        return count
    if version != "v1.2":  # older indexes carry no member names: number the samples
        return [f"{Path(shard).stem}:{i}" for i in range(count)]
    return [line.split()[3].split(".", 1)[0] for line in lines[1:]]


def shard_range(total: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """Samples [start, end) of reader shard shard_id (DALI's split of the concatenated shards)."""
    return total * shard_id // num_shards, total * (shard_id + 1) // num_shards


def torch_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AugmentError(f"device={device}: expected cpu or cuda:N ({exc})") from exc
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise AugmentError(f"device={device}: expected cpu or cuda:N")
    return device


def epoch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class _Loader:
    def __init__(self, shards, pca, batch_size, settings, device, shard_id, num_shards, threads):
        self.shards = [str(s) for s in shards]
        if not self.shards:
            raise AugmentError("no shards given; check the manifest's shard list")
        for s in self.shards:
            if not Path(s).exists():
                raise AugmentError(f"{s}: shard does not exist; rerun the resize stage")
        if batch_size < 1 or not 0 <= shard_id < num_shards or threads < 1:
            raise AugmentError(f"batch_size={batch_size}, shard_id={shard_id}, num_shards={num_shards}, "
                               f"threads={threads}: expected batch >= 1, 0 <= shard_id < num_shards, threads >= 1")
        self.pca = as_pca(pca)
        self.settings = settings or AugmentSettings()
        if self.settings.normalize == "mean_image" and self.pca.mean_image is None:
            raise AugmentError("normalize='mean_image' needs the mean image: pass load_pca(pca_json, mean_image_npy)")
        self.batch_size, self.shard_id, self.num_shards, self.threads = batch_size, shard_id, num_shards, threads
        self.device = torch_device(device)
        self.gpu = self.device.type == "cuda"
        self.counts = [read_index(s) for s in self.shards]
        self.total = sum(self.counts)

    def _pipe_args(self):
        return dict(num_threads=self.threads, device_id=self.device.index if self.gpu else None)

    @staticmethod
    def _iterator(pipe, policy):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        return DALIGenericIterator([pipe], ["images", "labels"], reader_name=READER, auto_reset=False,
                                   last_batch_policy=getattr(LastBatchPolicy, policy))

    @staticmethod
    def _batches(it, limit=None):
        for i, batch in enumerate(it):
            if limit is not None and i >= limit:
                break
            b = batch[0]
            yield b["images"], b["labels"].view(-1).long()


class TrainLoader(_Loader):
    """Training batches, rebuilt per epoch so that epoch e depends only on (seed, e, shard_id)."""

    def __init__(self, shards, pca, batch_size, settings=None, device="cpu", seed=0, shard_id=0,
                 num_shards=1, threads=2, initial_fill=1024):
        super().__init__(shards, pca, batch_size, settings, device, shard_id, num_shards, threads)
        self.seed, self.initial_fill = seed, initial_fill
        # every rank takes the same number of steps: the smallest reader shard decides
        smallest = min(b - a for a, b in (shard_range(self.total, r, num_shards) for r in range(num_shards)))
        self._len = smallest // batch_size

    def __len__(self) -> int:
        return self._len

    def pipeline(self, epoch: int, batch_size=None, expose=False):
        """The DALI pipeline of `epoch` (built); expose adds the draws (see dali_pipes.train_pipe)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))  # same on all ranks
        shards = [self.shards[i] for i in order]
        pipe = dali_pipes.train_pipe(
            shards=shards, index_paths=[str(index_path(s)) for s in shards],
            reader_shard=(self.shard_id + epoch) % self.num_shards, num_shards=self.num_shards,
            initial_fill=self.initial_fill, settings=self.settings, pca=self.pca, gpu=self.gpu, expose=expose,
            batch_size=batch_size or self.batch_size, seed=epoch_seed(self.seed, epoch, self.shard_id),
            **self._pipe_args())
        pipe.build()
        return pipe

    def epoch(self, epoch: int):
        """Yield len(self) batches (images, labels) of epoch `epoch`; the partial last batch is dropped."""
        if self._len == 0:
            return
        yield from self._batches(self._iterator(self.pipeline(epoch), "DROP"), limit=self._len)


class EvalLoader(_Loader):
    """Each validation image exactly once over all ranks, in index order within a rank."""

    def __init__(self, shards, pca, batch_size, views="center", settings=None, device="cpu",
                 shard_id=0, num_shards=1, threads=2):
        super().__init__(shards, pca, batch_size, settings, device, shard_id, num_shards, threads)
        if views not in VIEWS:
            raise AugmentError(f"views={views!r}: expected one of {VIEWS}")
        self.views = views
        self.start, self.end = shard_range(self.total, shard_id, num_shards)
        self._keys = None
        # The iterator of the last complete pass, reset for the next one: the
        # reader (no shuffle, stick_to_shard, pad_last_batch) yields the same
        # images in the same order every pass, and building a pipeline costs
        # about 2 s on a GPU (decoder set-up), paid once instead of per epoch.
        self._kept = None

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            names = [k for s in self.shards for k in read_index(s, names=True)]
            self._keys = names[self.start:self.end]
        return self._keys

    def pipeline(self):
        pipe = dali_pipes.eval_pipe(
            shards=self.shards, index_paths=[str(index_path(s)) for s in self.shards],
            shard_id=self.shard_id, num_shards=self.num_shards, views=self.views, settings=self.settings,
            pca=self.pca, gpu=self.gpu, batch_size=self.batch_size, seed=0, **self._pipe_args())
        pipe.build()
        return pipe

    def __iter__(self):
        if len(self) == 0:
            return
        # taken, not shared: a pass cut short (or a second pass running at the
        # same time) leaves nothing half-read behind for the next one
        it, self._kept = self._kept or self._iterator(self.pipeline(), "PARTIAL"), None
        keys, seen = self.keys, 0
        for images, labels in self._batches(it):
            n = len(labels)
            yield images, labels, keys[seen:seen + n]
            seen += n
        if seen != len(self):
            raise RuntimeError(f"evaluation pipeline yielded {seen} images, expected {len(self)}")
        it.reset()
        self._kept = it

    def close(self) -> None:
        """Drop the pipeline kept for the next pass (it holds decoder and batch memory)."""
        self._kept = None


# ---------------------------------------------------------------- the stage

def manifest_shards(manifest, split: str) -> list[str]:
    """The split's shard tars listed in the resize stage's manifest (docs/formats.md).

    manifest[split]["shards"] is a list of {"tar": path, ...} (or plain paths),
    each relative to the manifest's folder or absolute. The training, augment
    and evaluate stages all read their shards through this.
    """
    manifest = Path(manifest)
    try:
        entries = read_json(manifest)[split]["shards"]
        names = [e if isinstance(e, str) else e["tar"] for e in entries]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise AugmentError(f"{manifest}: no shard list for split {split!r} ({exc!r}); "
                           "rerun the resize stage") from exc
    paths = []
    for name in names:
        path = manifest.parent / name  # an absolute name stays as it is
        if not path.exists():
            raise AugmentError(f"{manifest}: shard {path} listed for {split} does not exist; rerun the resize stage")
        paths.append(str(path))
    if not paths:
        raise AugmentError(f"{manifest}: the {split} split has no shards")
    return paths


def rate(batches, count, warmup=1, sync=False):
    """(seconds to the first batch, images/s over the next `count` batches)."""
    t0 = time.perf_counter()
    n, first, t1 = 0, None, None
    for i, batch in enumerate(batches):
        if sync:
            torch.cuda.synchronize()
        if i + 1 == warmup:
            first = t1 = time.perf_counter()
            first -= t0
        elif i + 1 > warmup:
            n += len(batch[1])
            if i + 1 == warmup + count:
                break
    if sync:
        torch.cuda.synchronize()
    return first, (n / (time.perf_counter() - t1) if n else float("nan"))


def cycle_epochs(loader: TrainLoader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


def cycle_eval(loader: EvalLoader):
    while True:
        yield from loader


def as_numpy(tensor_list) -> np.ndarray:
    if hasattr(tensor_list, "as_cpu"):
        tensor_list = tensor_list.as_cpu()
    return np.array(tensor_list.as_tensor())


def save_grid(train: TrainLoader, samples: int, png) -> None:
    """Originals with the crop box drawn, beside the augmented patch with normalisation undone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from pipeline.io import atomic_path

    pipe = train.pipeline(0, batch_size=samples, expose=True)
    images, labels, decoded, pos_x, pos_y, mirror, offset = (as_numpy(t) for t in pipe.run())
    del pipe
    s, pca = train.settings, train.pca
    cols = 2 if samples > 1 else 1
    rows = -(-samples // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.4 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(samples):
        ox, oy = round(float(pos_x[i]) * dali_pipes.SPAN), round(float(pos_y[i]) * dali_pipes.SPAN)
        flip = bool(mirror[i])
        patch = images[i].transpose(1, 2, 0)
        if s.normalize == "mean_image":
            m = pca.mean_image[oy:oy + dali_pipes.CROP, ox:ox + dali_pipes.CROP]
            patch = patch + (m[:, ::-1] if flip else m)
        else:
            patch = patch * pca.std + pca.mean
        a, b = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        a.imshow(decoded[i])
        a.add_patch(Rectangle((ox - 0.5, oy - 0.5), dali_pipes.CROP, dali_pipes.CROP, fill=False, ec="yellow", lw=1.5))
        a.set_title(f"class {int(labels[i, 0])}: crop at x={ox} y={oy}", fontsize=7)
        b.imshow(np.clip(np.rint(patch), 0, 255).astype(np.uint8))
        light = ", ".join(f"{v:+.1f}" for v in offset[i].ravel())
        b.set_title(f"{'flipped, ' if flip else ''}lighting RGB ({light})", fontsize=7)
    fig.suptitle(f"training augmentation: lighting={s.lighting} (std {s.lighting_std}), normalize={s.normalize}",
                 fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def augment(manifest, pca_json, mean_image, out_dir, settings: AugmentSettings | None = None,
            batch_size=128, threads=2, device="auto", grid_samples=8, bench_batches=5, seed=0) -> dict:
    """The stage: grid.png of augmented training samples and augment.json with throughput."""
    settings = settings or AugmentSettings()
    device = ("cuda:0" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    pca = load_pca(pca_json, mean_image)
    train = TrainLoader(manifest_shards(manifest, "train"), pca, batch_size, settings, device, seed, threads=threads)
    val = manifest_shards(manifest, "val")
    out_dir = Path(out_dir)
    save_grid(train, grid_samples, out_dir / "grid.png")
    if len(train) == 0:
        raise AugmentError(f"{manifest}: {train.total} training images make no batch of {batch_size}; lower train.batch_size")
    sync = train.gpu
    train_first, train_rate = rate(cycle_epochs(train), bench_batches, sync=sync)
    result = {"device": str(train.device), "threads": threads, "batch_size": batch_size,
              "train_images": train.total, "train_batches_per_epoch": len(train),
              **dataclasses.asdict(settings),
              "train_images_per_s": train_rate, "train_first_batch_s": train_first}
    for views in VIEWS:
        ev = EvalLoader(val, pca, batch_size, views, settings, device, threads=threads)
        first, r = rate(cycle_eval(ev), bench_batches, sync=sync)
        result.update({"val_images": len(ev), f"eval_{views}_images_per_s": r, f"eval_{views}_first_batch_s": first})
    write_json(out_dir / "augment.json", result)
    print(f"augment: train {train_rate:.0f} img/s, centre {result['eval_center_images_per_s']:.0f} img/s, "
          f"ten-crop {result['eval_ten_images_per_s']:.0f} img/s on {device} ({threads} threads, batch {batch_size}); "
          f"grid of {grid_samples} samples in {out_dir / 'grid.png'}", file=sys.stderr)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, help="results/shards/manifest.json")
    p.add_argument("--pca", required=True, help="results/pca/pca.json")
    p.add_argument("--mean-image", required=True, help="results/pca/mean_image.npy")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--lighting", default="paper", choices=LIGHTING)
    p.add_argument("--lighting-std", type=float, default=0.1)
    p.add_argument("--normalize", default="mean_image", choices=NORMALIZE)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda:0 if available, else cpu) | cpu | cuda:N")
    p.add_argument("--grid-samples", type=int, default=8)
    p.add_argument("--bench-batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        settings = AugmentSettings(a.lighting, a.lighting_std, a.normalize)
        augment(a.manifest, a.pca, a.mean_image, a.out_dir, settings, a.batch_size, a.threads, a.device,
                a.grid_samples, a.bench_batches, a.seed)
    except AugmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
