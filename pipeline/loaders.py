"""DALI data loaders for training and evaluation (paper, section 4.1), shared by the stages.

    from pipeline.loaders import AugmentSettings, TrainLoader, EvalLoader, manifest_shards
    from pipeline.pca_files import load_pca
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

Importing this module loads DALI (pipeline/dali_pipes.py); modules that must
work without it (checkpoints, metrics, tracking, prediction) do not import it.

Training (section 4.1): a 224x224 patch at an integer offset drawn uniformly
from the 33x33 positions of the 256x256 image, a horizontal flip with p=0.5,
PCA lighting, then normalisation. The ablations of section 4.1: crops=False
takes the centre patch every time, flips=False never mirrors, lighting="none"
adds no lighting. Test: the centre 224 patch, or the ten views
in this order: top-left, top-right, bottom-left, bottom-right, centre, then the
same five flipped horizontally; no augmentation but normalisation.

PCA lighting adds V diag(l) alpha to every pixel, alpha ~ N(0, lighting_std)
per image per presentation (V: eigenvectors as columns, from results/pca):
- "paper" (default): l = eigval/255 in 0-255 units, i.e. the paper's
  [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with the eigenvalues of pixels in [0, 1],
  which is what fb.resnet.torch's widely copied constants are (eigval
  [0.2175, 0.0188, 0.0045]; datasets/imagenet.lua, transforms.lua Lighting).
- "sqrt": l = sqrt(eigval) on 0-255 pixels, and the whole training image
  (mean subtracted, noise added) then scaled by 1 / (1 + lighting_std), as
  Krizhevsky's cuda-convnet2 does (convdata.py, ImageDataProvider.add_color_noise:
  noise = randn(3) * the PCA's sqrt-eigenvalue stdevs, rotated by the
  eigenvectors, times color_noise 0.1, then data *= 1 / (1 + color_noise), so
  that the training data's scale stays close to the test data's).
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

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipeline import dali_pipes
from pipeline.dali_pipes import READER
from pipeline.errors import PipelineError
from pipeline.pca_files import PCA, as_pca
from pipeline.schema import defaults
from pipeline.shards import (
    ManifestError,
    ShardIndexError,
    index_path,
    manifest_entries,
    rebuild_command,
    shard_jpegs,
    shard_sample_count,
    shard_sample_keys,
)

LIGHTING = ("paper", "sqrt", "none")
NORMALIZE = ("mean_image", "channel")
VIEWS = ("center", "ten")
# DALI CPU threads per pipeline where the caller gives none: a runtime knob, not a setting (each
# sample's draws come from the seed, not from the thread that runs it). The train rule sets it per
# job (workflow/rules/common.smk dali_threads); 2 is what a 2-core machine can give.
DALI_THREADS = 2


class LoaderError(PipelineError, ValueError):
    """Bad input to the augmentation stage: names the file or value and what to do."""


AUGMENT = defaults("augment")


@dataclass(frozen=True)
class AugmentSettings:
    """The settings that shape the training's images: pipeline.schema.AUGMENT_SETTINGS, with the
    config schema's defaults."""

    lighting: str = AUGMENT["lighting"]  # paper | sqrt | none (see the module docstring)
    lighting_std: float = AUGMENT["lighting_std"]  # paper, section 4.1: alpha ~ N(0, 0.1)
    normalize: str = AUGMENT["normalize"]  # mean_image (paper, section 2) | channel
    crops: bool = AUGMENT["crops"]  # section 4.1: a random 224 patch of the 256 image | always the centre one
    flips: bool = AUGMENT["flips"]  # section 4.1: mirrored with p=0.5 | never

    def __post_init__(self):
        if self.lighting not in LIGHTING:
            raise LoaderError(f"lighting={self.lighting!r}: expected one of {LIGHTING}")
        if self.normalize not in NORMALIZE:
            raise LoaderError(f"normalize={self.normalize!r}: expected one of {NORMALIZE}")
        if not (math.isfinite(self.lighting_std) and self.lighting_std >= 0):
            raise LoaderError(f"lighting_std={self.lighting_std!r}: expected a number >= 0")
        for name in ("crops", "flips"):
            if not isinstance(getattr(self, name), bool):
                raise LoaderError(f"{name}={getattr(self, name)!r}: expected true or false")


