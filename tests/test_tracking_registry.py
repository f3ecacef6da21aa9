"""pipeline.tracking.registry: provenance of a model version, and the evaluation's tags on it.

Logging and registering a real model, and serving it: tests/test_serve.py.
"""

import json

import pytest
from mlflow import MlflowClient

from pipeline.fingerprint import file_digest
from pipeline.tracking.parent import CODE_VERSION, CONFIG_SNAPSHOT, code_version
from pipeline.tracking.registry import (
    EVALUATION_TAGS,
    REPOSITORY,
    RegistryError,
    evaluation_tags,
    read_record,
    tag_registered_version,
    version_provenance,
)

ERRORS = {
    "val_top1_err_10crop": 41.5,
    "val_top5_err_10crop": 18.25,
    "val_top1_err_center": 43.0,
    "val_top5_err_center": 20.0,
    "val_images": 200,
}


@pytest.mark.unit
def test_read_record_names_what_is_wrong(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("[1]")
    with pytest.raises(RegistryError, match=r"r.json holds list; expected an object with keys \['name'\]"):
        read_record(path, ("name",))
    path.write_text("{")
    with pytest.raises(RegistryError, match="r.json is not JSON"):
        read_record(path, ("name",))
    path.write_text('{"name": "m"}')
    assert read_record(path, ("name",)) == {"name": "m"}


@pytest.mark.unit
def test_evaluation_tags_are_the_headline_errors_of_all_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({k: ERRORS[k] for k in EVALUATION_TAGS[:2]}))
    (tmp_path / "b.json").write_text(json.dumps({k: ERRORS[k] for k in EVALUATION_TAGS[2:]} | {"val_images": 3}))
    assert evaluation_tags([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == {
        "val_top1_err_10crop": "41.5",
        "val_top5_err_10crop": "18.25",
        "val_top1_err_center": "43.0",
        "val_top5_err_center": "20.0",
    }
    with pytest.raises(RegistryError, match=r"no 'val_top1_err_center' in the --metrics files \[.*a.json'\]"):
        evaluation_tags([str(tmp_path / "a.json")])


class ArtifactClient:
    def __init__(self):
        self.artifacts = []

    def log_artifact(self, run_id, path):
        self.artifacts.append((run_id, path))


@pytest.mark.unit
def test_provenance_from_the_parent_runs_folder(tmp_path):
    tracking = tmp_path / ".tracking"
    tracking.mkdir()
    (tracking / CODE_VERSION).write_text(json.dumps({"git_commit": "abc", "git_dirty": "true"}))
    (tracking / CONFIG_SNAPSHOT).write_text("train: {epochs: 2}\n")
    (tmp_path / "train.json").write_text(json.dumps({"inputs": {"manifest": "m1", "pca": "p1"}}))
    client = ArtifactClient()
    tags = version_provenance(client, "run-1", str(tracking / "parent_run_id"), str(tmp_path / "train.json"))
    assert tags == {
        "git_commit": "abc",
        "git_dirty": "true",
        "config": "runs:/run-1/config.yaml",
        "inputs.manifest": "m1",
        "inputs.pca": "p1",
    }
    assert client.artifacts == [("run-1", str(tracking / CONFIG_SNAPSHOT))]


@pytest.mark.unit
def test_provenance_without_a_parent_run_is_this_code_and_says_the_config_is_missing(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"inputs": {"manifest": "m1"}}))
    client = ArtifactClient()
    tags = version_provenance(client, "run-1", None, str(tmp_path / "train.json"))
    assert (REPOSITORY / "pipeline" / "tracking" / "registry.py").is_file()
    assert tags["git_commit"] == code_version(REPOSITORY)["git_commit"]
    assert tags["config"] == "not recorded: the workflow's onstart did not leave config.yaml (no --parent-file)"
    assert client.artifacts == []
    (tmp_path / "train.json").write_text(json.dumps({"inputs": {}}))
    with pytest.raises(RegistryError, match="key 'inputs' is {}; expected the training data's fingerprints"):
        version_provenance(client, "run-1", None, str(tmp_path / "train.json"))


@pytest.mark.integration
def test_evaluation_tags_the_registered_version_of_its_checkpoint_only(tmp_path, capsys):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    client.create_registered_model("alexnet-t")
    version = client.create_model_version("alexnet-t", source=str(tmp_path), tags={"git_commit": "abc"})
    (tmp_path / "best.pt").write_bytes(b"the registered weights")
    (tmp_path / "last.pt").write_bytes(b"other weights")
    record = tmp_path / "registered_model.json"
    record.write_text(
        json.dumps(
            {"name": "alexnet-t", "version": version.version, "checkpoint_sha256": file_digest(tmp_path / "best.pt")}
        )
    )
    (tmp_path / "metrics.json").write_text(json.dumps(ERRORS))

    def tag(checkpoint, record_file=record, metrics="metrics.json"):
        return tag_registered_version(
            client, "run-id", str(record_file), str(tmp_path / checkpoint), [str(tmp_path / metrics)]
        )

    def version_tags():
        return client.get_model_version("alexnet-t", version.version).tags

    # evaluate.checkpoint: last is not what the version holds
    assert tag("last.pt") is None
    assert "last.pt is not the checkpoint of alexnet-t version 1" in capsys.readouterr().err
    assert version_tags() == {"git_commit": "abc"}
    # no record: tracking was off for training, or its registration failed
    assert tag("best.pt", tmp_path / "none.json") is None
    assert "no registered model version recorded in" in capsys.readouterr().err
    (tmp_path / "partial.json").write_text(json.dumps({"val_top1_err_10crop": 41.5}))
    with pytest.raises(RegistryError, match=r"no 'val_top5_err_10crop' in the --metrics files \[.*partial.json'\]"):
        tag("best.pt", metrics="partial.json")
    assert version_tags() == {"git_commit": "abc"}  # nothing set before all errors are known
    record.write_text(json.dumps({"name": "alexnet-t", "version": version.version}))
    with pytest.raises(RegistryError, match="registered_model.json has no key 'checkpoint_sha256'"):
        tag("best.pt")
    record.write_text(
        json.dumps(
            {"name": "alexnet-t", "version": version.version, "checkpoint_sha256": file_digest(tmp_path / "best.pt")}
        )
    )
    expected = {k: str(ERRORS[k]) for k in EVALUATION_TAGS} | {"evaluate_run": "run-id"}
    assert tag("best.pt") == expected
    assert version_tags() == {"git_commit": "abc", **expected}
