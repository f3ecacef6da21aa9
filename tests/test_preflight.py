"""The preflight: the ImageNet preset rehearsed on generated ImageNet-shaped data, and its forecast.

One small run of the real workflow (all 1000 classes, 2 + 1 images per class,
8 + 2 shards, a few narrow training steps), then checks on the class table,
the devkit mapping, the shards, the partial evaluation and forecast.json;
and unit checks that the forecast scales each cost the way it says.
"""

import copy
import json

import pytest
from mlflow import MlflowClient

from pipeline import forecast as fc
from pipeline.io import read_tsv
from pipeline.sources import ILSVRC_TRAIN_IMAGES, ILSVRC_VAL_IMAGES

from helpers import REPO, snakemake

PRESETS = [
    REPO / "workflow/presets/imagenet.yaml",
    REPO / "workflow/presets/preflight.yaml",
    REPO / "tests/configs/preflight-small.yaml",
]
CLASS_TABLE = REPO / "pipeline/data/ilsvrc2012_classes.tsv"


def real_classes() -> list[dict]:
    rows = [line.split("\t") for line in CLASS_TABLE.read_text().splitlines() if line and not line.startswith("#")]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("preflight-run")
    snakemake(work, "--cores", "2", "--configfile", *map(str, PRESETS), timeout=1500)
    return work


@pytest.mark.e2e
def test_classes_are_ilsvrc2012_in_sorted_order(run_dir):
    classes = read_tsv(run_dir / "results/preflight/fetch/classes.tsv")
    real = real_classes()
    assert len(classes) == 1000
    assert [c["wnid"] for c in classes] == sorted(r["wnid"] for r in real)
    assert classes[0]["wnid"] == "n01440764" and classes[0]["names"].startswith("tench")