def lighting_matrix_for(settings: AugmentSettings, pca: PCA) -> np.ndarray:
    """M with lighting offset = M @ alpha (0-255 units); zeros for lighting='none'."""
    if settings.lighting == "none":
        return np.zeros((3, 3))
    return dali_pipes.lighting_matrix(settings.lighting, pca.eigval, pca.eigvec)


# ---------------------------------------------------------------- shards and ranks


@contextlib.contextmanager
def shard_index_errors_as_loader_errors():
    """A bad shard index, reported as the loaders' own error (LoaderError)."""
    try:
        yield
    except ShardIndexError as exc:
        raise LoaderError(str(exc)) from exc


def shard_range(total: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """Samples [start, end) of reader shard shard_id (DALI's split of the concatenated shards)."""
    return total * shard_id // num_shards, total * (shard_id + 1) // num_shards


def torch_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LoaderError(f"device={device}: expected cpu or cuda:N ({exc})") from exc
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise LoaderError(f"device={device}: expected cpu or cuda:N")
    return device


def epoch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class _Loader:
    def __init__(self, shards, pca, batch_size, settings, device, shard_id, num_shards, threads):
        self.shards = [str(s) for s in shards]
        if not self.shards:
            raise LoaderError("no shards given; check the manifest's shard list")
        for s in self.shards:
            if not Path(s).exists():
                raise LoaderError(f"{s}: shard does not exist; rerun the resize stage")
        if batch_size < 1 or not 0 <= shard_id < num_shards or threads < 1:
            raise LoaderError(
                f"batch_size={batch_size}, shard_id={shard_id}, num_shards={num_shards}, "
                f"threads={threads}: expected batch >= 1, 0 <= shard_id < num_shards, threads >= 1"
            )
        self.pca = as_pca(pca)
        self.settings = settings or AugmentSettings()
        if self.settings.normalize == "mean_image" and self.pca.mean_image is None:
            raise LoaderError("normalize='mean_image' needs the mean image: pass load_pca(pca_json, mean_image_npy)")
        self.batch_size, self.shard_id, self.num_shards, self.threads = batch_size, shard_id, num_shards, threads
        self.device = torch_device(device)
        self.gpu = self.device.type == "cuda"
        with shard_index_errors_as_loader_errors():
            self.counts = [shard_sample_count(s) for s in self.shards]
        self.total = sum(self.counts)

    def _pipe_args(self):
        return dict(num_threads=self.threads, device_id=self.device.index if self.gpu else None)

    @staticmethod
    def _iterator(pipe, policy):
        return DALIGenericIterator(
            [pipe],
            ["images", "labels"],
            reader_name=READER,
            auto_reset=False,
            last_batch_policy=getattr(LastBatchPolicy, policy),
        )

    def _batches(self, make_iterator, window, limit=None):
        """The batches of make_iterator(); a DALI error (RuntimeError from building or running the
        pipeline) becomes a LoaderError naming the shard and the sample, found by `window(i)`: the
        samples (positions in `shards` order, and that order) that batch i can hold."""
        i = 0
        try:
            it = make_iterator()
            for i, batch in enumerate(it):
                if limit is not None and i >= limit:
                    break
                b = batch[0]
                yield b["images"], b["labels"].view(-1).long()
        except RuntimeError as exc:
            raise LoaderError(read_failure(exc, *window(i))) from exc


class TrainLoader(_Loader):
    """Training batches, rebuilt per epoch so that epoch e depends only on (seed, e, shard_id)."""

    def __init__(
        self,
        shards,
        pca,
        batch_size,
        settings=None,
        device="cpu",
        seed=0,
        shard_id=0,
        num_shards=1,
        threads=DALI_THREADS,
        initial_fill=1024,
    ):
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
            shards=shards,
            index_paths=[str(index_path(s)) for s in shards],
            reader_shard=(self.shard_id + epoch) % self.num_shards,
            num_shards=self.num_shards,
            initial_fill=self.initial_fill,
            settings=self.settings,
            pca=self.pca,
            gpu=self.gpu,
            expose=expose,
            batch_size=batch_size or self.batch_size,
            seed=epoch_seed(self.seed, epoch, self.shard_id),
            **self._pipe_args(),
        )
        pipe.build()
        return pipe

    def epoch(self, epoch: int):
        """Yield len(self) batches (images, labels) of epoch `epoch`; the partial last batch is dropped."""
        if self._len == 0:
            return
        order = [self.shards[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))]
        start, end = shard_range(self.total, (self.shard_id + epoch) % self.num_shards, self.num_shards)

        def window(i):  # samples read by batch i: the shuffle buffer's fill, then a batch each, a few ahead
            read = min(end, start + self.initial_fill + (i + 1 + DALI_AHEAD) * self.batch_size)
            return order, range(
                read - 1, max(start, read - 2 * self.initial_fill - DALI_AHEAD * self.batch_size) - 1, -1
            )

        yield from self._batches(lambda: self._iterator(self.pipeline(epoch), "DROP"), window, limit=self._len)


