"""The real workflow, end to end, on the demo at test size (tests/configs/tiny.yaml).

One run of `snakemake --cores 2` in a temporary folder, then checks on what it
left: outputs, the MLflow store, rerun behaviour, the report and the linter.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import forecast
from pipeline.layout import Results
from pipeline.sources import ILSVRC_TRAIN_IMAGES

from helpers import REPO, TINY, job_stats, snakemake, tool_env

STAGES = ["demo", "fetch", "resize", "pca", "augment", "train", "evaluate"]


def layout(work: Path) -> Results:
    """The results tree of a run in `work` (paths.results: results), as the workflow lays it out."""
    return Results(str(work / "results"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-run")
    snakemake(work, "--cores", "2", "--configfile", str(TINY))
    return work


def planned_jobs(work: Path, *args: str, configs: tuple[Path, ...] = ()) -> dict[str, int]:
    """Jobs per rule that a dry run would execute (from Snakemake's job stats table)."""
    proc = snakemake(work, "-n", *args, "--configfile", str(TINY), *map(str, configs))
    return job_stats(proc.stdout + proc.stderr)


def planned_rules(work: Path, *args: str, configs: tuple[Path, ...] = ()) -> set[str]:
    return set(planned_jobs(work, *args, configs=configs))


@pytest.mark.e2e
def test_chain_outputs(run_dir):
    results = run_dir / "results"
    metrics = json.loads(Path(Results(str(results)).evaluate().metrics).read_text())
    assert 0.0 <= metrics["val_top1_err_10crop"] <= 100.0  # percent
    assert Path(Results(str(results)).classes).read_text().count("\n") == 1 + 4
    manifest = json.loads(Path(Results(str(results)).manifest).read_text())
    for split, images, shards in (("train", 4 * 12, 2), ("val", 4 * 3, 1)):  # tests/configs/tiny.yaml
        assert manifest[split]["inputs"] == images, split
        assert manifest[split]["images"] == images - manifest[split]["rejected"], split
        assert len(manifest[split]["shards"]) == shards, split
    assert Path(Results(str(results)).pca).exists() and Path(Results(str(results)).augment_grid).exists()
    assert Path(Results(str(results)).train().curve).exists()


@pytest.mark.e2e
def test_every_job_has_a_benchmark_and_the_resources_table_sums_them(run_dir):
    from pipeline.resources import read_job, rule_of

    bench = run_dir / "results" / "benchmarks"
    files = sorted(bench.rglob("*.tsv"))
    by_rule = {}
    for path in files:
        by_rule.setdefault(rule_of(path.relative_to(bench)), []).append(read_job(path)["wall_s"])
    # tests/configs/tiny.yaml: 2 train and 1 val shards, one job for each other rule
    assert {rule: len(times) for rule, times in by_rule.items()} == {
        "demo": 1,
        "fetch": 1,
        "index": 2,
        "resize_train_shard": 2,
        "resize_shard": 1,
        "resize": 1,
        "pca": 1,
        "augment": 1,
        "train": 1,
        "evaluate": 1,
    }
    table = json.loads(Path(layout(run_dir).report("resources", "resources.json")).read_text())
    assert {rule: (r["jobs"], r["total_s"]) for rule, r in table.items()} == {
        rule: (len(times), sum(times)) for rule, times in by_rule.items()
    }
    assert "| train | 1 |" in Path(layout(run_dir).report("resources", "resources.md")).read_text()


@pytest.mark.e2e
def test_second_run_does_nothing(run_dir):
    assert planned_rules(run_dir) == set()


@pytest.mark.e2e
def test_changed_quality_reruns_resize_and_downstream_not_fetch(run_dir):
    override = run_dir / "quality.yaml"
    override.write_text("resize:\n  jpeg_quality: 80\n")
    rules = planned_rules(run_dir, configs=(override,))
    assert "pca" in rules and "train" in rules and "evaluate" in rules
    assert any(r.startswith("resize") for r in rules)
    assert not {"demo", "fetch", "index"} & rules


# --- what a rerun of the train job does (each on its own copy of the finished run)


def copy_run(run_dir: Path, dst: Path, with_train: bool = True) -> Path:
    """A copy of the finished demo run; without results/train and results/evaluate if asked."""

    def skip(folder, names):
        return {"train", "evaluate"} & set(names) if Path(folder) == run_dir / "results" else set()

    shutil.copytree(run_dir, dst, symlinks=True, ignore=None if with_train else skip)
    return dst


def train_rows(work: Path) -> list[dict]:
    return [json.loads(l) for l in Path(layout(work).train().metrics).read_text().splitlines()]


def train_losses(work: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in train_rows(work) if "train_loss" in r}


def train_state(work: Path) -> dict:
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(layout(work).train().last)


def train_mlflow_runs(work: Path) -> list:
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name("alexnet")
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "train"]


