"""Shard checksums: hashed while written, recorded, verified before the first step; DALI errors named.

The shards are conftest.py's train_data, helpers.make_data's (2 train shards of 24 images, 1 val shard
of 8), whose manifest carries the checksums ShardWriter computed while writing them.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from pipeline.io import read_json, write_json
from pipeline.loaders import AugmentSettings, EvalLoader, LoaderError, TrainLoader
from pipeline.shards import ShardChecksumError, ShardWriter, index_path, shard_jpegs, verify_shards
from pipeline.train import TrainConfig, train
from pipeline.train import main as train_main

from helpers import SMALL, tinted_jpeg, train_cli


@pytest.fixture
def data(train_data, tmp_path):
    """A copy of the shards each test may damage."""
    root = train_data["manifest"].parent.parent
    shutil.copytree(root, tmp_path / "data")
    return {k: tmp_path / "data" / v.relative_to(root) for k, v in train_data.items()}


def shard(data, split="train", k=1):
    return data["manifest"].parent / split / f"{split}-{k:05d}.tar"


def overwrite(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.unit
def test_the_digests_computed_while_writing_equal_hashlib_over_the_files(tmp_path):
    path = tmp_path / "train-00000.tar"
    with ShardWriter(path) as w:
        for i in range(3):
            w.add(f"k{i}", bytes(range(256)) * (i + 1), i)
    assert w.checksums == {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "idx_sha256": hashlib.sha256(index_path(path).read_bytes()).hexdigest(),
    }


@pytest.mark.unit
def test_untampered_shards_verify(train_data, capsys):
    for split, shards in (("train", 2), ("val", 1)):
        for threads in (1, 2):
            result = verify_shards(train_data["manifest"], split, threads=threads, block=4096)
            assert result["shards"] == shards and result["unchecked"] == 0
    # two replicas check one shard each
    assert [verify_shards(train_data["manifest"], "train", r, 2)["shards"] for r in (0, 1)] == [1, 1]
    assert "warning" not in capsys.readouterr().err


@pytest.mark.unit
def test_zeroed_bytes_inside_a_jpeg_are_named_with_both_digests_and_the_rebuild_command(data):
    tar = shard(data)
    entry = read_json(data["manifest"])["train"]["shards"][1]
    _key, offset, size = shard_jpegs(tar)[5]
    overwrite(tar, offset + size // 2, bytes(min(4096, size // 3)))  # decodes with a warning only
    with pytest.raises(ShardChecksumError) as err:
        verify_shards(data["manifest"], "train")
    message = str(err.value)
    assert f"{tar}: sha256: expected {entry['sha256']}, found {hashlib.sha256(tar.read_bytes()).hexdigest()}" in message
    assert "(the same size)" in message and "1 of 2 train shards differ" in message
    assert f"snakemake --cores all --forcerun resize_train_shard -- {tar}" in message
    assert "train-00000" not in message


@pytest.mark.unit
def test_a_cut_shard_and_a_changed_index_are_named(data):
    tar = shard(data)
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.truncate(size - 1024)
    idx = index_path(shard(data, "val", 0))
    idx.write_text(idx.read_text().replace("jpg", "jpg ", 1))
    with pytest.raises(ShardChecksumError, match=rf"size: expected {size} bytes, found {size - 1024}"):
        verify_shards(data["manifest"], "train")
    with pytest.raises(ShardChecksumError, match=r"val-00000\.idx sha256: expected [0-9a-f]{64}, found"):
        verify_shards(data["manifest"], "val")


@pytest.mark.unit
def test_a_manifest_without_checksums_warns_and_reads_the_shards_unchecked(data, capsys):
    manifest = read_json(data["manifest"])
    for entry in manifest["train"]["shards"]:
        entry.pop("sha256")
        entry.pop("idx_sha256")
    write_json(data["manifest"], manifest)
    overwrite(shard(data), 4096, b"\x00" * 16)  # not detectable without a recorded digest
    assert verify_shards(data["manifest"], "train") == {
        "shards": 0,
        "bytes": 0,
        "seconds": pytest.approx(0, abs=5),
        "unchecked": 2,
    }
    err = capsys.readouterr().err
    assert "warning:" in err and "records no sha256 for 2 of 2 train shards" in err
    assert "snakemake --cores all --forcerun resize_train_shard -- " in err


@pytest.mark.unit
def test_training_on_a_damaged_tar_header_stops_before_the_first_step(data, tmp_path, capsys):
    tar = shard(data)
    _key, offset, _size = shard_jpegs(tar)[3]
    header = offset - 512  # the member's tar header: DALI would fail inside its decoder, naming no shard
    overwrite(tar, header, bytes(b ^ 0xFF for b in tar.read_bytes()[header : header + 4096]))
    out = tmp_path / "run"
    assert train_main(train_cli(data, out, epochs=1)[3:]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "1 of 2 train shards differ" in line and "Traceback" not in err
    assert f"{tar}: sha256: expected" in err and f"--forcerun resize_train_shard -- {tar}" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints" / "last.pt").exists()


def rewrite_with_a_garbage_jpeg(data, split, k, bad_index):
    """Rewrite shard k of `split` with sample `bad_index` undecodable, and record its checksums in
    the manifest: it verifies, so only the decoder can find it."""
    tar = shard(data, split, k)
    manifest = read_json(data["manifest"])
    entry = manifest[split]["shards"][k]
    keys = [key for key, _, _ in shard_jpegs(tar)]
    rng = np.random.default_rng(k)
    with ShardWriter(tar) as w:
        for i, key in enumerate(keys):
            w.add(key, b"\xff\xd8\xff\xe0 not a JPEG " * 40 if i == bad_index else tinted_jpeg(rng, i % 4), i % 4)
    entry.update(w.checksums, bytes=tar.stat().st_size)
    write_json(data["manifest"], manifest)
    return tar, keys[bad_index]


@pytest.mark.integration
def test_a_decode_error_inside_dali_names_the_shard_and_the_sample(data):
    tar, key = rewrite_with_a_garbage_jpeg(data, "train", 1, 17)
    verify_shards(data["manifest"], "train")  # the shard is as written: the checksum cannot tell
    pca = read_json(data["pca"])
    settings = AugmentSettings(normalize="channel")
    shards = [str(shard(data, "train", k)) for k in (0, 1)]
    for loader, batches in (
        (EvalLoader(shards, pca, 4, settings=settings, threads=1), None),
        (TrainLoader(shards, pca, 4, settings=settings, threads=1, initial_fill=8), 0),
    ):
        with pytest.raises(LoaderError) as err:
            for _ in loader if batches is None else loader.epoch(batches):
                pass
        message = str(err.value)
        assert f"shard {tar}, sample {key} (" in message and "cannot be decoded" in message
        assert f"--forcerun resize_train_shard -- {tar}" in message


@pytest.mark.integration
def test_the_training_stage_reports_a_dali_decode_error_with_shard_and_key(data, tmp_path):
    tar, key = rewrite_with_a_garbage_jpeg(data, "train", 0, 2)
    with pytest.raises(LoaderError, match=rf"shard {tar}, sample {key} \("):
        train(
            data["manifest"],
            data["pca"],
            data["mean_image"],
            data["classes"],
            tmp_path / "run",
            TrainConfig(epochs=1, **SMALL),
        )
