"""Shard index readers: the sample count and keys the loaders take from a shard's DALI index."""

import pytest

from pipeline.shards import ShardIndexError, ShardWriter, index_path, shard_sample_count, shard_sample_keys

pytestmark = pytest.mark.unit


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "train-00000.tar"
    with ShardWriter(path) as w:
        for key, label in (("n01440764_10", 0), ("n01443537_7", 1), ("ILSVRC2012_val_00000003", 2)):
            w.add(key, b"\xff\xd8jpeg", label)
    return path


def test_count_and_keys_come_from_the_index_in_stored_order(shard):
    assert index_path(shard).read_text().startswith("v1.2 3\n")
    assert shard_sample_count(shard) == 3
    assert shard_sample_keys(shard) == ["n01440764_10", "n01443537_7", "ILSVRC2012_val_00000003"]


def test_an_index_without_member_names_numbers_its_samples(shard):
    idx = index_path(shard)
    lines = idx.read_text().splitlines()
    # v1.1 (wds2idx before member names): "<ext> <offset> <size>" per member
    idx.write_text(
        "\n".join(["v1.1 3"] + [" ".join(line.split()[:3] + line.split()[4:7]) for line in lines[1:]]) + "\n"
    )
    assert shard_sample_count(shard) == 3
    assert shard_sample_keys(shard) == ["train-00000:0", "train-00000:1", "train-00000:2"]


def test_a_missing_or_cut_index_names_the_file_and_the_remedy(shard):
    idx = index_path(shard)
    idx.write_text("\n".join(idx.read_text().splitlines()[:-1]) + "\n")
    for read in (shard_sample_count, shard_sample_keys):
        with pytest.raises(ShardIndexError, match=r"train-00000\.idx: header says 3 samples, found 2 lines; rerun"):
            read(shard)
    idx.unlink()
    with pytest.raises(ShardIndexError, match=r"train-00000\.idx: missing or not a DALI wds2idx index"):
        shard_sample_count(shard)