@pytest.mark.e2e
def test_forcerun_train_retrains_the_same_run(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path / "f")
    before = train_state(work)
    snakemake(work, "--cores", "2", "--configfile", str(TINY), "--forcerun", "train")
    log = Path(layout(work).log("train")).read_text()
    assert "had finished (epoch 2); a rerun retrains" in log, log[-3000:]
    assert train_state(work)["uid"] != before["uid"]
    assert train_losses(work) == train_losses(run_dir)  # trained again from scratch: same seed, same losses
    assert Path(layout(work).train().previous.last).exists()
    runs = train_mlflow_runs(work)
    assert len(runs) == 2 and [r.data.tags["start"] for r in runs] == ["start", "start"]


@pytest.mark.e2e
def test_a_stalled_forcerun_train_keeps_the_finished_run_and_a_plain_rerun_trains(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path / "s")
    before = train_state(work)
    metrics = Path(layout(work).evaluate().metrics).read_bytes()
    stall = ['train={"lr": 1e-9, "stall_after": 3, "log_every": 3, "init": "caffe"}']
    failed = snakemake(
        work, "--cores", "2", "--configfile", str(TINY), "--forcerun", "train", "--config", *stall, check=False
    )
    assert failed.returncode != 0
    log = Path(layout(work).log("train")).read_text()
    error = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: training stalled: at step 3 (epoch 1)"), log[-3000:]
    assert "ln(4) = 1.386" in error[0] and "fc7" in error[0] and "train.init" in error[0]
    # nothing of the finished run is lost: its checkpoints are set aside, its evaluation stands
    from pipeline.checkpoint import load_checkpoint

    assert load_checkpoint(layout(work).train().previous.last)["uid"] == before["uid"]
    assert Path(layout(work).evaluate().metrics).read_bytes() == metrics
    assert not Path(layout(work).train().summary).exists()

    # a plain rerun does not call the workflow complete: it trains (same seed, same losses) and evaluates
    rerun = snakemake(work, "--cores", "2", "--configfile", str(TINY))
    assert {"train", "evaluate"} <= set(job_stats(rerun.stdout + rerun.stderr)), rerun.stderr[-3000:]
    assert Path(layout(work).train().summary).exists()
    assert train_losses(work) == train_losses(run_dir)
    results = work / "results"
    assert (
        Path(Results(str(results)).evaluate().metrics).stat().st_mtime
        > Path(Results(str(results)).train().summary).stat().st_mtime
    )


def _epochs_override(work: Path, epochs: int) -> Path:
    path = work / f"epochs{epochs}.yaml"
    path.write_text(f"train:\n  epochs: {epochs}\n")
    return path


@pytest.fixture(scope="module")
def extended(run_dir, tmp_path_factory):
    """The finished 2-epoch run with train.epochs raised to 6."""
    work = copy_run(run_dir, tmp_path_factory.mktemp("extend") / "e")
    snakemake(work, "--cores", "2", "--configfile", str(TINY), str(_epochs_override(work, 6)))
    return work


@pytest.mark.e2e
def test_raising_epochs_continues_the_finished_run(run_dir, extended):
    log = Path(layout(extended).log("train")).read_text()
    assert "extending the finished run from epoch 2 to 6 (train.epochs was raised)" in log, log[-3000:]
    original, ext = train_losses(run_dir), train_losses(extended)
    steps = max(original)
    assert {k: ext[k] for k in original} == original and sorted(ext) == list(range(1, 3 * steps + 1))
    runs = train_mlflow_runs(extended)
    assert len(runs) == 1  # the same MLflow run goes on
    run = runs[0]
    assert run.data.tags["start"] == "extend" and run.data.tags["attempts"] == "2" and run.info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{extended}/mlflow.db")
    history = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(history) == sorted(ext)  # each step once, continuing at the same step numbers


