"""A stage's child run: opened (or reopened for a continued training), its params, its outcome.

Without an attempt file the child run is created at once. With one (written
by a resumable stage as it starts: action resume | extend | start, why, uid,
from_step), the run is opened once the stage has written it: a resumed or
extended training whose uid matches the recorded run continues that run (its
metrics go on at the same steps); anything else gets a new run. The decision
is set as tags (start, start_reason, run_uid) and the run id recorded in
ATTEMPT_RECORD beside the attempt file.

Every `--flag value` of the stage command becomes a parameter; when the
command ends, the numeric leaves of its metrics files, its artifacts, its log
and (for training) its model are logged (`log_outcome`). What the tracking
failed to do is kept by `TrackingErrors`: warnings, the tag tracking_error,
and the record file <log stem>.tracking_error.json beside the stage's log.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import read_json, write_text
from pipeline.tracking.access import PARAM_VALUE_LIMIT, TAG_VALUE_LIMIT, log_metrics, log_params, redact, retry
from pipeline.tracking.registry import ModelFiles, log_model

ATTEMPT_RECORD = "mlflow_run.json"  # beside the stage's attempt file: which MLflow run its training uses
ERROR_RECORD_SUFFIX = ".tracking_error.json"  # beside the stage's log: what the tracking failed to do


def flatten(obj, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {'a.b': x}; bools, strings, lists skipped."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix[:-1]] = float(obj)
    return out


def cli_params(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a stage command, redacted; a bare flag counts as 'true'."""
    params: dict[str, str] = {}
    i = 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(command) and not command[i + 1].startswith("--"):
                    value = command[i + 1]
                    i += 1
                else:
                    value = "true"
            params[name.replace("-", "_")] = redact(value)[:PARAM_VALUE_LIMIT]
        i += 1
    return params


def read_json_or_none(path: Path):
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


