"""`python -m pipeline.track run`, as the rules call it: child runs under a parent, params, metrics,
artifacts, secrets, the registry. The modules behind it: tests/test_tracking_*.py.
"""

import json

import pytest
from mlflow import MlflowClient

from pipeline.fingerprint import file_digest
from pipeline.tracking.parent import start_parent

from helpers import python_stage, run_tracked, tracked_runs

pytestmark = pytest.mark.integration


def test_child_run_under_parent_with_params_metrics_artifacts(tmp_path):
    parent = start_parent(f"sqlite:///{tmp_path}/m.db", "t", tmp_path / "parent", "workflow", {"k": "v"}, {})
    (tmp_path / "m.json").write_text(json.dumps({"images": 12, "nested": {"rate": 3.5}}))
    (tmp_path / "steps.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
    proc = run_tracked(
        tmp_path,
        "--stage",
        "pca",
        "--log",
        "logs/pca.log",
        "--parent-file",
        "parent",
        "--metrics",
        "m.json",
        "--parent-metrics",
        "m.json",
        "--artifact",
        "m.json",
        "--jsonl",
        "steps.jsonl",
        "--",
        "echo",
        "hello",
        "--size",
        "256",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "logs/pca.log").read_text() == "hello --size 256\n"
    client, by_name = tracked_runs(tmp_path)
    child = by_name["pca"]
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.status == "FINISHED"
    assert child.data.params == {"size": "256"}
    assert child.data.metrics["images"] == 12 and child.data.metrics["nested.rate"] == 3.5
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [2.0, 1.0]
    assert by_name["workflow"].data.metrics["images"] == 12
    assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"m.json", "logs"}
    assert [a.path for a in client.list_artifacts(child.info.run_id, "logs")] == ["logs/pca.log"]
    assert child.data.metrics["wall_time_s"] >= 0 and set(child.data.metrics) == {
        "wall_time_s",
        "images",
        "nested.rate",
        "loss",
    }


def test_failure_marks_run_failed_and_shows_log_tail(tmp_path):
    fails = "import sys; print('error: md5 mismatch'); sys.exit(3)"
    proc = run_tracked(tmp_path, "--stage", "fetch", "--log", "f.log", *python_stage(fails))
    assert proc.returncode == 3
    assert "error: md5 mismatch" in proc.stderr and "fetch failed" in proc.stderr
    client, by_name = tracked_runs(tmp_path)
    failed = by_name["fetch"]
    assert failed.info.status == "FAILED"
    # a failed stage's outputs are not logged, its log and wall time are
    assert set(failed.data.metrics) == {"wall_time_s"}
    assert [a.path for a in client.list_artifacts(failed.info.run_id, "logs")] == ["logs/f.log"]


def test_without_tracking_the_command_only_runs_and_logs(tmp_path):
    proc = run_tracked(tmp_path, "--stage", "pca", "--log", "p.log", "--no-tracking", "--", "echo", "quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.log").read_text() == "quiet\n" and not (tmp_path / "m.db").exists()


def test_flags_that_need_others_are_refused_by_name(tmp_path):
    proc = run_tracked(tmp_path, "--stage", "train", "--log", "t.log", "--model", "best.pt", "--", "true")
    assert proc.returncode == 2 and "--model needs --mean-image and --classes" in proc.stderr
    proc = run_tracked(tmp_path, "--stage", "train", "--log", "t.log")
    assert proc.returncode == 1 and "error: no stage command given after --" in proc.stderr
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("split", [1, 3, 7])
def test_secret_is_masked_even_when_split_across_writes(tmp_path, split):
    token = "s3cr3t-token-value"
    script = (
        "import os, sys, time; t = os.environ['TOK']; "
        f"sys.stdout.write('auth ' + t[:{split}]); sys.stdout.flush(); time.sleep(0.2); "
        f"sys.stdout.write(t[{split}:] + ' done\\n')"
    )
    proc = run_tracked(
        tmp_path, "--stage", "fetch", "--log", "f.log", "--redact-env", "TOK", *python_stage(script), env={"TOK": token}
    )
    assert proc.returncode == 0
    assert (tmp_path / "f.log").read_text() == "auth *** done\n"
    assert token not in proc.stdout + proc.stderr
    assert token.encode() not in (tmp_path / "m.db").read_bytes()