@pytest.mark.e2e
def test_killed_training_resumes_the_same_trajectory(run_dir, extended, tmp_path):
    """Killed mid-run under Snakemake, then `--rerun-incomplete`: it continues, losses as uninterrupted."""
    work = copy_run(run_dir, tmp_path / "k", with_train=False)
    (work / "mlflow.db").unlink()
    configs = ["--configfile", str(TINY), str(_epochs_override(work, 6))]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "2", *configs]
    proc = subprocess.Popen(
        cmd, cwd=work, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    jsonl, attempt = Path(layout(work).train().metrics), Path(layout(work).train().attempt)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = jsonl.read_text().splitlines()[:-1] if attempt.exists() and jsonl.exists() else []
            epochs = {json.loads(l).get("epoch") for l in lines if "val_top1_err" in l}
            if 2 in epochs and 6 not in epochs:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the workflow ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = train_state(work)
    assert 2 <= killed["epoch"] < 6 and not Path(layout(work).train().summary).exists()

    snakemake(work, "--unlock", *configs)  # a SIGKILL leaves Snakemake's lock behind, as a power loss would
    snakemake(work, "--cores", "2", *configs, "--rerun-incomplete")
    log = Path(layout(work).log("train")).read_text()
    assert f"resuming after an interruption from {Results().train().last}: epoch {killed['epoch']}" in log
    assert train_state(work)["uid"] == killed["uid"]
    assert train_losses(work) == train_losses(extended)  # the same losses, step for step
    runs = train_mlflow_runs(work)
    assert len(runs) == 1 and runs[0].data.tags["start"] == "resume" and runs[0].info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    history = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")}
    assert history == set(train_losses(work))


@pytest.mark.e2e
def test_forcerun_pca_reruns_pca_and_what_follows(run_dir):
    rules = planned_rules(run_dir, "--forcerun", "pca")
    assert {"pca", "augment", "train", "evaluate"} <= rules
    assert not any(r.startswith("resize") or r in {"demo", "fetch", "index"} for r in rules)


@pytest.mark.e2e
def test_killed_resize_redoes_only_missing_shards(run_dir):
    """As after a kill mid-resize: one shard and the manifest missing, the rest complete."""
    moved = [sorted(Path(layout(run_dir).path("shards", "train")).glob("*.tar"))[0], Path(layout(run_dir).manifest)]
    for path in moved:
        path.rename(path.with_name(path.name + ".moved"))
    try:
        jobs = planned_jobs(run_dir, Results().manifest)
        assert jobs.get("resize_train_shard") == 1, jobs
        assert "resize_shard" not in jobs and "resize" in jobs
        assert not {"demo", "fetch", "index"} & set(jobs)
    finally:
        for path in moved:
            path.with_name(path.name + ".moved").rename(path)


@pytest.mark.e2e
def test_held_out_slice_recuts_the_shards_and_retrains_on_them(run_dir, tmp_path):
    """resize.holdout_per_class on a finished run: the training shards are cut again without the held-out
    images; the training starts over on the new shards and validates on the slice; the evaluation scores val."""
    from pipeline.fingerprint import input_fingerprints
    from pipeline.resources import rule_of
    from pipeline.shards import shard_sample_keys

    work = copy_run(run_dir, tmp_path / "h")
    before = train_state(work)
    before_keys = {k for t in Path(layout(work).path("shards", "train")).glob("*.tar") for k in shard_sample_keys(t)}
    override = work / "holdout.yaml"
    override.write_text("resize:\n  holdout_per_class: 2\n  holdout_shards: 1\n")
    proc = snakemake(work, "--cores", "2", "--configfile", str(TINY), str(override))
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran.get("holdout") == 1 and ran.get("resize_shard") == 1 and ran.get("train") == 1, ran
    # resize_shard ran once: the held-out shard, not the val shards
    assert not {"demo", "fetch", "index"} & set(ran), ran
    results = work / "results"
    manifest = json.loads(Path(Results(str(results)).manifest).read_text())
    held = set(manifest["holdout"]["members"])
    after_keys = {
        k
        for e in manifest["train"]["shards"]
        for k in shard_sample_keys(Path(Results(str(results)).shards_dir, e["tar"]))
    }
    assert len(held) == 2 * len(manifest["classes"])
    assert after_keys | held == before_keys and not after_keys & held
    bench = Path(Results(str(results)).benchmarks)  # the resources table files the new jobs under their own rules
    assert {"holdout", "resize_shard"} <= {rule_of(f.relative_to(bench)) for f in bench.rglob("*.tsv")}
    # the forecast counts the held-out jobs: the split and its shard, scaled to 2 per class of ImageNet
    measured = forecast.measure(results)
    fc = forecast.forecast(measured)
    assert {"holdout", "resize holdout"} <= set(fc["stages"]), list(fc["stages"])
    assert fc["stages"]["resize holdout"]["jobs"] == 1
    batch = measured["train"]["batch_size"]  # the training shards hold the rest of ImageNet's training set
    assert fc["stages"]["train"]["steps"] == (ILSVRC_TRAIN_IMAGES - 2 * 1000) // batch * 90

    log = Path(Results(str(results)).log("train")).read_text()
    assert "starting over: the shard manifest and the training and validation shards" in log, log[-3000:]
    assert "resuming" not in log and "epoch 1/2" in log  # it trained, from the first epoch
    after = train_state(work)
    assert after["uid"] != before["uid"] and after["epoch"] == 2
    # trained on the new data: the checkpoint's fingerprints are those of the new shards and PCA
    now = input_fingerprints(
        Path(Results(str(results)).manifest),
        Path(Results(str(results)).pca),
        Path(Results(str(results)).mean_image),
        Path(Results(str(results)).classes),
    )
    assert after["config"]["inputs"] == now != before["config"]["inputs"]
    assert sorted(train_losses(work))[0] == 1
    summary = json.loads(Path(Results(str(results)).train().summary).read_text())
    assert summary["validated_on"] == "holdout"
    assert {r["validated_on"] for r in train_rows(work) if "val_top1_err" in r} == {"holdout"}
    from pipeline.checkpoint import load_checkpoint  # evaluation scored the new run's best epoch, on val

    assert load_checkpoint(Results(str(results)).train().best)["uid"] == after["uid"]
    metrics = json.loads(Path(Results(str(results)).evaluate().metrics).read_text())
    assert metrics["val_images"] == manifest["val"]["images"]
    runs = train_mlflow_runs(work)
    assert len(runs) == 2 and {r.data.tags.get("start") for r in runs} == {"start"}


@pytest.mark.e2e
def test_mlflow_store_holds_parent_and_children(run_dir):
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    exp = client.get_experiment_by_name("alexnet")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dataset.name"] == "demo"
    assert "val_top1_err_10crop" in parent.data.metrics
    assert parent.data.metrics["resources.train.jobs"] == 1 and "resources.evaluate.max_s" in parent.data.metrics
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(STAGES) <= set(children), sorted(children)
    for name in STAGES:
        child = children[name]
        assert child.info.status == "FINISHED", name
        assert child.data.params, name
        assert "wall_time_s" in child.data.metrics, name
        assert "logs" in {a.path for a in client.list_artifacts(child.info.run_id)}, name
    fetch_artifacts = {a.path for a in client.list_artifacts(children["fetch"].info.run_id)}
    assert "classes.tsv" in fetch_artifacts
    train = children["train"]
    assert client.get_metric_history(train.info.run_id, "train_loss")
    assert "model" in {a.path for a in client.list_artifacts(train.info.run_id)} or train.outputs.model_outputs


@pytest.mark.e2e
def test_report(run_dir):
    snakemake(run_dir, "--configfile", str(TINY), "--report", "report.html")
    html = (run_dir / "report.html").read_text(errors="replace")
    # the outputs the rules mark with report(), each under its category
    for category in ("PCA", "Augmentation", "Training", "Evaluation", "Resources"):
        assert category in html, category
    for name in (
        "pca.png",
        "grid.png",
        "curve.png",
        "per_class.csv",
        "confusions.csv",
        "comparison.md",
        "resources.md",
    ):
        assert name in html, name


@pytest.mark.integration
def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]


