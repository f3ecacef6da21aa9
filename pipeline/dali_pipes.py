"""DALI graphs for AlexNet's inputs: the training augmentation and the test views.

Used by pipeline/loaders.py (TrainLoader, EvalLoader), which documents the
public API; this module only builds graphs. The CPU and GPU graphs differ in
two device strings: the decoder ("cpu" or "mixed") and the mean-image
constant ("cpu" or "gpu"); every later image operator follows its input onto
the GPU. Per-sample arguments (crop position, mirror, lighting) are drawn by
CPU operators, as DALI requires of argument inputs.

Facts the graphs rely on, each checked in tests/test_augment.py:
- crop_mirror_normalize puts the window at round(pos * (W - crop)) (argument
  `rounding`, default "round"). With pos = k/32 the product is exactly k in
  float32, so drawing pos from {0/32, ..., 32/32} with fn.random.uniform's
  `values` makes all 33 integer offsets equally likely under round or truncate.
  (A continuous pos in [0, 1] would give offsets 0 and 32 half the weight.)
- The webdataset reader's shard r of n holds samples
  [total*r//n, total*(r+1)//n) in index order (DALI's start_index), and its
  shuffle buffer never mixes two epochs: the first shard-size samples of a
  freshly built reader are a permutation of its shard.
- `.cls` holds 6 ASCII digits; coord_transform with M = [1e5 ... 1] and
  T = -48 * 111111 turns the bytes into the class index on the pipeline
  (exact in float32: every partial sum is below 2**24).
"""

from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from model.alexnet import INPUT_SIZE
from pipeline.shards import CLS_WIDTH, IMAGE_SIZE

READER = "Reader"  # the reader's name, for the iterators' reader_name
IMAGE = IMAGE_SIZE  # paper, section 2: images are 256x256 (the shard format)
CROP = INPUT_SIZE  # paper, section 4.1: 224x224 patches (the network's input)
SPAN = IMAGE - CROP  # 32: offsets 0..32, 33 positions per axis
CROP_POS = [k / SPAN for k in range(SPAN + 1)]

# paper, section 4.1 (test): four corners and centre, then their reflections.
# (crop_pos_x, crop_pos_y, mirror); pos 0 -> offset 0, 1 -> 32, 0.5 -> 16.
TEN_CROP = [
    (0.0, 0.0, 0),
    (1.0, 0.0, 0),
    (0.0, 1.0, 0),
    (1.0, 1.0, 0),
    (0.5, 0.5, 0),
    (0.0, 0.0, 1),
    (1.0, 0.0, 1),
    (0.0, 1.0, 1),
    (1.0, 1.0, 1),
    (0.5, 0.5, 1),
]
TEN_CROP_NAMES = [
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "centre",
    "top-left flipped",
    "top-right flipped",
    "bottom-left flipped",
    "bottom-right flipped",
    "centre flipped",
]
CENTER = [(0.5, 0.5, 0)]


def lighting_matrix(lighting: str, eigval, eigvec) -> np.ndarray:
    """M with offset = M @ alpha (0-255 units); eigval/eigvec on the 0-255 scale.

    paper: 255 * V (alpha * eigval / 255**2) = V diag(eigval / 255) alpha: the
      paper's formula with the eigenvalues of pixels in [0, 1] (fb.resnet.torch).
    sqrt: V diag(sqrt(eigval)) alpha on 0-255 pixels (cuda-convnet2 convdata.py); train_pipe
      also scales that mode's training images by 1 / (1 + lighting_std), as convdata.py does.
    """
    eigval = np.asarray(eigval, np.float64)
    if lighting == "paper":
        scale = eigval / 255.0
    elif lighting == "sqrt":
        scale = np.sqrt(eigval)
    else:
        raise ValueError(f"no lighting matrix for lighting={lighting!r}")
    return np.asarray(eigvec, np.float64) * scale[None, :]


def read(shards, index_paths, shard_id, num_shards, shuffle, initial_fill=1024, pad=False, stick=False):
    return fn.readers.webdataset(
        paths=list(shards),
        index_paths=list(index_paths),
        ext=["jpg", "cls"],
        name=READER,
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=shuffle,
        initial_fill=initial_fill,
        pad_last_batch=pad,
        stick_to_shard=stick,
    )


def parse_label(cls):
    """Six ASCII digits (uint8) -> int32 label of shape (1,)."""
    digits = fn.reshape(cls, shape=[1, CLS_WIDTH])
    weights = [10.0 ** (CLS_WIDTH - 1 - i) for i in range(CLS_WIDTH)]
    value = fn.coord_transform(digits, M=weights, T=[-48.0 * sum(weights)], dtype=types.FLOAT)
    return fn.reshape(fn.cast(value, dtype=types.INT32), shape=[1])


