"""The MLflow wrapper: child runs under a parent, params, metrics, artifacts, secrets."""
import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import tool_env
from pipeline.track import cli_params, flatten, start_parent


def wrap(tmp_path, *args, env=None):
    cmd = [sys.executable, "-m", "pipeline.track", "run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
           "--experiment", "t", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=tool_env(**(env or {})), capture_output=True, text=True)


def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("t")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_cli_params_and_flatten():
    assert cli_params(["python", "-m", "x", "--out-dir", "r", "--quality=90", "--fast"]) == {
        "out_dir": "r", "quality": "90", "fast": "true"}
    assert flatten({"a": 1, "b": {"c": 2.5, "d": "s", "e": True}, "f": float("nan")}) == {"a": 1.0, "b.c": 2.5}


def test_child_run_under_parent_with_params_metrics_artifacts(tmp_path):
    parent = start_parent(f"sqlite:///{tmp_path}/m.db", "t", tmp_path / "parent", "workflow", {"k": "v"}, {})
    (tmp_path / "m.json").write_text(json.dumps({"images": 12, "nested": {"rate": 3.5}}))
    (tmp_path / "steps.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    proc = wrap(tmp_path, "--stage", "pca", "--log", "logs/pca.log", "--parent-file", "parent",
                "--metrics", "m.json", "--parent-metrics", "m.json", "--artifact", "m.json",
                "--jsonl", "steps.jsonl", "--", "echo", "hello", "--size", "256")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "logs/pca.log").read_text() == "hello --size 256\n"
    client, by_name = runs(tmp_path)
    child = by_name["pca"]
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.status == "FINISHED"
    assert child.data.params == {"size": "256"}
    assert child.data.metrics["images"] == 12 and child.data.metrics["nested.rate"] == 3.5
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [2.0, 1.0]
    assert by_name["workflow"].data.metrics["images"] == 12
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"m.json", "logs"} <= artifacts


def test_failure_marks_run_failed_and_shows_log_tail(tmp_path):
    proc = wrap(tmp_path, "--stage", "fetch", "--log", "f.log", "--",
                sys.executable, "-c", "import sys; print('error: md5 mismatch'); sys.exit(3)")
    assert proc.returncode == 3
    assert "error: md5 mismatch" in proc.stderr and "fetch failed" in proc.stderr
    _, by_name = runs(tmp_path)
    assert by_name["fetch"].info.status == "FAILED"


@pytest.mark.parametrize("split", [1, 3, 7])
def test_secret_is_masked_even_when_split_across_writes(tmp_path, split):
    token = "s3cr3t-token-value"
    script = ("import os, sys, time; t = os.environ['TOK']; "
              f"sys.stdout.write('auth ' + t[:{split}]); sys.stdout.flush(); time.sleep(0.2); "
              f"sys.stdout.write(t[{split}:] + ' done\\n')")
    proc = wrap(tmp_path, "--stage", "fetch", "--log", "f.log", "--redact-env", "TOK", "--",
                sys.executable, "-c", script, env={"TOK": token})
    assert proc.returncode == 0
    assert (tmp_path / "f.log").read_text() == "auth *** done\n"
    assert token not in proc.stdout + proc.stderr
    assert token.encode() not in (tmp_path / "m.db").read_bytes()