# ---------------------------------------------------------------- the ablation sweep (docs/ablations.md)

SWEEP = """
ablations:
  variants:
    no_lrn: {train: {lrn: false}}
    no_dropout: {train: {dropout: 0.0}}
  train_error_threshold: 90
"""


@pytest.fixture(scope="module")
def sweep(run_dir, tmp_path_factory):
    """The finished tiny run with two variants added: only the variants and the comparison are left to run."""
    work = copy_run(run_dir, tmp_path_factory.mktemp("sweep") / "run")
    (work / "sweep.yaml").write_text(SWEEP)
    proc = snakemake(work, "--cores", "2", "--configfile", str(TINY), str(work / "sweep.yaml"), timeout=1500)
    return work, proc


def variant_model(work: Path, run: str | None) -> dict:
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(Path(work, Results("results").train(run).last))["config"]["model"]


@pytest.mark.e2e
def test_each_variant_trains_its_own_network_and_is_compared(sweep):
    work, proc = sweep
    # everything up to the shards, PCA and the base run is shared: only the variants and the comparison run
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran == {"train_variant": 2, "evaluate_variant": 2, "ablations": 1, "resources": 1}, ran
    base, no_lrn, no_dropout = (
        variant_model(work, None),
        variant_model(work, "no_lrn-s0"),
        variant_model(work, "no_dropout-s0"),
    )
    assert base["lrn"] is True and no_lrn["lrn"] is False and no_lrn["dropout"] == base["dropout"] == 0.5
    assert no_dropout["dropout"] == 0.0 and no_dropout["lrn"] is True

    results = work / "results"
    c = json.loads((results / "ablations/comparison.json").read_text())
    rows = {r["variant"]: r for r in c["variants"]}
    assert set(rows) == {"no_lrn", "no_dropout"}
    assert rows["no_lrn"]["claim"]["top1"] == 1.4 and rows["no_lrn"]["claim"]["section"] == "3.3"
    base_top1 = c["base"][0]["top1_10crop"]
    assert rows["no_lrn"]["top1_10crop"]["mean"] == pytest.approx(rows["no_lrn"]["runs"][0]["top1_10crop"] - base_top1)
    # 12 validation images cannot resolve a 1.4-point claim: the table says so rather than reporting noise
    assert rows["no_lrn"]["top1_10crop"]["verdict"].startswith("cannot show")
    table = (results / "ablations/comparison.md").read_text()
    assert "| no_lrn | 3.3 |" in table and "+1.4 / +1.2" in table and "substantial" in table
    assert (results / "ablations/comparison.png").stat().st_size > 0

    # each variant's runs are tagged with it in MLflow; the comparison's figures reach the parent run
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id])
    tagged = {(r.data.tags.get("stage"), r.data.tags.get("variant")) for r in runs}
    assert {("train", "no_lrn-s0"), ("evaluate", "no_lrn-s0"), ("train", "no_dropout-s0")} <= tagged
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert any("ablation_no_lrn_top1_10crop_diff" in r.data.metrics for r in parent)


