"""One stage command inside its MLflow child run, from start to the run's final status.

The order matters: the server is asked for the experiment (and the run, where
it can be known) before the command starts, so a refused login does not wait
for days of training; the command's output goes to the log while its JSONL
metrics stream live; what the finished stage left is logged, registered and
tagged, each failure of those a warning and the tag tracking_error (the
stage's outputs stand); the run ends FINISHED or FAILED with the command.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.tracking.access import experiment_id, explain, open_client, retry, server_access
from pipeline.tracking.follow import JsonlFollower, run_logged, tail
from pipeline.tracking.registry import ModelFiles, Registration, RegistryError, register_version, tag_registered_version
from pipeline.tracking.runs import StageOutputs, StageRunOpener, log_outcome, tracking_failed
from pipeline.tracking.system import SystemMetrics


@dataclass(frozen=True)
class StageCommand:
    """The stage's command and what watching it needs."""

    stage: str
    argv: list[str]
    log: Path  # receives the command's output
    secret: bytes | None = None  # masked in the log and on the terminal
    jsonl: str | None = None  # step metrics, followed while the command runs
    attempt: str | None = None  # a resumable stage's attempt file (see pipeline.tracking.runs)
    system_metrics_s: float = 0.0  # sampling interval of the node's system metrics; 0: none
    gpus: str = "0"  # GPUs the job holds, N or auto: their metrics are sampled


@dataclass(frozen=True)
class Tracking:
    """Where the child run goes."""

    uri: str  # already resolved (pipeline.tracking.access.resolve_uri)
    experiment: str
    parent_file: str | None = None  # holds the invocation's parent run id


@dataclass(frozen=True)
class EvaluatedVersion:
    """The registered version an evaluation may tag with its errors."""

    record_file: str  # a Registration's record file
    checkpoint: str  # the checkpoint the stage evaluated


@dataclass(frozen=True)
class _ChildRun:
    """The finished stage's run and what reporting a failure to log on it needs."""

    client: object
    uri: str
    run_id: str
    stage: str
    parent: str | None  # the parent run's id
    parent_file: str | None  # where it was read; beside it, the invocation's code version and config
    on_experiment: str  # what a refusal names when a request needs no other permission

    def attempt(self, what: str, resource: str | None, fn, *args):
        """fn(*args); a failure is a warning and the tag tracking_error, not the stage's failure. None then."""
        try:
            return fn(*args)
        except Exception as exc:  # the stage's outputs stand even when the store misbehaves
            tracking_failed(self.client, self.run_id, what, explain(exc, self.uri, resource or self.on_experiment))
            return None


def run_stage(
    command: StageCommand,
    tracking: Tracking | None,
    outputs: StageOutputs = StageOutputs(),
    registration: Registration | None = None,
    evaluated: EvaluatedVersion | None = None,
) -> int:
    """Run the stage command, tracked unless `tracking` is None; returns its exit status."""
    if registration:
        # a record left by an earlier training must not be taken for this one's
        Path(registration.record_file).unlink(missing_ok=True)
    if tracking is None:
        return run_logged(command.argv, command.log, command.secret)

    # made first: its CPU reading's baseline then lies before the client's slow start (mlflow's import)
    system = SystemMetrics(tracking.uri, command.system_metrics_s, command.gpus)
    client = open_client(tracking.uri)
    on_experiment = f"experiment {tracking.experiment!r}"
    parent = _parent_run(tracking.parent_file)
    # checked before the command runs: a refused login should not wait for days of training
    with server_access(tracking.uri, on_experiment):
        opener = StageRunOpener(
            client, experiment_id(client, tracking.experiment), command.stage, command.argv, parent, command.attempt
        )
        follower = JsonlFollower(client, opener, command.jsonl, on_open=system.start)
        follower.ensure_run()
    follower.start()
    start = time.time()
    status = run_logged(command.argv, command.log, command.secret)
    wall = time.time() - start
    system.stop()
    with server_access(tracking.uri, on_experiment):
        run_id = follower.stop()

    ok = status == 0
    run = _ChildRun(client, tracking.uri, run_id, command.stage, parent, tracking.parent_file, on_experiment)
    try:
        _log_results(run, outputs, ok, wall, command.log, registration, evaluated)
    finally:
        with server_access(tracking.uri, on_experiment):
            retry(client.set_terminated, run_id, "FINISHED" if ok else "FAILED")
    if not ok:
        print(
            f"\n{command.stage} failed (exit {status}); last lines of {command.log}:\n{tail(command.log)}",
            file=sys.stderr,
        )
    return status


def _parent_run(parent_file: str | None) -> str | None:
    if parent_file and Path(parent_file).exists():
        return Path(parent_file).read_text().strip()
    return None


def _log_results(
    run: _ChildRun,
    outputs: StageOutputs,
    ok: bool,
    wall: float,
    log: Path,
    registration: Registration | None,
    evaluated: EvaluatedVersion | None,
) -> None:
    model_info = run.attempt(
        f"{run.stage} succeeded but MLflow logging failed",
        None,
        log_outcome,
        run.client,
        run.uri,
        run.run_id,
        outputs,
        ok,
        run.parent,
        wall,
        log,
    )
    if ok and registration:
        run.attempt(
            f"{run.stage} succeeded but registering its model as {registration.name} failed",
            f"registered model {registration.name!r}",
            _register,
            run,
            model_info,
            outputs.model,
            registration,
        )
    if ok and evaluated:
        run.attempt(
            f"{run.stage} succeeded but tagging the registered model version failed",
            f"the registered model recorded in {evaluated.record_file}",
            tag_registered_version,
            run.client,
            run.run_id,
            evaluated.record_file,
            evaluated.checkpoint,
            list(outputs.metrics),
        )


def _register(run: _ChildRun, model_info, model: ModelFiles, registration: Registration) -> dict:
    if model_info is None:
        raise RegistryError("no model was logged")
    return register_version(
        run.client, run.uri, run.run_id, model_info, model.checkpoint, registration, run.parent_file
    )
