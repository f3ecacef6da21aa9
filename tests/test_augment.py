"""DALI augmentation and test views (pipeline/loaders.py, pipeline/dali_pipes.py, the augment stage), on small shards.

Images encode what the checks need: R = column, G = row (so a crop's offset
and flip can be read back), B = 2 * id + 8 (which image it is); the label is
a function of id. JPEGs are PIL-encoded at quality 95 without chroma
subsampling; the read-back error is below 0.01 levels. Runs on the CPU; the
tests marked by DEVICES also run on cuda:0 where torch sees a GPU.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import dali_pipes
from pipeline.augment import main
from pipeline.loaders import AugmentSettings, EvalLoader, LoaderError, TrainLoader, as_numpy, manifest_shards
from pipeline.pca_files import PCAFileError, as_pca, load_pca
from pipeline.shards import ShardWriter, shard_sample_count

DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
PLAIN = AugmentSettings(lighting="none", normalize="channel")
IDENTITY = {"eigval": [1.0, 1.0, 1.0], "eigvec": np.eye(3), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
J = np.arange(224)


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def position_image(i: int) -> np.ndarray:
    a = np.empty((256, 256, 3), np.uint8)
    a[..., 0] = np.arange(256)[None, :]
    a[..., 1] = np.arange(256)[:, None]
    a[..., 2] = 2 * i + 8
    return a


def write_shards(folder, split, sizes, label, image=position_image):
    paths, i = [], 0
    for k, n in enumerate(sizes):
        path = folder / f"{split}-{k:05d}.tar"
        with ShardWriter(path) as w:
            for _ in range(n):
                w.add(f"img{i:05d}", jpeg(image(i)), label(i))
                i += 1
        paths.append(str(path))
    return paths


def train_label(i):
    return i % 10


def val_label(i):  # uses all six digits of .cls
    return (i * 8191 + 123457) % 1_000_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    return {
        "dir": d,
        "train": write_shards(d, "train", [50, 70], train_label),
        "val": write_shards(d, "val", [10, 13], val_label),
        "grey": write_shards(d, "grey", [128], train_label, image=lambda i: np.full((256, 256, 3), 128, np.uint8)),
        "mean_image": rng.uniform(0, 255, (256, 256, 3)).astype(np.float32),
    }


def read_patch(chw: np.ndarray):
    """(x offset, y offset, flipped, image id) of an un-normalised 224 patch."""
    r, g, b = chw
    flipped = r[:, 0].mean() > r[:, -1].mean()
    ox = np.median(r - (223 - J if flipped else J)[None, :])
    oy = np.median(g - J[:, None])
    ident = (b.mean() - 8) / 2
    assert abs(ox - round(ox)) < 0.05 and abs(oy - round(oy)) < 0.05 and abs(ident - round(ident)) < 0.05
    return int(round(ox)), int(round(oy)), bool(flipped), int(round(ident))


def decoded(shards, device="cpu"):
    """DALI-decoded pixels (N,256,256,3) and labels, in index order, from a decode-only pipeline."""

    total = sum(shard_sample_count(s) for s in shards)
    pipe = dali_pipes.decode_pipe(
        shards=shards,
        index_paths=[s[:-4] + ".idx" for s in shards],
        gpu=device != "cpu",
        batch_size=total,
        num_threads=2,
        device_id=0 if device != "cpu" else None,
    )
    pipe.build()
    images, labels = (as_numpy(t) for t in pipe.run())
    return images, labels.ravel()


# ---------------------------------------------------------------- training augmentation


@pytest.mark.integration
@pytest.mark.parametrize("device", DEVICES)
def test_crops_cover_33_positions_uniformly_flips_half_labels_attached(data, device):
    loader = TrainLoader(data["train"], IDENTITY, 8, PLAIN, device=device, seed=0)
    assert len(loader) == 120 // 8
    xs, ys, flips = [], [], []
    for epoch in range(8):
        for images, labels in loader.epoch(epoch):
            assert images.shape == (8, 3, 224, 224) and images.dtype == torch.float32
            assert labels.shape == (8,) and labels.dtype == torch.int64
            assert images.device.type == labels.device.type == torch.device(device).type
            for chw, label in zip(images.cpu().numpy(), labels.cpu().tolist()):
                ox, oy, flipped, ident = read_patch(chw)
                assert label == train_label(ident)
                xs.append(ox)
                ys.append(oy)
                flips.append(flipped)
    n = len(xs)
    assert n == 8 * 120
    for offsets in (xs, ys):
        counts = np.bincount(offsets, minlength=33)
        assert len(counts) == 33 and min(offsets) == 0 and max(offsets) == 32
        # chi-square, 32 degrees of freedom: 62.5 is the 0.1% critical value
        assert ((counts - n / 33) ** 2 / (n / 33)).sum() < 62.5
    # binomial(960, 0.5): 4 standard deviations
    assert abs(sum(flips) - n / 2) < 4 * np.sqrt(n / 4)


@pytest.mark.integration
def test_crop_pos_maps_to_integer_offset_k(data):
    """The draws (crop_pos in k/32) give offset k exactly: read back from the pixels."""
    loader = TrainLoader(data["train"], IDENTITY, 40, PLAIN, seed=3)

    pipe = loader.pipeline(0, expose=True)
    images, labels, _, pos_x, pos_y, mirror, _ = (as_numpy(t) for t in pipe.run())
    for chw, px, py, m in zip(images, pos_x, pos_y, mirror):
        ox, oy, flipped, _ = read_patch(chw)
        assert (ox, oy, flipped) == (round(float(px) * 32), round(float(py) * 32), bool(m))
        assert float(px) * 32 == ox and float(py) * 32 == oy


@pytest.mark.integration
@pytest.mark.parametrize("lighting", ["paper", "sqrt"])
def test_lighting_offsets_have_the_pca_covariance(data, lighting):
    """offset = V diag(l) alpha, alpha ~ N(0, 0.1): z = diag(l)^-1 V^T offset / 0.1 must be N(0, I).

    n = 1024 offsets; tolerances are 4 standard errors: |mean| < 4/sqrt(n),
    |var - 1| < 4 sqrt(2/n), |correlation| < 4/sqrt(n). The wrong mode would
    put the first variance at (255/sqrt(4000))^2 = 16 or its inverse. The sqrt mode's
    training image is (pixel + offset) / (1 + 0.1), as cuda-convnet2 scales it: without
    that factor the offsets read back would be off by the grey level's 10% (about 12).
    """
    rng = np.random.default_rng(1)
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval = np.array([4000.0, 400.0, 40.0])
    pca = dict(IDENTITY, eigval=eigval, eigvec=v)
    scale = eigval / 255 if lighting == "paper" else np.sqrt(eigval)
    rescale = 1.0 if lighting == "paper" else 1.1
    grey = decoded(data["grey"])[0][0, 0, 0].astype(np.float32)
    loader = TrainLoader(data["grey"], pca, 32, AugmentSettings(lighting, 0.1, "channel"), seed=0)
    offsets = []
    for epoch in range(8):
        for images, _ in loader.epoch(epoch):
            flat = images.numpy().reshape(len(images), 3, -1)
            assert np.ptp(flat, axis=2).max() < 1e-3  # constant over the image
            offsets.append(flat.mean(axis=2) * rescale - grey)
    offsets = np.concatenate(offsets)
    n = len(offsets)
    assert n == 1024
    z = offsets @ v / (0.1 * scale)
    assert np.all(np.abs(z.mean(0)) < 4 / np.sqrt(n))
    assert np.all(np.abs(z.var(0) - 1) < 4 * np.sqrt(2 / n))
    corr = np.corrcoef(z.T)
    assert np.all(np.abs(corr[np.triu_indices(3, 1)]) < 4 / np.sqrt(n))
    # and the covariance itself, V diag((0.1 l)^2) V^T, to the same relative tolerance
    expected = v @ np.diag((0.1 * scale) ** 2) @ v.T
    assert np.allclose(np.cov(offsets.T), expected, atol=4 * np.sqrt(2 / n) * (0.1 * scale[0]) ** 2)


@pytest.mark.integration
@pytest.mark.parametrize("normalize", ["mean_image", "channel"])
def test_normalisation_is_exact_against_numpy(data, normalize):
    pca = as_pca(
        {"eigval": [1, 1, 1], "eigvec": np.eye(3), "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},
        data["mean_image"],
    )
    loader = TrainLoader(data["train"], pca, 16, AugmentSettings("none", 0.1, normalize), seed=5)

    pipe = loader.pipeline(0, expose=True)
    images, _, raw, pos_x, pos_y, mirror, _ = (as_numpy(t) for t in pipe.run())
    for out, img, px, py, m in zip(images, raw, pos_x, pos_y, mirror):
        ox, oy = round(float(px) * 32), round(float(py) * 32)
        x = img.astype(np.float32)
        if normalize == "mean_image":
            x = x - pca.mean_image
        else:
            x = (x - pca.mean.astype(np.float32)) / pca.std.astype(np.float32)
        want = x[oy : oy + 224, ox : ox + 224][:, :: -1 if m else 1].transpose(2, 0, 1)
        if normalize == "mean_image":
            np.testing.assert_array_equal(out, want)
        else:  # DALI multiplies by 1/std: within a float32 rounding
            np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)


# ---------------------------------------------------------------- reproducibility


def first_batches(loader, epoch, n=2):
    out = []
    for i, (images, labels) in enumerate(loader.epoch(epoch)):
        if i == n:
            break
        out.append((images.clone(), labels.clone()))
    return out


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(l, m) for (x, l), (y, m) in zip(a, b))


@pytest.mark.integration
def test_same_seed_same_batches_other_epoch_or_seed_differs(data):
    pca = load_pca_dict(data)
    make = lambda seed: TrainLoader(data["train"], pca, 8, AugmentSettings(), seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    assert same(first_batches(a, 0), first_batches(b, 0))
    assert not same(first_batches(a, 0), first_batches(a, 1))
    assert not same(first_batches(a, 0), first_batches(make(1), 0))


@pytest.mark.integration
def test_thread_count_never_changes_the_batches(data):
    # why DALI threads are a runtime knob (the resource dali_threads), not a setting that reruns training
    pca = load_pca_dict(data)
    make = lambda threads: TrainLoader(data["train"], pca, 8, AugmentSettings(), seed=5, threads=threads)  # noqa: E731
    one, three = make(1), make(3)
    for epoch in (0, 1):
        assert same(first_batches(one, epoch), first_batches(three, epoch))


@pytest.mark.integration
def test_restart_at_epoch_reproduces_the_continuing_run(data):
    pca = load_pca_dict(data)
    running = TrainLoader(data["train"], pca, 8, AugmentSettings(), seed=7)
    for _ in running.epoch(0):
        pass
    continued = [(x.clone(), y.clone()) for x, y in running.epoch(1)]
    restarted = TrainLoader(data["train"], pca, 8, AugmentSettings(), seed=7)
    assert len(continued) == len(restarted) == 15
    assert same(continued, [(x.clone(), y.clone()) for x, y in restarted.epoch(1)])


@pytest.mark.integration
def test_ranks_read_disjoint_halves_that_change_with_the_epoch(data):
    seen = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            loader = TrainLoader(data["train"], IDENTITY, 8, PLAIN, seed=0, shard_id=rank, num_shards=2)
            assert len(loader) == 60 // 8
            seen[epoch, rank] = {read_patch(x)[3] for images, _ in loader.epoch(epoch) for x in images.numpy()}
            assert len(seen[epoch, rank]) == 7 * 8
        assert not seen[epoch, 0] & seen[epoch, 1]
    assert seen[0, 0] != seen[1, 0]


def load_pca_dict(data):
    path = data["dir"] / "pca.json"
    if not path.exists():
        path.write_text(
            json.dumps(
                {
                    "eigval": [4000.0, 400.0, 40.0],
                    "eigvec": np.eye(3).tolist(),
                    "mean": [120.0, 110.0, 100.0],
                    "std": [60.0, 60.0, 60.0],
                }
            )
        )
        np.save(data["dir"] / "mean_image.npy", data["mean_image"])
    return load_pca(path, data["dir"] / "mean_image.npy")


# ---------------------------------------------------------------- test views


@pytest.mark.integration
@pytest.mark.parametrize("device", DEVICES)
def test_ten_crop_views_equal_numpy_crops_and_flips(data, device):
    pca = load_pca_dict(data)
    raw, labels = decoded(data["val"], device)
    corners = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]
    ev = EvalLoader(data["val"], pca, 5, views="ten", device=device)
    centre = EvalLoader(data["val"], pca, 5, views="center", device=device)
    i = 0
    for (images, labs, keys), (c_images, c_labs, c_keys) in zip(ev, centre):
        assert images.shape[1:] == (10, 3, 224, 224) and c_images.shape[1:] == (3, 224, 224)
        assert keys == c_keys and torch.equal(labs, c_labs)
        for views, lab, key in zip(images.cpu().numpy(), labs.cpu().tolist(), keys):
            assert key == f"img{i:05d}" and lab == labels[i] == val_label(i)
            x = raw[i].astype(np.float32) - pca.mean_image
            want = [x[oy : oy + 224, ox : ox + 224] for ox, oy in corners]
            want = np.stack(want + [w[:, ::-1] for w in want]).transpose(0, 3, 1, 2)
            if device == "cpu":
                np.testing.assert_array_equal(views, want)
            else:  # nvJPEG's hardware and CUDA paths may round a few pixels apart; a shifted crop is off by ~1 everywhere
                assert np.abs(views - want).mean() < 0.1 and np.abs(views - want).max() <= 4
            i += 1
        np.testing.assert_array_equal(c_images.cpu().numpy(), images[:, 4].cpu().numpy())
    assert i == 23


@pytest.mark.integration
@pytest.mark.parametrize("views", ["center", "ten"])
@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_every_validation_image_exactly_once(data, views, num_shards):
    """23 images, batch 5: no image dropped, repeated or padded, on 1, 2 or 3 ranks."""
    keys, total = [], 0
    for rank in range(num_shards):
        ev = EvalLoader(data["val"], IDENTITY, 5, views=views, settings=PLAIN, shard_id=rank, num_shards=num_shards)
        n = 0
        for images, labels, batch_keys in ev:
            assert len(images) == len(labels) == len(batch_keys) <= 5
            centre = images[:, 4] if views == "ten" else images
            for x, lab, key in zip(centre.numpy(), labels.tolist(), batch_keys):
                ident = read_patch(x)[3]
                assert key == f"img{ident:05d}" and lab == val_label(ident)
            keys += batch_keys
            n += len(labels)
        assert n == len(ev)
        total += len(ev)
    assert total == 23 and sorted(keys) == [f"img{i:05d}" for i in range(23)]


@pytest.mark.integration
def test_eval_passes_reuse_one_pipeline_and_repeat_exactly(data):
    """Validation every epoch: one pipeline for every complete pass, the same images each time;
    a pass cut short is not resumed by the next one."""
    ev = EvalLoader(data["val"], IDENTITY, 5, views="center", settings=PLAIN, shard_id=1, num_shards=2)
    builds = []
    build = ev.pipeline
    ev.pipeline = lambda: builds.append(1) or build()

    def one_pass(limit=None):
        out = []
        for i, (images, labels, keys) in enumerate(ev):
            if i == limit:
                break
            out.append((images.numpy().copy(), labels.tolist(), keys))
        return out

    first = one_pass()
    assert sum(len(k) for _, _, k in first) == len(ev) == 12
    for _ in range(2):
        again = one_pass()
        assert [(l, k) for _, l, k in again] == [(l, k) for _, l, k in first]
        assert all(np.array_equal(a, b) for (a, _, _), (b, _, _) in zip(again, first))
    assert len(builds) == 1
    cut = one_pass(limit=1)
    assert len(cut) == 1 and len(builds) == 1
    after = one_pass()  # the half-read pipeline was dropped: a new one, from the first image
    assert len(builds) == 2 and [k for _, _, k in after] == [k for _, _, k in first]
    ev.close()
    assert one_pass()[0][2] == first[0][2] and len(builds) == 3


# ---------------------------------------------------------------- errors and the stage


@pytest.mark.integration
def test_bad_inputs_name_the_problem(data, tmp_path):
    with pytest.raises(LoaderError, match="lighting='bright'"):
        AugmentSettings(lighting="bright")
    with pytest.raises(LoaderError, match="views='five'"):
        EvalLoader(data["val"], IDENTITY, 5, views="five", settings=PLAIN)
    bad = tmp_path / "pca.json"
    bad.write_text(json.dumps({"eigval": [1, 2], "eigvec": np.eye(3).tolist(), "mean": [0] * 3, "std": [1] * 3}))
    with pytest.raises(PCAFileError, match="eigval has shape"):
        load_pca(bad)
    with pytest.raises(LoaderError, match="needs the mean image"):
        TrainLoader(data["train"], IDENTITY, 8)
    tar = tmp_path / "lonely-00000.tar"
    tar.write_bytes(open(data["train"][0], "rb").read())
    with pytest.raises(LoaderError, match="lonely-00000.idx"):
        TrainLoader([str(tar)], IDENTITY, 8, PLAIN)


@pytest.mark.unit
def test_manifest_shards_are_relative_to_the_manifest(tmp_path, data):
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.parent.mkdir()
    (manifest.parent / "val").mkdir()
    (manifest.parent / "val" / "val-00000.tar").write_bytes(b"")
    manifest.write_text(
        json.dumps({"val": {"shards": [{"tar": "val/val-00000.tar"}, data["val"][0]]}, "train": {"shards": []}})
    )
    assert manifest_shards(manifest, "val") == [str(manifest.parent / "val" / "val-00000.tar"), data["val"][0]]
    with pytest.raises(LoaderError, match="the train split has no shards"):
        manifest_shards(manifest, "train")
    with pytest.raises(LoaderError, match="no shard list for split 'test'.*rerun the resize stage"):
        manifest_shards(manifest, "test")
    with pytest.raises(LoaderError, match="no shard list"):
        manifest_shards(tmp_path / "missing.json", "val")


@pytest.mark.integration
@pytest.mark.parametrize("device", DEVICES)
def test_stage_writes_grid_and_throughput(data, tmp_path, capsys, device):
    load_pca_dict(data)  # writes pca.json and mean_image.npy
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"train": {"shards": data["train"]}, "val": {"shards": data["val"]}}))
    out = tmp_path / "augment"
    args = [
        "--manifest",
        str(manifest),
        "--pca",
        str(data["dir"] / "pca.json"),
        "--mean-image",
        str(data["dir"] / "mean_image.npy"),
        "--out-dir",
        str(out),
        "--batch-size",
        "8",
        "--grid-samples",
        "4",
        "--bench-batches",
        "2",
        "--device",
        device,
    ]
    assert main(args) == 0
    result = json.loads((out / "augment.json").read_text())
    assert (
        result["device"] == device
        and result["train_images"] == 120
        and result["val_images"] == 23
        and result["train_batches_per_epoch"] == 15
    )
    for key in ("train_images_per_s", "eval_center_images_per_s", "eval_ten_images_per_s"):
        assert result[key] > 0
    assert Image.open(out / "grid.png").size[0] > 400
    (out / "augment.json").unlink()
    assert main(args[:-2] + ["--device", "tpu"]) == 1
    assert "error: device=tpu" in capsys.readouterr().err
    assert not (out / "augment.json").exists()


@pytest.mark.unit
def test_augment_settings_are_the_keys_the_workflow_passes_with_the_schemas_defaults():
    import dataclasses

    from pipeline.schema import AUGMENT_SETTINGS, defaults

    fields = dataclasses.fields(AugmentSettings)
    assert tuple(f.name for f in fields) == AUGMENT_SETTINGS
    assert {f.name: f.default for f in fields} == {k: defaults("augment")[k] for k in AUGMENT_SETTINGS}
