"""One stage command inside its MLflow child run, from start to the run's final status.

The order matters: the server is asked for the experiment (and the run, where
it can be known) before the command starts, so a refused login does not wait
for days of training; the command's output goes to the log while its JSONL
metrics stream live; what the finished stage left is logged, registered and
tagged; the run ends FINISHED or FAILED with the command.

Tracking is never the reason a stage's work is lost: the exit status is the
command's. A server that cannot be reached as the stage starts leaves the
stage to run untracked; once the command has run, every tracking failure (a
server gone, a refusal, a registry error) is a warning, the run's tag
tracking_error where it can still be set, and the record file beside the log
(pipeline.tracking.runs.TrackingErrors), and the outputs stand.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.tracking.access import TrackingAccessError, experiment_id, explain, open_client, retry, server_access
from pipeline.tracking.follow import JsonlFollower, run_logged, tail
from pipeline.tracking.registry import ModelFiles, Registration, RegistryError, register_version, tag_registered_version
from pipeline.tracking.runs import StageOutputs, StageRunOpener, TrackingErrors, log_outcome
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
    tags: tuple[tuple[str, str], ...] = ()  # set on the child run, e.g. (("variant", "no_lrn"),) in a sweep


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
    errors: TrackingErrors

    def attempt(self, what: str, resource: str | None, fn, *args):
        """fn(*args); a failure is recorded in `errors`, not the stage's failure. None then."""
        try:
            return fn(*args)
        except Exception as exc:  # the stage's outputs stand even when the store misbehaves
            self.errors.add(what, explain(exc, self.uri, resource or self.on_experiment))
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
    errors = TrackingErrors(command.stage, command.log, tracking.uri if tracking else None)
    if tracking is None:
        return run_logged(command.argv, command.log, command.secret)

    # made first: its CPU reading's baseline then lies before the client's slow start (mlflow's import)
    system = SystemMetrics(tracking.uri, command.system_metrics_s, command.gpus)
    client = open_client(tracking.uri)
    on_experiment = f"experiment {tracking.experiment!r}"
    parent = _parent_run(tracking.parent_file)
    follower = _open_run(command, tracking, client, parent, system, errors)
    if follower is not None:
        follower.start()
    start = time.time()
    status = run_logged(command.argv, command.log, command.secret)
    wall = time.time() - start
    ok = status == 0
    outcome = "succeeded" if ok else f"failed (exit {status})"

    run_id = None
    if follower is not None:
        run = _ChildRun(client, tracking.uri, "", command.stage, parent, tracking.parent_file, on_experiment, errors)
        run.attempt(f"{command.stage} {outcome} but its system metrics were not all logged", None, system.stop)
        run.attempt(f"{command.stage} {outcome} but its step metrics were not all logged", None, follower.stop)
        run_id = follower.run_id
    if run_id is not None:
        run = _ChildRun(
            client, tracking.uri, run_id, command.stage, parent, tracking.parent_file, on_experiment, errors
        )
        _log_results(run, outcome, outputs, ok, wall, command.log, registration, evaluated)
        run.attempt(
            f"{command.stage} {outcome} but its MLflow run could not be ended",
            None,
            retry,
            client.set_terminated,
            run_id,
            "FINISHED" if ok else "FAILED",
        )
    errors.finish(client, run_id, status)
    if not ok:
        print(
            f"\n{command.stage} failed (exit {status}); last lines of {command.log}:\n{tail(command.log)}",
            file=sys.stderr,
        )
    return status


def _open_run(
    command: StageCommand, tracking: Tracking, client, parent: str | None, system: SystemMetrics, errors: TrackingErrors
) -> JsonlFollower | None:
    """The follower of the stage's run, asked for before the command starts; None: the stage runs untracked.

    A refusal (login, permission) stops the wrapper here, before any work: it
    lasts, and is the user's to fix. A server that cannot be reached (it went
    down after the workflow started) is a tracking failure like the later ones.
    """
    on_experiment = f"experiment {tracking.experiment!r}"
    try:
        # checked before the command runs: a refused login should not wait for days of training
        with server_access(tracking.uri, on_experiment):
            opener = StageRunOpener(
                client,
                experiment_id(client, tracking.experiment),
                command.stage,
                command.argv,
                parent,
                command.attempt,
                dict(command.tags),
            )
            follower = JsonlFollower(client, opener, command.jsonl, on_open=system.start)
            follower.ensure_run()
        return follower
    except TrackingAccessError:
        raise
    except Exception as exc:
        errors.add(
            f"{command.stage} ran untracked: MLflow could not be reached as it started", explain(exc, tracking.uri)
        )
        return None


def _parent_run(parent_file: str | None) -> str | None:
    if parent_file and Path(parent_file).exists():
        return Path(parent_file).read_text().strip()
    return None


def _log_results(
    run: _ChildRun,
    outcome: str,
    outputs: StageOutputs,
    ok: bool,
    wall: float,
    log: Path,
    registration: Registration | None,
    evaluated: EvaluatedVersion | None,
) -> None:
    model_info = run.attempt(
        f"{run.stage} {outcome} but MLflow logging failed",
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