def decode_and_center(jpegs, normalize, pca, gpu):
    """Decoded RGB image ready for crop_mirror_normalize, and its (mean, std).

    mean_image (paper, section 2): subtract the 256x256 training mean image
    before the crop, so crop and flip act on image - mean_image; then the
    per-channel mean is 0 and std 1. channel: (x - mean) / std per channel,
    fused into crop_mirror_normalize on the uint8 image.
    """
    image = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    if normalize == "mean_image":
        mean_image = types.Constant(np.ascontiguousarray(pca.mean_image, np.float32), device="gpu" if gpu else "cpu")
        return image, image - mean_image, np.zeros(3), np.ones(3)
    return image, image, np.asarray(pca.mean, np.float64), np.asarray(pca.std, np.float64)


def _cmn(x, pos_x, pos_y, mirror, mean, std):
    mean = mean.tolist() if isinstance(mean, np.ndarray) else mean
    return fn.crop_mirror_normalize(
        x,
        crop=(CROP, CROP),
        crop_pos_x=pos_x,
        crop_pos_y=pos_y,
        mirror=mirror,
        mean=mean,
        std=np.asarray(std).tolist(),
        dtype=types.FLOAT,
        output_layout="CHW",
    )


@pipeline_def
def train_pipe(shards, index_paths, reader_shard, num_shards, initial_fill, settings, pca, gpu, expose=False):
    """Random 224 crop (33x33 offsets), flip p=0.5, PCA lighting, normalisation (section 4.1).

    settings.crops=False: the centre patch (offset 16, 16) every time; settings.flips=False: no
    mirror. Their draws stay graph nodes with a single outcome, so the exposed outputs and the
    GPU path are the same graph either way.

    Outputs: images (3,224,224) float, labels (1,) int32; with expose also the
    decoded 256x256 image, crop_pos_x, crop_pos_y, mirror and the lighting
    offset (1,3), for the augmentation grid and the tests.
    """
    jpegs, cls = read(shards, index_paths, reader_shard, num_shards, shuffle=True, initial_fill=initial_fill)
    decoded, x, mean, std = decode_and_center(jpegs, settings.normalize, pca, gpu)
    positions = CROP_POS if settings.crops else [0.5]  # 0.5 * SPAN = 16: the centre, as the test's view
    pos_x = fn.random.uniform(values=positions)
    pos_y = fn.random.uniform(values=positions)
    mirror = fn.random.coin_flip(probability=0.5 if settings.flips else 0.0)
    offset = None
    if settings.lighting != "none":
        # paper, section 4.1: alpha ~ N(0, 0.1) per image per presentation; the offset
        # is constant over the image, so it rides in the per-sample mean: mean - offset
        alpha = fn.random.normal(shape=[1, 3], stddev=settings.lighting_std)
        m = lighting_matrix(settings.lighting, pca.eigval, pca.eigvec)
        mean = fn.reshape(fn.coord_transform(alpha, M=(-m).ravel().tolist(), T=mean.tolist()), shape=[3])
        if expose:
            offset = fn.coord_transform(alpha, M=m.ravel().tolist())
    if settings.lighting == "sqrt":
        # cuda-convnet2 convdata.py (add_color_noise) then scales the noisy mean-subtracted training
        # image by 1 / (1 + color_noise) "so that the overall scale of the training data doesn't
        # become too different from the test data"; here through the divisor of the normalisation
        std = np.asarray(std, np.float64) * (1.0 + settings.lighting_std)
    images = _cmn(x, pos_x, pos_y, mirror, mean, std)
    labels = parse_label(cls)
    if gpu:
        labels = labels.gpu()
    if not expose:
        return images, labels
    if offset is None:
        offset = fn.constant(fdata=[0.0, 0.0, 0.0], shape=[1, 3])
    return images, labels, decoded, pos_x, pos_y, mirror, offset


@pipeline_def
def eval_pipe(shards, index_paths, shard_id, num_shards, views, settings, pca, gpu):
    """Centre view (3,224,224) or the ten views stacked (10,3,224,224); no augmentation.

    pad_last_batch + stick_to_shard: each rank reads its fixed shard every
    time, and the iterator (reader_name, LastBatchPolicy.PARTIAL) drops the
    padding, so every image is scored exactly once over all ranks.
    """
    jpegs, cls = read(shards, index_paths, shard_id, num_shards, shuffle=False, pad=True, stick=True)
    _, x, mean, std = decode_and_center(jpegs, settings.normalize, pca, gpu)
    crops = [_cmn(x, px, py, m, mean, std) for px, py, m in (CENTER if views == "center" else TEN_CROP)]
    images = crops[0] if len(crops) == 1 else fn.stack(*crops)
    labels = parse_label(cls)
    if gpu:
        labels = labels.gpu()
    return images, labels


@pipeline_def
def decode_pipe(shards, index_paths, gpu):
    """Decode only, in index order: the pixels every other graph starts from."""
    jpegs, cls = read(shards, index_paths, 0, 1, shuffle=False)
    image = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    labels = parse_label(cls)
    return image, (labels.gpu() if gpu else labels)
