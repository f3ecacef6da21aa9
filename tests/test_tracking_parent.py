"""pipeline.tracking.parent: the invocation's parent run, its code version and config."""

import json

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.tracking.parent import CODE_VERSION, CONFIG_SNAPSHOT, code_version, end_parent, start_parent

from helpers import git


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


@pytest.mark.integration
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


@pytest.mark.integration
def test_parent_run_records_code_version_and_config(checkout, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    config = {"dataset": {"name": "demo", "source": "archives"}, "train": {"epochs": 3, "lr": 0.01, "devices": ["cpu"]}}
    parent_file = tmp_path / "results" / ".tracking" / "parent_run_id"
    run_id = start_parent(
        uri,
        "t",
        parent_file,
        "workflow",
        {"db": "postgresql://u:pw@h/x", "n": "3"},
        {"dataset": "demo"},
        code_dir=checkout,
        config=config,
    )
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    tags = run.data.tags
    head = git(checkout, "rev-parse", "HEAD")
    assert (tags["git_commit"], tags["git_dirty"], tags["mlflow.source.git.commit"]) == (head, "false", head)
    assert tags["dataset"] == "demo" and run.info.run_name == "workflow"
    assert run.data.params == {"db": "postgresql://***@h/x", "n": "3"}
    logged = client.download_artifacts(run_id, CONFIG_SNAPSHOT, str(tmp_path))
    assert yaml.safe_load(open(logged)) == config
    # left beside the parent run file for the jobs, which register model versions
    assert json.loads((parent_file.parent / CODE_VERSION).read_text()) == {"git_commit": head, "git_dirty": "false"}
    assert yaml.safe_load((parent_file.parent / CONFIG_SNAPSHOT).read_text()) == config
    assert parent_file.read_text() == run_id + "\n"

    end_parent(uri, parent_file, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"


@pytest.mark.integration
def test_a_parent_outside_git_has_no_ui_commit_tag(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    plain = tmp_path / "plain"
    plain.mkdir()
    run_id = start_parent(uri, "t", tmp_path / "parent_run_id", "workflow", {}, {}, code_dir=plain)
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["git_commit"] == "not a git checkout" and "mlflow.source.git.commit" not in tags
    assert not (tmp_path / CONFIG_SNAPSHOT).exists()


@pytest.mark.unit
def test_end_parent_without_a_parent_file_does_nothing(tmp_path):
    end_parent(f"sqlite:///{tmp_path}/m.db", tmp_path / "none", "FINISHED")
    assert not (tmp_path / "m.db").exists()
