"""The flags of `python -m pipeline.track run`, defined once: for its parser, the rules and the tests.

FLAGS lists every flag with its argparse settings; `build_run_parser` makes the
parser from it and `command_prefix` writes a command line from keyword
arguments named as the flags' destinations. A flag added here reaches both.
Standard library only: the workflow imports it while parsing.
"""

from __future__ import annotations

import argparse
import shlex

FLAGS: tuple[tuple[str, dict], ...] = (
    ("--stage", {"required": True}),
    ("--log", {"required": True, "help": "file that receives the command's output"}),
    ("--no-tracking", {"action": "store_true", "help": "only run and log the command"}),
    ("--parent-file", {"help": "file holding the parent run id (written by the Snakefile)"}),
    ("--tracking-uri", {"help": "default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"}),
    ("--experiment", {"help": "default: $MLFLOW_EXPERIMENT_NAME or alexnet"}),
    (
        "--system-metrics-s",
        {
            "type": float,
            "default": 0.0,
            "metavar": "SECONDS",
            "help": "sample the node's CPU, memory, disk, network (and --gpus GPUs) every SECONDS into the "
            "stage's run (MLflow's system metrics); 0: none",
        },
    ),
    (
        "--gpus",
        {
            "default": "0",
            "help": "GPUs the job holds: N (the first N visible ones are sampled) or auto (the first, if the node "
            "has one)",
        },
    ),
    (
        "--tag",
        {
            "action": "append",
            "metavar": "KEY=VALUE",
            "help": "a tag of the stage's run, e.g. variant=no_lrn for a variant of the ablation sweep",
        },
    ),
    ("--metrics", {"action": "append", "help": "JSON file whose numeric leaves are logged as metrics"}),
    ("--artifact", {"action": "append", "help": "file or folder logged as an artifact"}),
    ("--jsonl", {"help": "JSONL file of step metrics, followed while the command runs"}),
    (
        "--model",
        {
            "help": "training checkpoint logged as an MLflow model that classifies images (needs --mean-image "
            "and --classes)"
        },
    ),
    ("--mean-image", {"help": "the pca stage's mean image, packed with --model"}),
    ("--classes", {"help": "the fetch stage's class table, packed with --model"}),
    ("--parent-metrics", {"action": "append", "help": "JSON file logged on the parent run too"}),
    ("--parent-note", {"help": "markdown file that becomes the parent run's description"}),
    ("--redact-env", {"help": "environment variable whose value is masked in the log"}),
    (
        "--attempt",
        {
            "help": "the attempt file a resumable stage writes as it starts (the train stage's); a resumed "
            "training continues its MLflow run"
        },
    ),
    (
        "--register",
        {
            "metavar": "NAME",
            "help": "register the --model as a new version of the registered model NAME (needs "
            "--registered-file, --fingerprints)",
        },
    ),
    ("--registered-file", {"help": "JSON that records the registered version (written with --register)"}),
    (
        "--fingerprints",
        {
            "help": "the train stage's train.json, whose 'inputs' (the training data's fingerprints) become "
            "tags of the registered version"
        },
    ),
    (
        "--tag-registered",
        {
            "metavar": "FILE",
            "help": "a --registered-file: the --metrics' top-1/top-5 errors become tags of that version",
        },
    ),
    (
        "--evaluated-checkpoint",
        {
            "help": "the checkpoint the stage evaluates; with --tag-registered, the version is tagged only if it "
            "was made from this file"
        },
    ),
)


def dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def build_run_parser(run: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for flag, settings in FLAGS:
        run.add_argument(flag, **settings)
    run.add_argument("command", nargs=argparse.REMAINDER)
    return run


def command_args(**options) -> list[str]:
    """`run` and its flags from keyword arguments named as FLAGS' destinations (stage, log, metrics=[...]).

    None, False and empty lists are left out; a list gives one flag per item (append flags), True a bare
    flag. An unknown name is an error, so a typo cannot drop a flag silently."""
    known = {dest(flag): (flag, settings) for flag, settings in FLAGS}
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"no pipeline.track flag for {sorted(unknown)}; the flags are {sorted(known)}")
    args = ["run"]
    for name, (flag, settings) in known.items():
        value = options.get(name)
        if value is None or value is False or value == [] or value == ():
            continue
        if value is True:
            args.append(flag)
        elif settings.get("action") == "append":
            for item in [value] if isinstance(value, str) else value:
                args += [flag, str(item)]
        else:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return args


def command_prefix(**options) -> str:
    """The shell prefix that runs a stage command inside its run: `python -m pipeline.track run ... -- `.

    Values are left unquoted when they are Snakemake placeholders ({log}, {output.json}) so that the rule
    fills them in; anything else is quoted."""
    parts = ["python", "-m", "pipeline.track", *command_args(**options)]
    return " ".join(p if p.startswith("{") or p == shlex.quote(p) else shlex.quote(p) for p in parts) + " -- "
