"""bench/gpu_stages.sh, the stage commands for a GPU host, run on the CPU.

The script is meant for scarce GPU time; this keeps it from breaking
unnoticed when a stage's command line changes. It also shows that every
stage runs from its CLI alone, without Snakemake or MLflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_stages_script_runs_every_stage_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "CPU": "1",
        "WIDTH": "0.0625",
        "COMPILE": "0",
        "TRAIN_PER_CLASS": "30",
        "VAL_PER_CLASS": "4",
        "BENCH_BATCHES": "2",
        "WORK": str(tmp_path / "work"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_stages.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "== all stages passed" in run.stdout
    results = tmp_path / "work" / "results"
    train = json.loads((results / "train" / "train.json").read_text())
    assert train["epochs"] == 4 and train["devices"] == ["cpu"]
    assert "extending the finished run from epoch 3 to 4 (train.epochs was raised)" in run.stdout
    two = json.loads((results / "train2col" / "train.json").read_text())
    assert two["devices"] == ["cpu", "cpu"] and two["epochs"] == 2
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert metrics["val_images"] == 40 and metrics["checkpoint_epoch"] == 4
    assert (results / "augment" / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_preflight_script_forecasts_on_the_cpu(tmp_path):
    """bench/gpu_preflight.sh (the preflight without Snakemake, for the GPU host) at test size."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "CPU": "1",
        "WIDTH": "0.0625",
        "TRAIN_PER_CLASS": "2",
        "VAL_PER_CLASS": "1",
        "TRAINABILITY_STEPS": "4",
        "TRAIN_SHARDS": "8",
        "VAL_SHARDS": "2",
        "STEPS": "3",
        "EPOCHS": "1",
        "BATCH": "16",
        "LOG_EVERY": "1",
        "EVAL_IMAGES": "16",
        "CORES": "2",
        "WORK": str(tmp_path / "work"),
        "OUT": str(out),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_preflight.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    forecast = json.loads((out / "preflight-forecast-forecast.json").read_text())
    assert forecast["measured_on"] == {"train_images": 2000, "val_images": 1000, "train_shards": 8, "val_shards": 2}
    assert forecast["stages"]["resize train"]["jobs"] == 8 and forecast["stages"]["train"]["images_per_s"] > 0
    assert "== loss: first window" in run.stdout and "== preflight:" in run.stdout
    # the trainability stage trained both candidates first, and the forecast reports them
    verdict = json.loads((out / "trainability.json").read_text())
    assert verdict["ran"] and [r["init"] for r in verdict["runs"]] == ["paper", "cuda_convnet2"]
    assert forecast["trainability"] == verdict and (out / "trainability-cuda_convnet2-curve.png").exists()
    assert "## Will it learn?" in (out / "preflight-forecast.md").read_text()
