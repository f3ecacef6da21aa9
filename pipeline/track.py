"""MLflow tracking around the stages, from the outside.

Each Snakemake rule runs its stage through

    python -m pipeline.track run --stage pca --log results/logs/pca.log \
        [--metrics FILE.json] [--artifact PATH]... [--jsonl FILE.jsonl] \
        [--model CHECKPOINT --mean-image NPY --classes TSV] [--parent-metrics FILE.json] \
        [--parent-note FILE.md] [--redact-env NAME] [--attempt FILE] \
        [--register NAME --registered-file FILE.json --fingerprints TRAIN.json] \
        [--tag-registered FILE.json --evaluated-checkpoint CHECKPOINT] \
        -- python -m pipeline.pca --stats ... --out-dir ...

which opens a child run under the workflow invocation's parent run, runs the
command with its output written to the log (and echoed to the terminal),
logs every `--flag value` of the stage command as a parameter, streams the
lines of `--jsonl` as step metrics while the command runs (the training
curve shows live in the MLflow UI), and on exit logs the numeric leaves of
`--metrics`, the artifacts, the log and, for training, the model. The run
ends FINISHED or FAILED with the command's exit status.

The value of the environment variable named by `--redact-env` (an auth
token) is replaced by *** in everything written to the log and the terminal.
This module is the command line only; the work is in pipeline.tracking
(logins and refusals: access; the parent run: parent; the registry: registry).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.tracking.access import resolve_uri
from pipeline.tracking.flags import build_run_parser
from pipeline.tracking.registry import ModelFiles, Registration
from pipeline.tracking.runs import StageOutputs
from pipeline.tracking.stage import EvaluatedVersion, StageCommand, Tracking, run_stage


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser and its `run` subparser (whose errors name the verb)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.track", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = build_run_parser(sub.add_parser("run", help="run one stage command inside an MLflow child run"))
    return parser, run


def check_args(run: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model and not (args.mean_image and args.classes):
        run.error("--model needs --mean-image and --classes: the logged model preprocesses and names classes itself")
    if args.register and not (args.model and args.registered_file and args.fingerprints):
        run.error(
            "--register needs --model (what is registered), --registered-file (where the version is "
            "recorded) and --fingerprints (the training data it records)"
        )
    if any("=" not in tag for tag in args.tag or ()):
        run.error("--tag takes KEY=VALUE")
    if args.tag_registered and not (args.evaluated_checkpoint and args.metrics):
        run.error("--tag-registered needs --evaluated-checkpoint and --metrics (the errors it sets as tags)")


def stage_command(args: argparse.Namespace) -> StageCommand:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise SystemExit("error: no stage command given after --")
    secret = os.environ.get(args.redact_env, "").encode() if args.redact_env else None
    tags = tuple(tuple(tag.split("=", 1)) for tag in args.tag or ())
    return StageCommand(
        args.stage,
        argv,
        Path(args.log),
        secret or None,
        args.jsonl,
        args.attempt,
        args.system_metrics_s,
        args.gpus,
        tags,
    )


def stage_outputs(args: argparse.Namespace) -> StageOutputs:
    model = ModelFiles(args.model, args.mean_image, args.classes) if args.model else None
    return StageOutputs(
        tuple(args.metrics or ()), tuple(args.parent_metrics or ()), args.parent_note, tuple(args.artifact or ()), model
    )


def main(argv: list[str] | None = None) -> int:
    parser, run = build_parser()
    args = parser.parse_args(argv)
    check_args(run, args)
    try:
        command = stage_command(args)
        if args.registered_file and not args.register:
            # the flag names the record whatever else is given: an earlier training's must not stand
            Path(args.registered_file).unlink(missing_ok=True)
        tracking = None
        if not args.no_tracking:
            experiment = args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "alexnet")
            tracking = Tracking(resolve_uri(args.tracking_uri), experiment, args.parent_file)
        registration = Registration(args.register, args.registered_file, args.fingerprints) if args.register else None
        evaluated = EvaluatedVersion(args.tag_registered, args.evaluated_checkpoint) if args.tag_registered else None
        return run_stage(command, tracking, stage_outputs(args), registration, evaluated)
    except PipelineError as exc:  # a refused login or permission: one line, as the stages report theirs
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