@pytest.mark.e2e
def test_rerunning_one_variant_leaves_the_other_untouched(sweep, tmp_path):
    work, _ = sweep
    results = Results(str(work / "results"))
    other = Path(results.train("no_dropout-s0").last)
    other_state = (other.stat().st_mtime_ns, Path(results.train("no_dropout-s0").metrics).read_text())
    redone = Path(results.train("no_lrn-s0").summary)
    before = json.loads(redone.read_text())
    target = Results("results").train("no_lrn-s0").summary  # as the rule names it, from the working folder
    proc = snakemake(work, "--cores", "2", "--configfile", str(TINY), str(work / "sweep.yaml"), "--forcerun", target)
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran == {"train_variant": 1, "evaluate_variant": 1, "ablations": 1, "resources": 1}, ran
    log = Path(results.log("train_variant", "no_lrn-s0")).read_text()
    assert "epoch 1/2" in log and "resuming" not in log  # it trained again, from the first epoch
    after = json.loads(redone.read_text())
    assert after["steps"] == before["steps"]
    assert (other.stat().st_mtime_ns, Path(results.train("no_dropout-s0").metrics).read_text()) == other_state


@pytest.mark.integration
def test_the_sweep_preset_plans_one_training_per_variant(tmp_path):
    import yaml

    preset = REPO / "workflow/presets/ablations.yaml"
    variants = yaml.safe_load(preset.read_text())["ablations"]["variants"]
    proc = snakemake(tmp_path, "-n", "--configfile", str(preset))
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran["train_variant"] == ran["evaluate_variant"] == len(variants) >= 8, ran
    assert ran["train"] == 1 and ran["ablations"] == 1


@pytest.mark.integration
def test_seeds_train_every_variant_and_the_base_recipe_once_per_seed(tmp_path):
    """ablations.seeds [0, 1] from the command line (strings there): each variant twice, and the base
    recipe once more for seed 1, its seed-0 run being the workflow's own training."""
    preset = REPO / "workflow/presets/ablations.yaml"
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(preset), "--config", "ablations={seeds: [0, 1]}")
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran["train_variant"] == ran["evaluate_variant"] == 2 * 8 + 1 and ran["train"] == 1, ran
    out = proc.stdout + proc.stderr
    assert "--out-dir results/ablations/base-s1/train" in out and "--out-dir results/ablations/base-s0/" not in out
    assert "--seeds 0 1 --base-seed 0" in out
