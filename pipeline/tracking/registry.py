"""The trained model in MLflow: logged on the train stage's run, registered, tagged by the evaluation.

With a Registration, the train stage's logged model becomes a new version of
the registered model, tagged with the invocation's provenance (git_commit,
git_dirty, config: the run's copy of config.yaml) and the fingerprints of the
data it was trained on (inputs.manifest, inputs.shards, ...: train.json's
"inputs"); the record file keeps the version (name, version, the checkpoint's
sha256). The evaluate stage then sets its top-1/top-5 errors as tags on that
version, if the checkpoint it evaluated is the one the version was made from.
A registry failure leaves the stage's outputs standing: the caller warns and
sets the run's tag tracking_error.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.fingerprint import file_digest
from pipeline.io import write_json
from pipeline.tracking.access import retry
from pipeline.tracking.parent import CODE_VERSION, CONFIG_SNAPSHOT, code_version

# the evaluate stage's headline errors (pipeline/evaluate.py), tags of the registered version
EVALUATION_TAGS = ("val_top1_err_10crop", "val_top5_err_10crop", "val_top1_err_center", "val_top5_err_center")
# the code this module runs from: the code version of a wrapper run by hand, with no parent run
REPOSITORY = Path(__file__).resolve().parents[2]


class RegistryError(Exception):
    """A registry record or input file that cannot be used, named with its key."""


@dataclass(frozen=True)
class ModelFiles:
    """A training checkpoint and what its logged model packs beside it to take images and name classes."""

    checkpoint: str
    mean_image: str  # the pca stage's mean image
    classes: str  # the fetch stage's class table


@dataclass(frozen=True)
class Registration:
    """Where a logged model is registered, and what the version records."""

    name: str  # the registered model the checkpoint becomes a new version of
    record_file: str  # JSON that records the version, for the evaluate stage
    fingerprints: str  # the train stage's train.json, whose "inputs" become the version's tags


def log_model(tracking_uri: str, run_id: str, model: ModelFiles):
    """The checkpoint's network as the run's pyfunc model "model", which takes images (pipeline/image_model.py)."""
    # four local copies at logging time would each draw a progress bar in the job's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from pipeline.image_model import log_image_model

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        return log_image_model(model.checkpoint, model.mean_image, model.classes, name="model")


def read_record(path: Path, keys: tuple[str, ...]) -> dict:
    """The JSON object in `path`, which must hold `keys`."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise RegistryError(f"{path} holds {type(record).__name__}; expected an object with keys {list(keys)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise RegistryError(f"{path} has no key {missing[0]!r}; expected keys {list(keys)}")
    return record


def version_provenance(client, run_id: str, parent_file: str | None, fingerprints: str) -> dict[str, str]:
    """Tags for a model version: the code and config of the invocation, the data's fingerprints.

    The code version and config are the ones `start_parent` left beside the
    parent run file; the config is logged on `run_id` (a version holds tags,
    not files) and the tag `config` points at it. Without them (the wrapper
    run by hand) the code version is that of the repository holding this package.
    """
    folder = Path(parent_file).parent if parent_file else None
    code_file = folder / CODE_VERSION if folder else None
    if code_file and code_file.exists():
        tags = dict(json.loads(code_file.read_text()))
    else:
        tags = code_version(REPOSITORY)
    config = folder / CONFIG_SNAPSHOT if folder else None
    if config and config.exists():
        client.log_artifact(run_id, str(config))
        tags["config"] = f"runs:/{run_id}/{CONFIG_SNAPSHOT}"
    else:
        tags["config"] = "not recorded: the workflow's onstart did not leave " + (
            str(config) if config else f"{CONFIG_SNAPSHOT} (no --parent-file)"
        )
    inputs = read_record(Path(fingerprints), ("inputs",))["inputs"]
    if not isinstance(inputs, dict) or not inputs:
        raise RegistryError(
            f"{fingerprints}: key 'inputs' is {inputs!r}; expected the training data's "
            "fingerprints {manifest, shards, pca, mean_image, classes}"
        )
    tags.update({f"inputs.{k}": str(v) for k, v in inputs.items()})
    return tags


def register_version(
    client,
    tracking_uri: str,
    run_id: str,
    model_info,
    checkpoint: str,
    registration: Registration,
    parent_file: str | None = None,
) -> dict:
    """Register the run's logged model as a new version of `registration.name`; record it in its record file."""
    import mlflow

    digest = file_digest(checkpoint)
    tags = {**version_provenance(client, run_id, parent_file, registration.fingerprints), "checkpoint_sha256": digest}
    mlflow.set_tracking_uri(tracking_uri)
    version = retry(mlflow.register_model, model_info.model_uri, registration.name, tags=tags)
    record = {
        "name": version.name,
        "version": str(version.version),
        "model_uri": model_info.model_uri,
        "run_id": run_id,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": digest,
    }
    write_json(Path(registration.record_file), record)
    retry(client.set_tag, run_id, "registered_model", f"{version.name}/{version.version}")
    print(f"MLflow: registered {version.name} version {version.version}", file=sys.stderr)
    return record


def tag_registered_version(
    client, run_id: str, record_file: str, evaluated_checkpoint: str, metrics_files: list[str]
) -> dict | None:
    """Set the evaluation's errors (from `metrics_files`) as tags on the version recorded in `record_file`.

    Only when the evaluated checkpoint is the one that version was made from:
    evaluate.checkpoint may name last.pt or any other file. Returns the tags set.
    """
    path = Path(record_file)
    if not path.exists():
        print(
            f"note: no registered model version recorded in {path} (registration off or failed in the "
            "train stage); the evaluation is tagged on no version",
            file=sys.stderr,
        )
        return None
    record = read_record(path, ("name", "version", "checkpoint_sha256"))
    if file_digest(evaluated_checkpoint) != record["checkpoint_sha256"]:
        print(
            f"note: {evaluated_checkpoint} is not the checkpoint of {record['name']} version "
            f"{record['version']} ({path}); its tags are left as they are",
            file=sys.stderr,
        )
        return None
    tags = evaluation_tags(metrics_files)
    tags["evaluate_run"] = run_id
    for key, value in tags.items():
        retry(client.set_model_version_tag, record["name"], record["version"], key, value)
    print(f"MLflow: tagged {record['name']} version {record['version']} with the evaluation's errors", file=sys.stderr)
    return tags


def evaluation_tags(metrics_files: list[str]) -> dict[str, str]:
    """The EVALUATION_TAGS values found in the metrics files, as strings; all of them must be there."""
    tags = {}
    for metrics_file in metrics_files:
        metrics = read_record(Path(metrics_file), ())
        tags.update({k: str(metrics[k]) for k in EVALUATION_TAGS if k in metrics})
    missing = [k for k in EVALUATION_TAGS if k not in tags]
    if missing:
        raise RegistryError(
            f"no {missing[0]!r} in the --metrics files {metrics_files}; the registered version "
            f"is tagged with {list(EVALUATION_TAGS)}"
        )
    return tags
