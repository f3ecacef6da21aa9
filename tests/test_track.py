"""The MLflow wrapper: child runs under a parent, params, metrics, artifacts, secrets."""
import argparse
import json
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from conftest import tool_env
from pipeline.errors import PipelineError
from pipeline.fingerprint import file_digest
from pipeline.track import (RegistryError, TrackingAccessError, cli_params, code_version, flatten, redact, refusal,
                            resolve_uri, start_parent, tag_registered_version)


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


def test_logins_are_masked_in_what_is_stored(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa55-word")
    assert redact("postgresql://u:pw@db/x and https://tok@h/a@b and sqlite:////a@b/c.db, pa55-word") == (
        "postgresql://***@db/x and https://***@h/a@b and sqlite:////a@b/c.db, ***")
    assert cli_params(["x", "--url", "http://user:pw@host/file.tar"]) == {"url": "http://***@host/file.tar"}
    with pytest.raises(PipelineError, match=r"the tracking URI http://\*\*\*@host:5000 holds a login"):
        resolve_uri("http://u:pa55-word@host:5000")
    assert resolve_uri("postgresql://u:pw@db/x") == "postgresql://u:pw@db/x"  # the database's own login


def test_refused_requests_become_one_error_naming_what_to_set(monkeypatch):
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    unauthenticated = MlflowException("401 != 200", error_code=UNAUTHENTICATED)
    denied = MlflowException("403 != 200", error_code=PERMISSION_DENIED)
    missing = refusal(unauthenticated, "http://h:5000")
    assert isinstance(missing, TrackingAccessError) and isinstance(missing, PipelineError)
    assert str(missing).startswith("the MLflow tracking server http://h:5000 needs a login: export "
                                   "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-pw")
    assert "refused the login of user 'bob'" in str(refusal(unauthenticated, "http://h:5000"))
    assert str(refusal(denied, "http://h:5000", "registered model 'alexnet-x'")).startswith(
        "the MLflow tracking server http://h:5000 denies user 'bob' permission on registered model 'alexnet-x'")
    # an artifact upload refused: requests' HTTPError, maybe inside another exception
    response = requests.Response()
    response.status_code = 401
    wrapped = MlflowException("could not upload")
    wrapped.__cause__ = requests.HTTPError("401 Client Error", response=response)
    assert "refused the login of user 'bob'" in str(refusal(wrapped, "http://h:5000"))
    assert refusal(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), "http://h:5000") is None


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


# --- provenance and the model registry (pipeline.track's part; the real model: tests/test_serve.py)