class StageRunOpener:
    """Creates the stage's MLflow child run, or reopens the run of the training it continues.

    Called as `opener(final)` by the metrics follower: returns (run_id,
    resumed_at step) or None while the stage has not written its attempt file
    yet (`final`: the stage has ended; open a run whatever it wrote).
    """

    def __init__(
        self,
        client,
        experiment_id: str,
        stage: str,
        command: list[str],
        parent: str | None = None,
        attempt_file: str | Path | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.client, self.exp, self.stage, self.command, self.parent = client, experiment_id, stage, command, parent
        self.tags = tags or {}
        self.attempt_file = Path(attempt_file) if attempt_file else None
        self.record_path = self.attempt_file.with_name(ATTEMPT_RECORD) if self.attempt_file else None
        if self.attempt_file:
            self.attempt_file.unlink(missing_ok=True)  # the stage writes this attempt's own

    def __call__(self, final: bool = False) -> tuple[str, int] | None:
        attempt = read_json_or_none(self.attempt_file) if self.attempt_file else None
        if self.attempt_file and attempt is None and not final:
            return None
        run_id, skip = self._continued_run(attempt)
        if run_id is None:
            run_id = self._new_run()
        self._log_params(run_id)
        if attempt:
            self._record_start(run_id, attempt)
        return run_id, skip

    def _continued_run(self, attempt: dict | None) -> tuple[str | None, int]:
        """(run id, step it had reached) of the training this attempt continues, or (None, 0)."""
        record = read_json_or_none(self.record_path) if self.record_path else None
        if not (
            attempt and attempt.get("action") in ("resume", "extend") and record and record.get("uid") == attempt["uid"]
        ):
            return None, 0
        run_id = self._reopen(record["run_id"])
        return run_id, int(attempt.get("from_step", 0)) if run_id else 0

    def _new_run(self) -> str:
        tags = {"stage": self.stage, **self.tags}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        name = " ".join([self.stage, *self.tags.values()])  # "train no_lrn" beside "train" in the UI
        return retry(self.client.create_run, self.exp, run_name=name, tags=tags).info.run_id

    def _record_start(self, run_id: str, attempt: dict) -> None:
        for key, value in (
            ("start", attempt.get("action")),
            ("start_reason", attempt.get("why")),
            ("run_uid", attempt.get("uid")),
        ):
            retry(self.client.set_tag, run_id, key, str(value)[:TAG_VALUE_LIMIT])
        write_text(self.record_path, json.dumps({"run_id": run_id, "uid": attempt.get("uid")}) + "\n")

    def _reopen(self, run_id: str) -> str | None:
        try:
            run = self.client.get_run(run_id)
        except Exception:  # deleted, or another tracking store: start a new run
            return None
        if run.info.lifecycle_stage != "active":
            return None
        retry(self.client.update_run, run_id, status="RUNNING")
        attempts = int(run.data.tags.get("attempts", "1")) + 1
        retry(self.client.set_tag, run_id, "attempts", str(attempts))
        if self.parent and self.parent != run.data.tags.get("mlflow.parentRunId"):
            retry(self.client.set_tag, run_id, "resumed_under_parent", self.parent)
        return run_id

    def _log_params(self, run_id: str) -> None:
        have = self.client.get_run(run_id).data.params
        # a continued run keeps its first values (MLflow params are write-once); the
        # settings that decide resuming are equal by construction, runtime ones may differ
        log_params(self.client, run_id, {k: v for k, v in cli_params(self.command).items() if k not in have})


@dataclass(frozen=True)
class StageOutputs:
    """What a stage leaves to log once its command has succeeded."""

    metrics: tuple[str, ...] = ()  # JSON files whose numeric leaves become the run's metrics
    parent_metrics: tuple[str, ...] = ()  # JSON files logged on the parent run as well
    parent_note: str | None = None  # markdown that becomes the parent run's description
    artifacts: tuple[str, ...] = ()  # files or folders
    model: ModelFiles | None = None  # a checkpoint logged as the run's MLflow model


def log_outcome(
    client, tracking_uri: str, run_id: str, outputs: StageOutputs, ok: bool, parent: str | None, wall: float, log: Path
):
    """Metrics, artifacts and model of a finished stage command; returns the logged model's ModelInfo or None."""
    metrics = {"wall_time_s": wall}
    if ok:
        for path in outputs.metrics:
            metrics.update(flatten(read_json(path)))
    log_metrics(client, run_id, metrics)
    if ok and parent:
        _log_on_parent(client, parent, outputs)
    model_info = None
    if ok:
        _log_artifacts(client, run_id, outputs.artifacts)
        if outputs.model:
            model_info = log_model(tracking_uri, run_id, outputs.model)
    if log.exists():
        client.log_artifact(run_id, str(log), "logs")
    return model_info


def _log_on_parent(client, parent: str, outputs: StageOutputs) -> None:
    for path in outputs.parent_metrics:
        log_metrics(client, parent, flatten(read_json(path)))
    if outputs.parent_note:  # the run's description: the first thing its page shows
        client.set_tag(parent, "mlflow.note.content", Path(outputs.parent_note).read_text()[:TAG_VALUE_LIMIT])


def _log_artifacts(client, run_id: str, artifacts: tuple[str, ...]) -> None:
    for artifact in artifacts:
        if Path(artifact).is_dir():
            client.log_artifacts(run_id, artifact, Path(artifact).name)
        elif Path(artifact).exists():
            client.log_artifact(run_id, artifact)


def error_record(log: str | Path) -> Path:
    """Where a stage's tracking failures are recorded: beside its log, results/logs/pca.log -> pca.tracking_error.json."""
    log = Path(log)
    return log.with_name(log.stem + ERROR_RECORD_SUFFIX)


class TrackingErrors:
    """The tracking failures of one stage command, none of which is the stage's failure.

    Each is a warning on stderr as it happens; at the end (`finish`) they are
    appended to the job's log, set as the run's tag tracking_error where the
    server still takes it, and written to the record file beside the log
    (`error_record`), which a run without failures removes.
    """

    def __init__(self, stage: str, log: str | Path, tracking_uri: str | None):
        self.stage, self.log, self.uri = stage, Path(log), tracking_uri
        self.path = error_record(log)
        self.path.unlink(missing_ok=True)  # an earlier run's: this one says whether it stands
        self.errors: list[dict[str, str]] = []
        self.warnings: list[str] = []

    def add(self, what: str, why: str) -> None:
        self._warn(f"{what}: {why}")
        self.errors.append({"what": what, "why": why})

    def _warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)
        self.warnings.append(f"warning: {message}")

    def finish(self, client, run_id: str | None, exit_status: int) -> None:
        """Tag the run (when there is one), then append the warnings to the log and write the record."""
        if not self.errors:
            return
        if client is not None and run_id:
            message = "; ".join(f"{e['what']}: {e['why']}" for e in self.errors)
            try:
                retry(client.set_tag, run_id, "tracking_error", message[:TAG_VALUE_LIMIT])
            except Exception as exc:  # the same outage or refusal, most likely
                self._warn(f"could not set the tag tracking_error on run {run_id} either: {redact(exc)}")
        try:
            with open(self.log, "a") as out:
                out.write("".join(f"{line}\n" for line in self.warnings))
        except OSError as exc:
            print(f"warning: could not append the tracking warnings to {self.log}: {exc}", file=sys.stderr)
        record = {
            "stage": self.stage,
            "exit_status": exit_status,
            "tracking_uri": redact(self.uri) if self.uri else None,
            "run_id": run_id,
            "errors": self.errors,
        }
        write_text(self.path, json.dumps(record, indent=2) + "\n")
