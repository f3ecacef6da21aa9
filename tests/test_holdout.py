"""The held-out training slice: its choice, its shards and manifest record, and the training validating on it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import archive, resize
from pipeline.holdout import HoldoutError, choose_holdout
from pipeline.io import read_json, write_json
from pipeline.shards import ShardWriter, shard_sample_keys, validation_split
from pipeline.train import TrainConfig, train

from helpers import SMALL, index_archives, make_data, make_dataset, metrics_rows, tinted_jpeg


@pytest.mark.unit
def test_choice_takes_k_of_every_class_seeded_per_class():
    labels = np.repeat(np.arange(5), [10, 7, 12, 9, 30])
    held = choose_holdout(labels, 3, seed=4)
    assert [int(held[labels == c].sum()) for c in range(5)] == [3] * 5
    assert np.array_equal(held, choose_holdout(labels, 3, seed=4))
    assert not np.array_equal(held, choose_holdout(labels, 3, seed=5))
    # per class: dropping the other classes' rows, or reordering them, keeps a class's choice
    only2 = labels == 2
    assert np.array_equal(held[only2], choose_holdout(labels[only2], 3, seed=4))
    assert not choose_holdout(labels, 0, seed=4).any()


@pytest.mark.unit
def test_a_class_too_small_to_keep_training_images_is_refused():
    labels = np.array([0, 0, 0, 1, 1])
    with pytest.raises(HoldoutError, match="class 1 has 2 training images.*holdout_per_class 2"):
        choose_holdout(labels, 2, seed=0, where="index/train.tsv")
    with pytest.raises(HoldoutError, match="-1"):
        choose_holdout(labels, -1, seed=0)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The resize stage's jobs with a held-out slice: index, split, train/val/holdout shards, manifest."""
    root = tmp_path_factory.mktemp("holdout")
    make_dataset(root)
    index_archives(root)
    assert (
        resize.main(
            ["holdout", "--index", str(root / "index/train.tsv"), "--per-class", "2", "--seed", "3"]
            + ["--out-kept", str(root / "index/train-kept.tsv"), "--out-holdout", str(root / "index/holdout.tsv")]
        )
        == 0
    )
    for split, index, source, shards in (
        ("train", "train-kept", "train", 2),
        ("val", "val", "val", 1),
        ("holdout", "holdout", "train", 1),
    ):
        for k in range(shards):
            resize.resize_shard(
                root / "index" / f"{index}.tsv",
                root / f"ILSVRC2012_img_{source}.tar",
                root / "shards" / split / f"{split}-{k:05d}.tar",
                k,
                shards,
                max_reject_fraction=0.2,
                stats=split == "train",
                split=split,
            )
    manifest = resize.write_manifest(
        root / "shards", 2, 1, root / "classes.tsv", root / "shards/manifest.json", 0.2, holdout_shards=1
    )
    return root, manifest


@pytest.mark.unit
def test_index_is_split_into_disjoint_kept_and_held_out_rows(chain):
    root, _ = chain
    full = archive.read_member_index(root / "index/train.tsv")
    kept = archive.read_member_index(root / "index/train-kept.tsv")
    held = archive.read_member_index(root / "index/holdout.tsv")
    names = lambda idx: {idx.name(i) for i in range(len(idx))}  # noqa: E731
    assert names(kept) | names(held) == names(full) and not names(kept) & names(held)
    assert np.bincount(held.label).tolist() == [2, 2, 2]
    # offsets still point into the training archive
    assert held.offset.tolist() == [full.offset[list(full.member).index(m)] for m in held.member]


@pytest.mark.unit
def test_manifest_records_the_held_out_images_and_training_shards_lack_them(chain):
    root, manifest = chain
    train_keys = {k for e in manifest["train"]["shards"] for k in shard_sample_keys(root / "shards" / e["tar"])}
    held_keys = set(manifest["holdout"]["members"])
    assert len(held_keys) == manifest["holdout"]["images"] == 6 - manifest["holdout"]["rejected"]
    assert not train_keys & held_keys
    expected = {archive.image_key(n) for n in archive.read_member_index(root / "index/holdout.tsv").member.astype(str)}
    assert held_keys <= expected and len(expected - held_keys) == manifest["holdout"]["rejected"]
    assert [c["holdout"] for c in manifest["classes"]] == [
        sum(1 for k in held_keys if k.startswith(c["wnid"])) for c in manifest["classes"]
    ]
    assert validation_split(root / "shards/manifest.json") == "holdout"
    # the PCA reads the training shards' statistics only: none is written for the held-out ones
    assert all("stats" not in e for e in manifest["holdout"]["shards"])


@pytest.mark.integration
def test_training_validates_on_the_held_out_slice_and_never_reads_val(tmp_path):
    data = make_data(tmp_path / "data")
    manifest = read_json(data["manifest"])
    # a held-out split of 8 images; val's shards are then overwritten with bytes no reader can decode
    tar = tmp_path / "data/shards/holdout/holdout-00000.tar"
    with ShardWriter(tar) as w:
        for i in range(8):
            w.add(f"held_{i:04d}", tinted_jpeg(np.random.default_rng(i), i % 4), i % 4)
    manifest["holdout"] = {"images": 8, "shards": [{"tar": "holdout/holdout-00000.tar", "images": 8}]}
    write_json(data["manifest"], manifest)
    for entry in manifest["val"]["shards"]:
        for key in ("tar", "idx"):
            (tmp_path / "data/shards" / entry[key]).write_bytes(b"not a shard\n" * 100)
    out = tmp_path / "run"
    summary = train(
        data["manifest"], data["pca"], data["mean_image"], data["classes"], out, TrainConfig(epochs=2, **SMALL)
    )
    assert summary["validated_on"] == "holdout" and summary["best_epoch"] in (1, 2)
    assert [r["validated_on"] for r in metrics_rows(out) if "val_top1_err" in r] == ["holdout", "holdout"]
    assert (out / "curve.png").stat().st_size > 0
