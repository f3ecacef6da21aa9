"""The ablation sweep through the workflow: two variants of the tiny chain, each trained and
evaluated as its own job beside the base run, one comparison; then one variant rerun alone."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.checkpoint import load_checkpoint
from pipeline.layout import Results

from helpers import REPO, TINY, job_stats, snakemake

SWEEP = """
ablations:
  variants:
    no_lrn: {train: {lrn: false}}
    no_dropout: {train: {dropout: 0.0}}
  train_error_threshold: 90
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    (work / "sweep.yaml").write_text(SWEEP)
    proc = snakemake(work, "--cores", "2", "--configfile", str(TINY), str(work / "sweep.yaml"), timeout=1500)
    return work, proc


def variant_model(work: Path, run: str) -> dict:
    return load_checkpoint(Path(work, Results("results").train(run).last))["config"]["model"]


@pytest.mark.e2e
def test_each_variant_trains_its_own_network_and_is_compared(sweep):
    work, proc = sweep
    ran = job_stats(proc.stdout + proc.stderr)
    assert ran.get("train") == 1 and ran.get("train_variant") == 2 and ran.get("evaluate_variant") == 2, ran
    assert ran.get("ablations") == 1 and ran.get("resize_train_shard") == 2, ran  # the shards are shared
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
