# Helpers shared by the stage files: paths, and the tracking prefix every
# tracked rule puts before its stage command. The config check is Python in
# pipeline/config_check.py, so it is unit-tested without Snakemake and shares
# the fetch stage's rules for sources and MD5s (pipeline/sources.py).
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pipeline.config_check import check_or_exit
from pipeline.layout import ATTEMPT_FILE
from pipeline.schema import AUGMENT_SETTINGS
from pipeline.tracking.access import bound_requests

# Coerces command-line strings, validates, fills in the schema's defaults, and
# checks local sources; exits with the keys at fault.
check_or_exit(config)

RESULTS = config["paths"]["results"]
# Used with --software-deployment-method conda; the default is the pip environment (envs/*.txt).
CONDA_ENV = "../../envs/conda.yaml"
TRACKING = config["tracking"]
PARENT_FILE = f"{RESULTS}/.tracking/parent_run_id"
# Jobs (local or on a cluster) read the store and experiment from the environment
# (an MLFLOW_TRACKING_URI already set there wins over the config),
# so changing them never reruns a stage.
os.environ.setdefault("MLFLOW_TRACKING_URI", TRACKING["tracking_uri"])
os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", TRACKING["experiment"])
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
# Every MLflow request of the jobs and of onstart/onsuccess is bounded: MLflow reads its timeout and
# retries from the environment, which the jobs inherit (a value already set there wins).
bound_requests(TRACKING["request_timeout_s"], TRACKING["request_retries"])
# Each successful training registers a version of this model; the evaluate
# stage tags the version recorded in REGISTERED_FILE with its errors.
REGISTERED_MODEL = f"alexnet-{config['dataset']['name']}"
REGISTERED_FILE = f"{RESULTS}/train/registered_model.json"


def tracked(
    stage,
    metrics=None,
    artifacts=(),
    jsonl=None,
    model=None,
    mean_image=None,
    classes=None,
    parent_metrics=None,
    parent_note=None,
    redact_env=None,
    attempt=None,
    register=None,
    fingerprints=None,
    tag_registered=None,
    evaluated_checkpoint=None,
    gpus=None,
):
    """Shell prefix that runs a stage command in its MLflow child run, output to {log}.

    model: a checkpoint logged as the run's MLflow model, which takes images;
    it packs the mean image and class table given with it. register: the
    registered model that model becomes a new version of, tagged with the data
    fingerprints in `fingerprints` (train.json). tag_registered: the file
    recording that version, tagged with the `metrics` errors when
    `evaluated_checkpoint` is the checkpoint it was made from. gpus: the GPUs the job
    holds (e.g. "{resources.gpu}"), whose utilisation, memory and power join the run's
    system metrics (tracking.system_metrics_s)."""
    parts = ["python -m pipeline.track run", f"--stage {stage}", "--log {log}"]
    if not TRACKING["enabled"]:
        parts.append("--no-tracking")
    parts.append(f"--parent-file {PARENT_FILE}")
    if TRACKING["system_metrics_s"] > 0:
        parts.append(f"--system-metrics-s {TRACKING['system_metrics_s']:g}")
    if gpus:
        parts.append(f"--gpus {gpus}")
    if metrics:
        parts.append(f"--metrics {metrics}")
    for artifact in artifacts:
        parts.append(f"--artifact {artifact}")
    if jsonl:
        parts.append(f"--jsonl {jsonl}")
    if model:
        parts.append(f"--model {model} --mean-image {mean_image} --classes {classes}")
    if parent_metrics:
        parts.append(f"--parent-metrics {parent_metrics}")
    if parent_note:
        parts.append(f"--parent-note {parent_note}")
    if redact_env:
        parts.append(f"--redact-env {redact_env}")
    if attempt:
        parts.append(f"--attempt {attempt}")
    if register:
        parts.append(f"--register {register} --registered-file {REGISTERED_FILE} --fingerprints {fingerprints}")
    if tag_registered:
        parts.append(f"--tag-registered {tag_registered} --evaluated-checkpoint {evaluated_checkpoint}")
    return f"{' '.join(parts)} -- "