class EvalLoader(_Loader):
    """Each validation image exactly once over all ranks, in index order within a rank."""

    def __init__(
        self,
        shards,
        pca,
        batch_size,
        views="center",
        settings=None,
        device="cpu",
        shard_id=0,
        num_shards=1,
        threads=DALI_THREADS,
    ):
        super().__init__(shards, pca, batch_size, settings, device, shard_id, num_shards, threads)
        if views not in VIEWS:
            raise LoaderError(f"views={views!r}: expected one of {VIEWS}")
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
            with shard_index_errors_as_loader_errors():
                names = [k for s in self.shards for k in shard_sample_keys(s)]
            self._keys = names[self.start : self.end]
        return self._keys

    def pipeline(self):
        pipe = dali_pipes.eval_pipe(
            shards=self.shards,
            index_paths=[str(index_path(s)) for s in self.shards],
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            views=self.views,
            settings=self.settings,
            pca=self.pca,
            gpu=self.gpu,
            batch_size=self.batch_size,
            seed=0,
            **self._pipe_args(),
        )
        pipe.build()
        return pipe

    def __iter__(self):
        if len(self) == 0:
            return
        # taken, not shared: a pass cut short (or a second pass running at the
        # same time) leaves nothing half-read behind for the next one
        it, self._kept = self._kept, None
        keys, seen = self.keys, 0
        b = self.batch_size

        def window(i):  # in index order: batch i and the few DALI had read ahead
            return self.shards, range(self.start + i * b, min(self.end, self.start + (i + 1 + DALI_AHEAD) * b))

        def iterator():
            nonlocal it
            it = it or self._iterator(self.pipeline(), "PARTIAL")
            return it

        for images, labels in self._batches(iterator, window):
            n = len(labels)
            yield images, labels, keys[seen : seen + n]
            seen += n
        if seen != len(self):
            raise RuntimeError(f"evaluation pipeline yielded {seen} images, expected {len(self)}")
        it.reset()
        self._kept = it

    def close(self) -> None:
        """Drop the pipeline kept for the next pass (it holds decoder and batch memory)."""
        self._kept = None


# ---------------------------------------------------------------- DALI errors, named

DALI_AHEAD = 3  # batches a pipeline may have read past the one the iterator hands out (its prefetch queues)
DALI_NOISE = ("Critical error", "Current pipeline object", "Error in ", "which was used", "File ")