def test_evaluate_wrapper_tags_the_registered_version(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    client.create_registered_model("alexnet-t")
    version = client.create_model_version("alexnet-t", source=str(tmp_path), tags={"git_commit": "abc"})
    (tmp_path / "best.pt").write_bytes(b"the registered weights")
    record = tmp_path / "registered_model.json"
    record.write_text(
        json.dumps(
            {"name": "alexnet-t", "version": version.version, "checkpoint_sha256": file_digest(tmp_path / "best.pt")}
        )
    )
    errors = {
        "val_top1_err_10crop": 41.5,
        "val_top5_err_10crop": 18.25,
        "val_top1_err_center": 43.0,
        "val_top5_err_center": 20.0,
        "val_images": 200,
    }
    (tmp_path / "metrics.json").write_text(json.dumps(errors))
    proc = run_tracked(
        tmp_path,
        "--stage",
        "evaluate",
        "--log",
        "e.log",
        "--metrics",
        "metrics.json",
        "--tag-registered",
        str(record),
        "--evaluated-checkpoint",
        "best.pt",
        "--",
        "true",
    )
    assert proc.returncode == 0, proc.stderr
    _, by_name = tracked_runs(tmp_path)
    assert client.get_model_version("alexnet-t", version.version).tags == {
        "git_commit": "abc",
        "val_top1_err_10crop": "41.5",
        "val_top5_err_10crop": "18.25",
        "val_top1_err_center": "43.0",
        "val_top5_err_center": "20.0",
        "evaluate_run": by_name["evaluate"].info.run_id,
    }
    assert by_name["evaluate"].data.metrics["val_images"] == 200


def test_failed_registration_leaves_the_stage_standing(tmp_path):
    """A model that cannot be logged is not registered: a warning and tracking_error, the stage's exit status 0."""
    stale = tmp_path / "train" / "registered_model.json"
    stale.parent.mkdir()
    stale.write_text('{"name": "alexnet-t", "version": "1"}')  # an earlier training's
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "train.json").write_text(json.dumps({"inputs": {"manifest": "0" * 64}}))
    proc = run_tracked(
        tmp_path,
        "--stage",
        "train",
        "--log",
        "t.log",
        "--model",
        "best.pt",
        "--mean-image",
        "m.npy",
        "--classes",
        "c.tsv",
        "--register",
        "alexnet-t",
        "--registered-file",
        str(stale),
        "--fingerprints",
        "train.json",
        "--",
        "echo",
        "trained",
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: train succeeded but MLflow logging failed" in proc.stderr
    assert "warning: train succeeded but registering its model as alexnet-t failed: no model was logged" in proc.stderr
    assert not stale.exists()  # the evaluate stage must not tag the earlier training's version
    client, by_name = tracked_runs(tmp_path)
    run = by_name["train"]
    assert run.info.status == "FINISHED" and "registering its model" in run.data.tags["tracking_error"]
    assert client.search_registered_models() == []


def test_a_resumed_training_logs_each_step_once(tmp_path):
    """Killed after logging steps 1-9, resumed from its checkpoint at step 7: the stage truncates its
    metrics file to step 7 and computes 8 and 9 again; MLflow's one run holds steps 1-12 once each."""
    stage = (
        "import json, pathlib, sys\n"
        "action, from_step, last, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n"
        "jsonl = pathlib.Path('metrics.jsonl')\n"
        "kept = [l for l in jsonl.read_text().splitlines() if json.loads(l)['step'] <= from_step] "
        "if jsonl.exists() else []\n"
        "rows = [json.dumps({'step': s, 'loss': 100.0 - s}) for s in range(from_step + 1, last + 1)]\n"
        "jsonl.write_text(''.join(l + '\\n' for l in kept))\n"
        "attempt = {'action': action, 'why': 'test', 'uid': 'u1', 'from_step': from_step}\n"
        "pathlib.Path('attempt.json').write_text(json.dumps(attempt))\n"
        "with open(jsonl, 'a') as f:\n"
        "    f.write(''.join(r + '\\n' for r in rows))\n"
        "sys.exit(status)\n"
    )

    def attempt(*args):
        flags = ["--jsonl", "metrics.jsonl", "--attempt", "attempt.json"]
        return run_tracked(tmp_path, "--stage", "train", "--log", "t.log", *flags, *python_stage(stage, *args))

    assert attempt("start", 0, 9, 137).returncode == 137  # killed after step 9, its checkpoint at step 7
    proc = attempt("resume", 7, 12, 0)
    assert proc.returncode == 0, proc.stderr
    client, by_name = tracked_runs(tmp_path)
    run = by_name["train"]
    assert run.info.status == "FINISHED" and run.data.tags["attempts"] == "2"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