def flat_config(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out


# Training devices and replicas (rule train)
TRAIN = config["train"]
PREFLIGHT = config["preflight"]


def cli_flags(settings):
    """A stage's settings as its CLI flags: --key value, booleans as --key / --no-key.

    Rules pass them as one param, so a changed value still reruns exactly the
    stages it feeds (Snakemake compares params), without each key being listed
    twice in the rule.
    """
    flags = []
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def settings_flags(section, keys=None, exclude=(), **extra):
    """config[section]'s settings (`keys`, or all but `exclude`) and `extra` ones, as one flags param."""
    keys = keys or [k for k in config[section] if k not in exclude]
    return cli_flags({**{k: config[section][k] for k in keys}, **extra})


# augment.* keys the training and evaluation pipelines read (grid_samples and bench_batches are the augment
# stage's own)
def train_settings():
    """Every setting of the train stage, from config: train.*, the augmentation, the devices.

    train.gpus is a resource (how many GPUs the job holds), not a flag."""
    return settings_flags(
        "train",
        exclude=("gpus", "devices", "channels_last"),
        devices=train_devices(),
        channels_last=str(TRAIN["channels_last"]).lower(),
        **{k: config["augment"][k] for k in AUGMENT_SETTINGS},
    )


def dali_threads(wildcards, threads):
    """DALI CPU threads per training replica: a runtime knob, not a setting.

    Each sample's augmentation is drawn from the seed, not from the thread that
    runs it, so the thread count never changes the images (identical batches
    with 1 and 3 threads on the demo shards). Half the job's cores, 2 to 8:
    2 threads hold a GPU back, 8 feed it (bench/RESULTS-augment.md). Override
    with --set-resources train:dali_threads=N or in a profile."""
    return min(8, max(2, threads // 2))


def train_devices():
    devices = TRAIN["devices"]
    return ",".join(devices) if isinstance(devices, list) else str(devices)


def monitored_gpus():
    """What the tracking samples GPU metrics of: the job's gpu resource when GPUs are declared;
    otherwise "auto" (the first GPU, if the node has one: devices auto takes it) or the
    explicit devices' count (0 on the CPU)."""
    if TRAIN["gpus"] > 0:
        return "{resources.gpu}"
    if train_devices() == "auto":
        return "auto"
    return str(sum(d.strip().startswith("cuda") for d in train_devices().split(",")))


def gpus_per_replica():
    """GPUs one replica drives: 1, or 2 for the paper's two-column split."""
    return len(TRAIN["devices"]) if isinstance(TRAIN["devices"], list) else 1


def train_replicas(gpus=None):
    """DDP replicas on one node: the job's GPUs over one replica's devices, at least 1."""
    return max(1, int(TRAIN["gpus"] if gpus is None else gpus) // gpus_per_replica())


def launch(module):
    """A stage command through pipeline.launch (docs/cluster.md): the stage itself for one
    process, torchrun for several replicas on a node, srun + torchrun across SLURM nodes.
    Replicas: the GPUs SLURM granted the job on a node, or locally its gpu resource,
    over one replica's GPUs."""
    return (
        f"python -m pipeline.launch --gpus {{resources.gpu}} --gpus-per-process {gpus_per_replica()} "
        f"-- python -m {module}"
    )


# The preflight's forecast (rule forecast)
def parallel_jobs():
    """Jobs this invocation runs at once: --cores locally, at most --jobs on a cluster; this
    machine's cores where no --cores was given (snakemake --report, a dry run)."""
    try:
        cores = workflow.cores
    except WorkflowError:
        cores = os.cpu_count() or 1
    nodes = workflow.nodes
    return min(cores, nodes) if isinstance(nodes, int) and nodes > 0 else cores


def preflight_changes():
    """What the rehearsal changed from the ImageNet preset, for every report it writes."""
    changes = [
        f"generated ImageNet-shaped data ({config['demo']['classes']} classes, "
        f"{config['demo']['train_per_class']} + {config['demo']['val_per_class']} images per class, "
        f"{config['demo'].get('sizes', 'demo')} size mix)"
    ]
    if TRAIN["steps_per_epoch"]:
        changes.append(f"{TRAIN['epochs']} epoch(s) of at most {TRAIN['steps_per_epoch']} steps")
    if config["evaluate"]["max_images"]:
        changes.append(f"evaluation of the first {config['evaluate']['max_images']} validation images only")
    return changes
