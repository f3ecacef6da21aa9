"""The real workflow, end to end, on the demo at test size (tests/configs/tiny.yaml).

One run of `snakemake --cores 2` in a temporary folder, then checks on what it
left: outputs, the MLflow store, rerun behaviour, the report and the linter.
"""
import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY, snakemake

STAGES = ["demo", "fetch", "resize", "pca", "augment", "train", "evaluate"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-run")
    snakemake(work, "--cores", "2", "--configfile", str(TINY))
    return work


def planned_jobs(work: Path, *args: str, configs: tuple[Path, ...] = ()) -> dict[str, int]:
    """Jobs per rule that a dry run would execute (from Snakemake's job stats table)."""
    proc = snakemake(work, "-n", *args, "--configfile", str(TINY), *map(str, configs))
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return {}
    text = proc.stdout + proc.stderr
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    return {rule: n for rule, n in counts.items() if rule not in {"total", "all"}}


def planned_rules(work: Path, *args: str, configs: tuple[Path, ...] = ()) -> set[str]:
    return set(planned_jobs(work, *args, configs=configs))


def test_chain_outputs(run_dir):
    results = run_dir / "results"
    metrics = json.loads((results / "evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["val_top1_err_10crop"] <= 100.0  # percent
    assert (results / "fetch/classes.tsv").read_text().count("\n") == 1 + 4
    manifest = json.loads((results / "shards/manifest.json").read_text())
    assert manifest
    assert (results / "pca/pca.json").exists() and (results / "augment/grid.png").exists()
    assert (results / "train/curve.png").exists()


def test_second_run_does_nothing(run_dir):
    assert planned_rules(run_dir) == set()


def test_changed_quality_reruns_resize_and_downstream_not_fetch(run_dir):
    override = run_dir / "quality.yaml"
    override.write_text("resize:\n  jpeg_quality: 80\n")
    rules = planned_rules(run_dir, configs=(override,))
    assert "pca" in rules and "train" in rules and "evaluate" in rules
    assert any(r.startswith("resize") for r in rules)
    assert not {"demo", "fetch", "index"} & rules


def test_forcerun_pca_reruns_pca_and_what_follows(run_dir):
    rules = planned_rules(run_dir, "--forcerun", "pca")
    assert {"pca", "augment", "train", "evaluate"} <= rules
    assert not any(r.startswith("resize") or r in {"demo", "fetch", "index"} for r in rules)


def test_killed_resize_redoes_only_missing_shards(run_dir):
    """As after a kill mid-resize: one shard and the manifest missing, the rest complete."""
    moved = [sorted((run_dir / "results/shards/train").glob("*.tar"))[0], run_dir / "results/shards/manifest.json"]
    for path in moved:
        path.rename(path.with_name(path.name + ".moved"))
    try:
        jobs = planned_jobs(run_dir, "results/shards/manifest.json")
        assert jobs.get("resize_train_shard") == 1, jobs
        assert "resize_val_shard" not in jobs and "resize" in jobs
        assert not {"demo", "fetch", "index"} & set(jobs)
    finally:
        for path in moved:
            path.with_name(path.name + ".moved").rename(path)


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


def test_report(run_dir):
    snakemake(run_dir, "--configfile", str(TINY), "--report", "report.html")
    html = (run_dir / "report.html").read_text(errors="replace")
    assert "pca" in html.lower() and "evaluat" in html.lower()


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]
