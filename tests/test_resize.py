"""Resize stage: geometry, dirty inputs, rejects, shards (incl. DALI), fused statistics, reruns."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from pipeline import archive, resize
from pipeline.io import read_json, write_tsv
from pipeline.shards import read_shard, verify_shards

from helpers import SIZES, WNIDS, dirty_images, encode, index_archives, make_dataset, photo, truncated_jpeg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Index both archives and write 2 train + 1 val shards, as the workflow does."""
    root = tmp_path_factory.mktemp("resize")
    images, val = make_dataset(root)
    index_archives(root)
    reports = {}
    for split, shards in (("train", 2), ("val", 1)):
        for k in range(shards):
            reports[split, k] = resize.resize_shard(
                root / "index" / f"{split}.tsv",
                root / f"ILSVRC2012_img_{split}.tar",
                root / "shards" / split / f"{split}-{k:05d}.tar",
                k,
                shards,
                seed=0,
                max_reject_fraction=0.2,
                stats=split == "train",
                split=split,
            )
    manifest = resize.write_manifest(
        root / "shards", 2, 1, root / "classes.tsv", root / "shards" / "manifest.json", max_reject_fraction=0.2
    )
    return {"root": root, "images": images, "val": val, "reports": reports, "manifest": manifest}


def naive(data: bytes, resample=resize.RESAMPLE) -> Image.Image:
    """Full decode, shorter side to 256, central crop: the definition downsample must match."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    W, H = max(256, round(w * s)), max(256, round(h * s))
    left, top = (W - 256) // 2, (H - 256) // 2
    return im.resize((W, H), resample).crop((left, top, left + 256, top + 256))


@pytest.mark.unit
@pytest.mark.parametrize("size", SIZES + [(1200, 1600), (513, 1000)])
def test_downsample_is_shorter_side_256_then_central_crop(size):
    data = encode(photo(1, size))
    out = resize.downsample(data)
    assert out.size == (256, 256) and out.mode == "RGB"
    diff = np.abs(np.asarray(out, float) - np.asarray(naive(data), float))
    if min(size) < 512:  # no DCT scaling: same pixels as resizing the whole image, then cropping
        assert diff.max() <= 1
    else:  # decoded at 1/2 or 1/4 scale first: a slightly different antialiasing filter
        assert diff.mean() < 3


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["cmyk", "gray", "palette", "png"])
def test_dirty_inputs_become_rgb(kind):
    data = dirty_images()[kind]
    out = resize.downsample(data)
    assert out.size == (256, 256) and out.mode == "RGB"
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.abs(np.asarray(out, float) - np.asarray(naive(encode(reference, "PNG")), float)).mean() < 1


@pytest.mark.unit
def test_truncated_jpeg_raises():
    with pytest.raises(OSError, match="truncated"):
        resize.downsample(truncated_jpeg())


@pytest.mark.unit
def test_shard_rows_partition_one_permutation():
    rows = [resize.shard_rows(103, k, 4, seed=5) for k in range(4)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(103))
    assert [len(r) for r in rows] == [25, 26, 26, 26]
    assert not np.array_equal(resize.shard_rows(103, 0, 4, seed=6), rows[0])


@pytest.mark.unit
def test_every_accepted_image_once_with_its_label(run):
    seen = {}
    for k in range(2):
        for key, jpeg, label in read_shard(run["root"] / "shards" / "train" / f"train-{k:05d}.tar"):
            assert key not in seen
            seen[key] = label
            im = Image.open(io.BytesIO(jpeg))
            assert im.size == (256, 256) and im.mode == "RGB" and im.format == "JPEG"
    truncated = f"{WNIDS[2]}_truncated.JPEG"
    expected = {archive.image_key(n): label for n, (_, label) in run["images"].items() if n != truncated}
    assert seen == expected
    for kind in ("cmyk", "gray", "palette", "png"):
        assert f"{WNIDS[1]}_{kind}" in seen
    val = {key: label for key, _, label in read_shard(run["root"] / "shards" / "val" / "val-00000.tar")}
    assert val == {archive.image_key(n): label for n, (_, label) in run["val"].items()}


@pytest.mark.unit
def test_shard_order_follows_the_seeded_permutation(run):
    index = run["root"] / "index" / "train.tsv"
    for k in range(2):
        rows = archive.read_member_index(index, resize.shard_rows(archive.index_length(index), k, 2, seed=0))
        expected = [archive.image_key(rows.name(i)) for i in range(len(rows)) if "truncated" not in rows.name(i)]
        got = [key for key, _, _ in read_shard(run["root"] / "shards" / "train" / f"train-{k:05d}.tar")]
        assert got == expected


@pytest.mark.unit
def test_truncated_jpeg_is_recorded_in_shard_json_and_manifest(run):
    rejects = [r for k in range(2) for r in run["reports"]["train", k]["rejects"]]
    assert len(rejects) == 1
    assert rejects[0]["name"] == f"{WNIDS[2]}_truncated.JPEG" and "truncated" in rejects[0]["reason"]
    shard = next(k for k in range(2) if run["reports"]["train", k]["rejects"])
    on_disk = read_json(run["root"] / "shards" / "train" / f"train-{shard:05d}.json")
    assert on_disk["rejects"] == rejects and on_disk["rejected"] == 1
    manifest = read_json(run["root"] / "shards" / "manifest.json")
    listed = [(r["name"], r["reason"]) for r in manifest["train"]["rejects"]]
    assert listed == [(rejects[0]["name"], rejects[0]["reason"])]
    assert manifest["totals"]["rejects"] == 1
    assert manifest["totals"]["images"] == len(run["images"]) - 1 + len(run["val"])
    assert manifest["train"]["images"] == len(run["images"]) - 1 and manifest["val"]["images"] == 6
    assert [c["train"] for c in manifest["classes"]] == [6, 10, 6]
    assert manifest["settings"]["jpeg_quality"] == 90 and manifest["settings"]["size"] == 256
    for entry in manifest["train"]["shards"]:
        for key in ("tar", "idx", "stats"):
            assert (run["root"] / "shards" / entry[key]).exists()


@pytest.mark.unit
def test_too_many_rejects_fail_the_shard_with_a_clear_message(run, tmp_path, capsys):
    root = run["root"]
    shard = next(k for k in range(2) if run["reports"]["train", k]["rejects"])
    out = tmp_path / "train" / f"train-{shard:05d}.tar"
    with pytest.raises(resize.TooManyRejectsError, match=r"truncated\.JPEG.*\n.*max_reject_fraction"):
        resize.resize_shard(
            root / "index" / "train.tsv",
            root / "ILSVRC2012_img_train.tar",
            out,
            shard,
            2,
            max_reject_fraction=0.0,
            stats=True,
        )
    assert list(tmp_path.rglob("*")) == [tmp_path / "train"]  # nothing complete-looking, no temporaries

    argv = [
        "shard",
        "--split",
        "train",
        "--index",
        str(root / "index" / "train.tsv"),
        "--source",
        str(root / "ILSVRC2012_img_train.tar"),
        "--shard",
        str(shard),
        "--shards",
        "2",
        "--max-reject-fraction",
        "0",
        "--stats",
        "--out",
        str(out),
    ]
    assert resize.main(argv) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "could not be decoded" in err and "Traceback" not in err


@pytest.mark.unit
def test_reports_and_manifest_record_the_sha256_hashed_while_writing(run):
    """The digests the writer computed as it wrote equal hashlib over the files on disk."""
    manifest = read_json(run["root"] / "shards" / "manifest.json")
    for split, shards in (("train", 2), ("val", 1)):
        assert len(manifest[split]["shards"]) == shards
        for k, entry in enumerate(manifest[split]["shards"]):
            tar = run["root"] / "shards" / entry["tar"]
            report = run["reports"][split, k]
            assert entry["sha256"] == report["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
            idx = run["root"] / "shards" / entry["idx"]
            assert entry["idx_sha256"] == report["idx_sha256"] == hashlib.sha256(idx.read_bytes()).hexdigest()
            assert entry["bytes"] == tar.stat().st_size
    assert verify_shards(run["root"] / "shards" / "manifest.json", "train")["shards"] == 2


@pytest.mark.unit
def test_manifest_checks_rejects_over_all_shards(run, tmp_path):
    root = run["root"]
    with pytest.raises(resize.TooManyRejectsError, match="all shards"):
        resize.write_manifest(
            root / "shards", 2, 1, root / "classes.tsv", tmp_path / "manifest.json", max_reject_fraction=0.01
        )
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.unit
def test_fused_statistics_equal_recomputed_pixels(run):
    root = run["root"]
    index = root / "index" / "train.tsv"
    raw = (root / "ILSVRC2012_img_train.tar").read_bytes()
    for k in range(2):
        rows = archive.read_member_index(index, resize.shard_rows(archive.index_length(index), k, 2, seed=0))
        pixels = []
        for i in range(len(rows)):
            if "truncated" not in rows.name(i):
                data = raw[rows.offset[i] : rows.offset[i] + rows.size[i]]
                pixels.append(np.asarray(resize.downsample(data)))
        stack = np.stack(pixels).astype(np.float64)
        flat = stack.reshape(-1, 3)
        with np.load(root / "shards" / "train" / f"train-{k:05d}.stats.npz") as npz:
            assert npz["images"] == len(pixels) and npz["pixels"] == flat.shape[0]
            assert npz["pixels"].dtype == np.int64 and npz["outer"].dtype == np.float64
            np.testing.assert_array_equal(npz["sum"], flat.sum(axis=0))
            np.testing.assert_array_equal(npz["outer"], flat.T @ flat)
            np.testing.assert_array_equal(npz["image_sum"], stack.sum(axis=0))
    assert not (root / "shards" / "val" / "val-00000.stats.npz").exists()


@pytest.mark.unit
def test_killed_job_leaves_nothing_and_a_rerun_redoes_one_shard(run, tmp_path, monkeypatch):
    root = run["root"]
    args = (root / "index" / "train.tsv", root / "ILSVRC2012_img_train.tar")
    done = tmp_path / "train" / "train-00000.tar"
    resize.resize_shard(*args, done, 0, 2, max_reject_fraction=0.2, stats=True)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.parent.iterdir()}

    calls = {"n": 0}
    real = resize.encode_jpeg

    def dies_midway(im, quality):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as when the job is interrupted
        return real(im, quality)

    monkeypatch.setattr(resize, "encode_jpeg", dies_midway)
    missing = tmp_path / "train" / "train-00001.tar"
    with pytest.raises(KeyboardInterrupt):
        resize.resize_shard(*args, missing, 1, 2, max_reject_fraction=0.2, stats=True)
    assert sorted(p.name for p in done.parent.iterdir()) == sorted(before)  # shard 1: nothing written
    monkeypatch.setattr(resize, "encode_jpeg", real)
    resize.resize_shard(*args, missing, 1, 2, max_reject_fraction=0.2, stats=True)
    for name, (mtime, data) in before.items():  # shard 0 untouched
        assert (done.parent / name).stat().st_mtime_ns == mtime
    for suffix in (".tar", ".idx", ".stats.npz"):  # same bytes as the first run: reruns are reproducible
        name = f"train-00001{suffix}"
        assert (missing.parent / name).read_bytes() == (root / "shards" / "train" / name).read_bytes()


@pytest.mark.unit
def test_folder_tree_source(tmp_path):
    root = tmp_path / "train"
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(encode(photo(c + i, (300, 200))))
    write_tsv(tmp_path / "classes.tsv", ["index", "wnid", "names"], [(i, w, w) for i, w in enumerate(WNIDS)])
    resize.build_index("train", root, tmp_path / "classes.tsv", None, tmp_path / "train.tsv")
    report = resize.resize_shard(tmp_path / "train.tsv", root, tmp_path / "s" / "train-00000.tar", 0, 1, stats=True)
    assert report["images"] == 6
    got = {key: label for key, _, label in read_shard(tmp_path / "s" / "train-00000.tar")}
    assert got == {f"{w}_{i}": c for c, w in enumerate(WNIDS) for i in range(2)}


@pytest.mark.integration
def test_dali_webdataset_reader_reads_the_shards(run):
    from nvidia.dali import fn, pipeline_def

    shards = [run["root"] / "shards" / "train" / f"train-{k:05d}.tar" for k in range(2)]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(p) for p in shards],
            index_paths=[str(p.with_suffix(".idx")) for p in shards],
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            name="reader",
        )
        return fn.decoders.image(jpg, device="cpu"), cls

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    expected = {archive.image_key(k): label for k, (_, label) in run["images"].items() if "truncated" not in k}
    assert n == len(expected)
    labels = []
    for _ in range(n):
        images, cls = p.run()
        assert images.at(0).shape == (256, 256, 3)
        labels.append(int(bytes(np.asarray(cls.at(0))).decode()))
    assert sorted(labels) == sorted(expected.values())


@pytest.mark.unit
def test_stale_temporaries_of_a_killed_run_are_removed(run, tmp_path):
    root = run["root"]
    out = tmp_path / "train" / "train-00000.tar"
    out.parent.mkdir()
    stale = [out.with_name("train-00000.tar.tmp-99999"), out.with_name("train-00000.idx.tmp-99999")]
    other = out.with_name("train-00001.tar.tmp-99999")  # another shard's job may be running
    for p in stale + [other]:
        p.write_bytes(b"partial")
    resize.resize_shard(
        root / "index" / "train.tsv", root / "ILSVRC2012_img_train.tar", out, 0, 2, max_reject_fraction=0.2
    )
    assert not any(p.exists() for p in stale) and other.exists()


@pytest.mark.unit
def test_rgb_stats_stay_exact_past_the_uint16_flush():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 8, 8, 3), dtype=np.uint8)
    images[:300] = 255  # the worst case for the uint16 image sum
    acc = resize.RGBStats(size=8)
    for im in images:
        acc.add(im)
    arrays = acc.arrays()
    flat = images.reshape(-1, 3).astype(np.float64)
    assert arrays["images"] == 600 and arrays["pixels"] == 600 * 64
    np.testing.assert_array_equal(arrays["image_sum"], images.astype(np.float64).sum(axis=0))
    np.testing.assert_array_equal(arrays["sum"], flat.sum(axis=0))
    np.testing.assert_array_equal(arrays["outer"], flat.T @ flat)