def git(repo, *args):
    # an identity of its own: the machine running the tests may have none configured
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "code"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("results/\n")
    (repo / "stage.py").write_text("print(1)\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_code_version_names_commit_and_uncommitted_changes(checkout, tmp_path):
    head = git(checkout, "rev-parse", "HEAD")
    assert code_version(checkout) == {"git_commit": head, "git_dirty": "false"}
    (checkout / "results").mkdir()
    (checkout / "results" / "out.json").write_text("{}")  # ignored: outputs are not code changes
    assert code_version(checkout)["git_dirty"] == "false"
    (checkout / "new_stage.py").write_text("print(2)\n")  # untracked code runs as much as edited code
    assert code_version(checkout) == {"git_commit": head, "git_dirty": "true"}
    (checkout / "new_stage.py").unlink()
    (checkout / "stage.py").write_text("print(3)\n")
    assert code_version(checkout)["git_dirty"] == "true"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert code_version(plain) == {"git_commit": "not a git checkout"}


def test_parent_run_records_code_version_and_config(checkout, tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    config = {"dataset": {"name": "demo", "source": "archives"}, "train": {"epochs": 3, "lr": 0.01,
                                                                           "devices": ["cpu"]}}
    parent_file = tmp_path / "results" / ".tracking" / "parent_run_id"
    run_id = start_parent(uri, "t", parent_file, "workflow", {}, {"dataset": "demo"},
                          code_dir=checkout, config=config)
    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    head = git(checkout, "rev-parse", "HEAD")
    assert (tags["git_commit"], tags["git_dirty"], tags["mlflow.source.git.commit"]) == (head, "false", head)
    assert tags["dataset"] == "demo"
    logged = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(open(logged)) == config
    # left beside the parent run file for the jobs, which register model versions
    assert json.loads((parent_file.parent / "code_version.json").read_text()) == {"git_commit": head,
                                                                                  "git_dirty": "false"}
    assert yaml.safe_load((parent_file.parent / "config.yaml").read_text()) == config
    assert parent_file.read_text().strip() == run_id


def test_evaluation_tags_the_registered_version_of_its_checkpoint_only(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    client.create_registered_model("alexnet-t")
    version = client.create_model_version("alexnet-t", source=str(tmp_path), tags={"git_commit": "abc"})
    (tmp_path / "best.pt").write_bytes(b"the registered weights")
    (tmp_path / "last.pt").write_bytes(b"other weights")
    record = tmp_path / "registered_model.json"
    record.write_text(json.dumps({"name": "alexnet-t", "version": version.version,
                                  "checkpoint_sha256": file_digest(tmp_path / "best.pt")}))
    errors = {"val_top1_err_10crop": 41.5, "val_top5_err_10crop": 18.25, "val_top1_err_center": 43.0,
              "val_top5_err_center": 20.0, "val_images": 200}
    (tmp_path / "metrics.json").write_text(json.dumps(errors))

    def tag(checkpoint, record_file=record, metrics="metrics.json"):
        args = argparse.Namespace(tag_registered=str(record_file), evaluated_checkpoint=str(tmp_path / checkpoint),
                                  metrics=[str(tmp_path / metrics)])
        return tag_registered_version(client, "run-id", args)

    # evaluate.checkpoint: last is not what the version holds
    assert tag("last.pt") is None
    assert set(client.get_model_version("alexnet-t", version.version).tags) == {"git_commit"}
    # no record: tracking was off for training, or its registration failed
    assert tag("best.pt", tmp_path / "none.json") is None
    (tmp_path / "partial.json").write_text(json.dumps({"val_top1_err_10crop": 41.5}))
    with pytest.raises(RegistryError, match=r"no 'val_top5_err_10crop' in the --metrics files \[.*partial.json'\]"):
        tag("best.pt", metrics="partial.json")
    record.write_text(json.dumps({"name": "alexnet-t", "version": version.version}))
    with pytest.raises(RegistryError, match="registered_model.json has no key 'checkpoint_sha256'"):
        tag("best.pt")
    record.write_text(json.dumps({"name": "alexnet-t", "version": version.version,
                                  "checkpoint_sha256": file_digest(tmp_path / "best.pt")}))

    # the evaluate stage's wrapper, as the rule runs it
    proc = wrap(tmp_path, "--stage", "evaluate", "--log", "e.log", "--metrics", "metrics.json",
                "--tag-registered", str(record), "--evaluated-checkpoint", "best.pt", "--", "true")
    assert proc.returncode == 0, proc.stderr
    _, by_name = runs(tmp_path)
    assert client.get_model_version("alexnet-t", version.version).tags == {
        "git_commit": "abc", "val_top1_err_10crop": "41.5", "val_top5_err_10crop": "18.25",
        "val_top1_err_center": "43.0", "val_top5_err_center": "20.0", "evaluate_run": by_name["evaluate"].info.run_id}


def test_failed_registration_leaves_the_stage_standing(tmp_path):
    """A model that cannot be logged is not registered: a warning and tracking_error, the stage's exit status 0."""
    stale = tmp_path / "train" / "registered_model.json"
    stale.parent.mkdir()
    stale.write_text('{"name": "alexnet-t", "version": "1"}')  # an earlier training's
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "train.json").write_text(json.dumps({"inputs": {"manifest": "0" * 64}}))
    proc = wrap(tmp_path, "--stage", "train", "--log", "t.log", "--model", "best.pt", "--mean-image", "m.npy",
                "--classes", "c.tsv", "--register", "alexnet-t", "--registered-file", str(stale),
                "--fingerprints", "train.json", "--", "echo", "trained")
    assert proc.returncode == 0, proc.stderr
    assert "warning: train succeeded but MLflow logging failed" in proc.stderr
    assert "warning: train succeeded but registering its model as alexnet-t failed: no model was logged" in proc.stderr
    assert not stale.exists()  # the evaluate stage must not tag the earlier training's version
    client, by_name = runs(tmp_path)
    run = by_name["train"]
    assert run.info.status == "FINISHED" and "registering its model" in run.data.tags["tracking_error"]
    assert client.search_registered_models() == []