@pytest.mark.e2e
def test_validation_labels_follow_the_devkit_ids(run_dir):
    """Ground-truth ILSVRC2012_IDs (the devkit's order, not sorted) -> wnid -> sorted index."""
    res = run_dir / "results/preflight"
    classes = read_tsv(res / "fetch/classes.tsv")
    id_of_wnid = {r["wnid"]: int(r["ilsvrc2012_id"]) for r in real_classes()}
    assert list(id_of_wnid.values()) != [id_of_wnid[w] for w in sorted(id_of_wnid)]
    import tarfile

    with tarfile.open(res / "fetch/ILSVRC2012_devkit_t12.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("ground_truth.txt"))
        truth = [int(x) for x in tar.extractfile(member).read().split()]
    labels = read_tsv(res / "fetch/val_labels.tsv")
    assert len(labels) == len(truth) == 1000
    for row, gt in zip(labels, truth):
        assert id_of_wnid[classes[int(row["index"])]["wnid"]] == gt, row


@pytest.mark.e2e
def test_shards_and_counts(run_dir):
    res = run_dir / "results/preflight"
    manifest = json.loads((res / "shards/manifest.json").read_text())
    assert len(manifest["train"]["shards"]) == 8 and len(manifest["val"]["shards"]) == 2
    assert manifest["train"]["images"] == 2000 and manifest["val"]["images"] == 1000
    assert all(c["train"] == 2 and c["val"] == 1 for c in manifest["classes"])
    assert len(list((res / "benchmarks/resize").glob("*.tsv"))) == 10


@pytest.mark.e2e
def test_training_capped_and_evaluation_partial(run_dir):
    res = run_dir / "results/preflight"
    train = json.loads((res / "train/train.json").read_text())
    assert train["num_classes"] == 1000 and train["steps"] == 4 and train["steps_per_epoch_cap"] == 4
    metrics = json.loads((res / "evaluate/metrics.json").read_text())
    assert metrics["partial"] is True and 16 <= metrics["val_images"] < 1000
    assert "Partial" in (res / "evaluate/comparison.md").read_text()


@pytest.mark.e2e
def test_forecast_is_plausible(run_dir):
    res = run_dir / "results/preflight"
    f = json.loads((res / "forecast/forecast.json").read_text())
    assert f["target"] == {
        "train_images": ILSVRC_TRAIN_IMAGES,
        "val_images": ILSVRC_VAL_IMAGES,
        "epochs": 90,
        "archive_gb": pytest.approx(154.645, abs=0.01),
    }
    assert f["measured_on"]["train_images"] == 2000 and f["assumed"]["cores"] == 2
    stages = f["stages"]
    assert set(stages) >= {"fetch", "index train", "resize train", "resize val", "pca", "train", "evaluate"}
    rt = stages["resize train"]
    assert 1e-4 < rt["seconds_per_image"] < 2.0, rt  # decode, resize, encode and statistics of one image
    assert 0.0 <= rt["startup_s_per_job"] < 60.0, rt
    assert rt["jobs"] == 8
    # resized 256x256 JPEGs at quality 90: a few KB to a few hundred KB each
    assert ILSVRC_TRAIN_IMAGES * 2e3 / 1e9 < rt["disk_gb"] < ILSVRC_TRAIN_IMAGES * 5e5 / 1e9, rt
    tr = stages["train"]
    assert tr["steps"] == ILSVRC_TRAIN_IMAGES // 16 * 90
    assert tr["seconds"] >= tr["steps"] * 16 / tr["images_per_s"]
    assert f["total"]["seconds"] == pytest.approx(sum(s["seconds"] for s in stages.values()))
    assert "Forecast" in (res / "forecast/forecast.md").read_text()
    # the preflight's changes are stated in the forecast
    assert any("at most 4 steps" in c for c in f["rehearsal"])


@pytest.mark.e2e
def test_forecast_reaches_the_parent_run(run_dir):
    f = json.loads((run_dir / "results/preflight/forecast/forecast.json").read_text())
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("alexnet-preflight")
    assert exp is not None and client.get_experiment_by_name("alexnet") is None
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    assert parents[0].data.metrics["forecast.total.hours"] == pytest.approx(f["total"]["hours"])
    # the forecast table is the parent run's description, the top of its page in the MLflow UI
    assert parents[0].data.tags["mlflow.note.content"].startswith("# Forecast of the real run")


@pytest.mark.e2e
def test_report_shows_the_forecast(run_dir):
    """snakemake --report (no --cores given) over the preflight's jobs, the forecast table in it."""
    snakemake(run_dir, "--configfile", *map(str, PRESETS), "--report", "report.html")
    html = (run_dir / "report.html").read_text(errors="replace")
    assert "forecast.md" in html and "Forecast" in html


@pytest.mark.unit
def test_a_checkpoint_from_before_the_step_cap_still_resumes(tmp_path):
    """train.steps_per_epoch joined the checkpoint's key later: an older checkpoint trained with none (0)."""
    from pipeline.train import TrainConfig
    from pipeline.training.run_folder import plan_start

    key = TrainConfig().key(10)
    old = {section: dict(values) for section, values in key.items()}
    del old["recipe"]["steps_per_epoch"]
    ckpt = {"config": {**old, "inputs": None}, "epoch": 1, "step": 10, "uid": "u"}
    assert plan_start(ckpt, None, key, None, 5, tmp_path / "last.pt")[0] == "resume"
    capped = {**key, "recipe": {**key["recipe"], "steps_per_epoch": 12}}
    assert plan_start(ckpt, None, capped, None, 5, tmp_path / "last.pt")[0] == "start"


# --- the scaling, on made-up measurements


def measured(per_image=0.02, startup=1.0, jobs=4, images=400) -> dict:
    def shard(n: int) -> dict:
        return {
            "images": n,
            "inputs": n,
            "loop_s": per_image * n,
            "wall_s": startup + per_image * n,
            "bytes": 30_000 * n,
            "stats_bytes": 100,
            "cpu_s": 0.0,
            "max_rss_mb": 200.0,
        }

    job = {"wall_s": 10.0, "cpu_s": 10.0, "max_rss_mb": 300.0}
    return {
        "train_images": images,
        "val_images": images // 4,
        "train_shards": jobs,
        "val_shards": 1,
        "fetch": {"job": job, "archive_bytes": 1e6, "hash_mb_per_s": 500.0},
        "index": {s: {"job": job, "bytes": 1000} for s in ("train", "val")},
        "resize": {"train": [shard(images // jobs) for _ in range(jobs)], "val": [shard(images // 4)]},
        "resize_elapsed_s": 0.0,  # no scheduling gap (test_scheduling_gap sets one)
        "resize_manifest": {"job": job},
        "pca": {"job": job, "bytes": 10},
        "augment": {"job": job, "train_images_per_s": 900.0, "threads": 4, "device": "cpu"},
        "train": {
            "job": job,
            "steps": 12,
            "batch_size": 128,
            "devices": ["cpu"],
            "precision": "fp32",
            "world_size": 1,
            "images_per_s": 100.0,
            "val_s_per_epoch": 1.0,
            "peak_device_mem_mb": 0,
            "epochs": 1,
            "save_s_per_epoch": 2.0,
            "fixed_s": 30.0,
            "checkpoint_bytes": 5e8,
            "jsonl_bytes_per_window": 100.0,
            "log_every": 4,
            "width": 1.0,
        },
        "evaluate": {"job": {**job, "wall_s": 12.0}, "images": 100, "images_per_s": 10.0, "seconds": 11.0},
    }


@pytest.mark.unit
def test_forecast_scales_per_image_costs_and_spreads_jobs_over_cores():
    m = measured()
    one = fc.forecast(m, train_images=10_000, val_images=1000, epochs=2, cores=1)
    two = fc.forecast(m, train_images=20_000, val_images=1000, epochs=2, cores=1)
    wide = fc.forecast(m, train_images=10_000, val_images=1000, epochs=2, cores=4)
    r1, r2 = one["stages"]["resize train"], two["stages"]["resize train"]
    # 4 jobs x (1 s start-up + 0.02 s x images/4): the start-up does not grow with the images
    assert r1["seconds"] == pytest.approx(4 * 1.0 + 0.02 * 10_000)
    assert r2["seconds"] - r1["seconds"] == pytest.approx(0.02 * 10_000)
    assert wide["stages"]["resize train"]["seconds"] == pytest.approx(r1["seconds"] / 4)
    assert wide["stages"]["resize train"]["peak_memory_gb"] == pytest.approx(4 * 200 / 1024)
    assert r2["disk_gb"] == pytest.approx(2 * 30_000 * 10_000 / 1e9 + 2 * 4 * 100 / 1e9, rel=0.01)
    t1 = one["stages"]["train"]
    assert t1["steps"] == 10_000 // 128 * 2
    # training at 100 images/s, per epoch a validation pass at 100 images/s (measured: 100 in 1 s) and
    # 2 s of checkpoint, and the job's 30 s of start-up once
    assert t1["seconds"] == pytest.approx(t1["steps"] * 128 / 100.0 + 2 * (1000 / 100.0 + 2.0) + 30.0)
    assert one["stages"]["evaluate"]["seconds"] == pytest.approx((12.0 - 10.0) + 1000 / 10.0)
    assert one["input_bound"]["verdict"].startswith("compute-bound")


@pytest.mark.unit
def test_scheduling_gap_is_added_per_job():
    m = measured(per_image=0.02, startup=1.0, jobs=4, images=400)
    busy = sum(j["wall_s"] for j in m["resize"]["train"] + m["resize"]["val"])  # 5 jobs
    m["resize_elapsed_s"] = (busy + 5 * 0.5) / 2  # on 2 cores, idle 0.5 s per job
    assert fc.scheduling_gap(m, cores=2) == pytest.approx(0.5)
    r = fc.forecast(m, train_images=10_000, val_images=1000, epochs=1, cores=2)["stages"]["resize train"]
    assert r["seconds"] == pytest.approx(4 * (1.0 + 0.02 * 2500 + 0.5) / 2)


@pytest.mark.unit
def test_forecast_says_input_bound_when_dali_is_slower():
    m = copy.deepcopy(measured())
    m["augment"]["train_images_per_s"] = 50.0
    assert fc.forecast(m, 1000, 100, 1, 1)["input_bound"]["verdict"].startswith("input-bound")


@pytest.mark.unit
def test_missing_preflight_output_names_the_file(tmp_path):
    with pytest.raises(fc.ForecastError, match="manifest.json does not exist"):
        fc.measure(tmp_path)


@pytest.mark.unit
def test_forecast_counts_the_held_out_jobs():
    """resize.holdout_per_class: the held-out split's index job and shards are forecast too, scaled per
    class, and the training shards take the rest of the training set."""
    m = copy.deepcopy(measured(images=400))
    job = m["index"]["train"]["job"]
    m |= {"classes": 10, "holdout_images": 20, "holdout_shards": 1, "holdout": {"job": job, "bytes": 1000}}
    m["resize"]["holdout"] = copy.deepcopy(m["resize"]["val"])
    m["resize"]["holdout"][0] |= {"images": 20, "inputs": 20}
    fc_ = fc.forecast(m, train_images=10_000, val_images=1000, epochs=1, cores=1, classes=100)
    assert {"holdout", "resize holdout"} <= set(fc_["stages"])
    assert fc_["stages"]["resize holdout"]["jobs"] == 1
    assert fc_["stages"]["train"]["steps"] == (10_000 - 2 * 100) // 128  # 2 per class of 100 held out
    plain = fc.forecast(measured(images=400), train_images=10_000, val_images=1000, epochs=1, cores=1)
    assert fc_["total"]["seconds"] > plain["total"]["seconds"]
