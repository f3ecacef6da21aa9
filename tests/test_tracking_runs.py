"""pipeline.tracking.runs: the stage's child run opened, continued for a resumed training, and its params."""

import json

import pytest
from mlflow import MlflowClient

from pipeline.tracking.runs import ATTEMPT_RECORD, StageRunOpener, cli_params, flatten


@pytest.mark.unit
def test_cli_params_and_flatten(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert cli_params(["python", "-m", "x", "--out-dir", "r", "--quality=90", "--fast"]) == {
        "out_dir": "r",
        "quality": "90",
        "fast": "true",
    }
    assert cli_params(["x", "--url", "http://user:pw@host/file.tar"]) == {"url": "http://***@host/file.tar"}
    assert cli_params(["x", "--note", "y" * 7000])["note"] == "y" * 6000  # MLflow's limit
    assert flatten({"a": 1, "b": {"c": 2.5, "d": "s", "e": True}, "f": float("nan")}) == {"a": 1.0, "b.c": 2.5}


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="workflow").info.run_id
    return client, exp, parent


def attempt(path, action, uid, from_step=0):
    path.write_text(json.dumps({"action": action, "why": f"{action} because", "uid": uid, "from_step": from_step}))


@pytest.mark.integration
def test_a_stage_without_attempt_file_gets_a_new_run_at_once(store):
    client, exp, parent = store
    run_id, skip = StageRunOpener(client, exp, "pca", ["python", "--k", "3"], parent)()
    run = client.get_run(run_id)
    assert skip == 0 and run.info.run_name == "pca"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["stage"] == "pca"
    assert run.data.params == {"k": "3"}


@pytest.mark.integration
def test_a_resumed_training_continues_its_run_and_a_new_one_starts_another(store, tmp_path):
    client, exp, parent = store
    attempt_file = tmp_path / "train" / "attempt.json"
    attempt_file.parent.mkdir()
    attempt_file.write_text("{}")  # an earlier attempt's: removed, the stage writes this one's
    opener = StageRunOpener(client, exp, "train", ["t", "--epochs", "2"], parent, attempt_file)
    assert not attempt_file.exists()
    assert opener() is None  # the stage has not said how it starts yet
    attempt(attempt_file, "start", "uid-1")
    first, skip = opener()
    assert skip == 0
    assert json.loads((attempt_file.parent / ATTEMPT_RECORD).read_text()) == {"run_id": first, "uid": "uid-1"}
    client.set_terminated(first, "FAILED")

    resumed = StageRunOpener(client, exp, "train", ["t", "--epochs", "3"], "other-parent", attempt_file)
    attempt(attempt_file, "resume", "uid-1", from_step=40)
    again, skip = resumed()
    assert (again, skip) == (first, 40)
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags["attempts"] == "2" and run.data.tags["resumed_under_parent"] == "other-parent"
    assert (run.data.tags["start"], run.data.tags["start_reason"]) == ("resume", "resume because")
    assert run.data.params == {"epochs": "2"}  # write-once: the first attempt's value stands

    another = StageRunOpener(client, exp, "train", ["t"], parent, attempt_file)
    attempt(attempt_file, "resume", "uid-2", from_step=40)  # another training's uid: not this run
    other, skip = another()
    assert other != first and skip == 0
    assert json.loads((attempt_file.parent / ATTEMPT_RECORD).read_text()) == {"run_id": other, "uid": "uid-2"}


@pytest.mark.integration
def test_a_stage_that_never_wrote_its_attempt_still_gets_a_run_at_the_end(store, tmp_path):
    client, exp, parent = store
    attempt_file = tmp_path / "attempt.json"
    run_id, skip = StageRunOpener(client, exp, "train", ["t"], parent, attempt_file)(final=True)
    tags = client.get_run(run_id).data.tags
    assert skip == 0 and "start" not in tags
    assert not (tmp_path / ATTEMPT_RECORD).exists()


@pytest.mark.integration
def test_a_deleted_run_is_not_reopened(store, tmp_path):
    client, exp, parent = store
    attempt_file = tmp_path / "attempt.json"
    opener = StageRunOpener(client, exp, "train", ["t"], parent, attempt_file)
    attempt(attempt_file, "start", "u")
    first, _ = opener()
    client.delete_run(first)
    extended = StageRunOpener(client, exp, "train", ["t"], parent, attempt_file)
    attempt(attempt_file, "extend", "u", from_step=10)
    second, skip = extended()
    assert second != first and skip == 0
