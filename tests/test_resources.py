"""Per-rule resources from Snakemake's benchmark files."""

from pathlib import Path

import pytest

from pipeline.io import read_json
from pipeline.resources import ResourcesError, gather, resources, rule_of

pytestmark = pytest.mark.unit

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(root: Path, name: str, seconds: float, rss="100.0", io_in="1.0", io_out="2.0", cpu="1.5"):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t{io_in}\t{io_out}\t50\t{cpu}\n")


def test_files_name_their_rules():
    assert rule_of(Path("train.tsv")) == "train"
    assert rule_of(Path("index/val.tsv")) == "index"
    assert rule_of(Path("resize/train-00003.tsv")) == "resize_train_shard"
    assert rule_of(Path("resize/val-00000.tsv")) == "resize_shard"
    assert rule_of(Path("resize/holdout-00000.tsv")) == "resize_shard"
    assert rule_of(Path("holdout.tsv")) == "holdout"


def test_jobs_are_summed_per_rule_and_unsampled_figures_stay_unknown(tmp_path):
    bench(tmp_path, "train.tsv", 100.0, rss="2000.5")
    bench(tmp_path, "resize/train-00000.tsv", 2.0, rss="50")
    bench(tmp_path, "resize/train-00001.tsv", 3.0, rss="NA", cpu="NA")
    bench(tmp_path, "index/train.tsv", 0.5, rss="NA", io_in="NA", io_out="NA", cpu="NA")
    table = gather(tmp_path)
    assert list(table) == ["train", "resize_train_shard", "index"]  # longest total first
    shards = table["resize_train_shard"]
    assert shards == {
        "jobs": 2,
        "total_s": 5.0,
        "max_s": 3.0,
        "cpu_s": 1.5,
        "max_rss_mb": 50.0,
        "read_mb": 2.0,
        "written_mb": 4.0,
    }
    assert table["index"]["max_rss_mb"] is None and table["index"]["cpu_s"] is None


def test_outputs_and_metrics(tmp_path):
    bench(tmp_path / "b", "pca.tsv", 4.0)
    bench(tmp_path / "b", "resize/val-00000.tsv", 1.0, rss="NA")
    resources(tmp_path / "b", tmp_path / "out")
    assert read_json(tmp_path / "out" / "metrics.json")["resources"]["resize_shard"] == {
        "jobs": 1,
        "total_s": 1.0,
        "max_s": 1.0,
        "cpu_s": 1.5,
        "read_mb": 1.0,
        "written_mb": 2.0,
    }
    md = (tmp_path / "out" / "resources.md").read_text()
    assert "| pca | 1 | 4.0 s | 4.0 s | 1.5 s | 100 MB | 1.0 MB | 2.0 MB |" in md
    assert "| resize_shard | 1 | 1.0 s | 1.0 s | 1.5 s | n/a MB |" in md
    assert "| all | 2 | 5.0 s |" in md


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ResourcesError, match="no benchmark files under"):
        gather(tmp_path)
    (tmp_path / "train.tsv").write_text("not a benchmark\n")
    with pytest.raises(ResourcesError, match=r"train.tsv: not a Snakemake benchmark file .*rerun its rule"):
        gather(tmp_path)