def _dali_cause(exc: BaseException) -> str:
    """The line of a DALI error that says what failed (after its `encountered:`), without the
    pipeline-definition traceback and the repeated banners."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.endswith("encountered:"):
            return lines[i + 1]
    kept = [line for line in lines if not line.startswith(DALI_NOISE)]
    return kept[0] if kept else (lines[0] if lines else type(exc).__name__)


def _undecodable(shard: str, samples) -> list[tuple[str, str]]:
    """(key, reason) of the samples (key, offset, size) of `shard` whose .jpg PIL cannot decode."""
    from PIL import Image

    bad = []
    with open(shard, "rb") as f:
        for key, offset, size in samples:
            f.seek(offset)
            data = f.read(size)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                if len(data) != size:
                    raise OSError(f"cut short: {len(data)} of {size} bytes")
            except Exception as exc:  # any failure of the decoder names the sample
                bad.append((key, f"{type(exc).__name__}: {exc}"))
    return bad


def read_failure(exc: BaseException, shards: list[str], positions) -> str:
    """The message for a DALI error: the shards the reader was on and, where PIL cannot decode one
    of the samples the failed batch could hold, that sample's key.

    `positions`: indices into the samples of `shards` (concatenated in that order), most likely first.
    DALI's error names neither (its webdataset reader attaches the sample's source only to outputs,
    which a failed batch never yields), so the candidates are decoded again here: a few batches'
    worth, on this error path only.
    """
    cause = _dali_cause(exc)
    try:
        with shard_index_errors_as_loader_errors():
            samples = [(s, *sample) for s in shards for sample in shard_jpegs(s)]
        picked = [samples[p] for p in positions if 0 <= p < len(samples)]
    except (LoaderError, OSError) as err:
        return f"DALI failed reading {', '.join(shards)} ({cause}); the sample could not be located: {err}"
    on = sorted({s for s, *_ in picked}, key=shards.index)
    by_shard: dict[str, list] = {}
    for s, key, offset, size in picked:
        by_shard.setdefault(s, []).append((key, offset, size))
    bad = []
    try:
        bad = [(s, key, why) for s in on for key, why in _undecodable(s, by_shard[s])]
    except OSError as err:
        cause += f"; reading {err.filename}: {err.strerror}"
    if bad:
        named = "; ".join(f"shard {s}, sample {key} ({why})" for s, key, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        fix = ""
        splits = {Path(s).name.split("-", 1)[0] for s, *_ in bad}
        if len(splits) == 1 and (split := splits.pop()) in ("train", "val", "holdout"):
            fix = f" Rebuild it: {rebuild_command(split, sorted({s for s, *_ in bad}))}"
        return f"DALI failed to decode a batch ({cause}): {named}{more} cannot be decoded.{fix}"
    return (
        f"DALI failed ({cause}) while reading shard {', '.join(on or shards)}; every image of the "
        f"{len(picked)} samples the failed batch could hold decodes outside DALI, so the sample cannot be named. "
        "Check the shard against the manifest (its sha256) and rebuild it with the resize stage."
    )


# ---------------------------------------------------------------- the stage


def manifest_shards(manifest, split: str) -> list[str]:
    """The split's shard tars listed in the resize stage's manifest (docs/formats.md).

    manifest[split]["shards"] is a list of {"tar": path, ...} (or plain paths),
    each relative to the manifest's folder or absolute. The training, augment
    and evaluate stages all read their shards through this.
    """
    manifest = Path(manifest)
    try:
        names = [e["tar"] for e in manifest_entries(manifest, split)]
    except ManifestError as exc:
        raise LoaderError(str(exc)) from exc
    paths = []
    for path in names:
        if not path.exists():
            raise LoaderError(f"{manifest}: shard {path} listed for {split} does not exist; rerun the resize stage")
        paths.append(str(path))
    if not paths:
        raise LoaderError(f"{manifest}: the {split} split has no shards")
    return paths


def as_numpy(tensor_list) -> np.ndarray:
    """A DALI TensorList (CPU or GPU) as one numpy array."""
    if hasattr(tensor_list, "as_cpu"):
        tensor_list = tensor_list.as_cpu()
    return np.array(tensor_list.as_tensor())
