# Helpers shared by the stage files: paths, and the tracking prefix every
# tracked rule puts before its stage command. The config check is Python in
# pipeline/config_check.py, so it is unit-tested without Snakemake and shares
# the fetch stage's rules for sources and MD5s (pipeline/sources.py).
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pipeline.config_check import check_or_exit, load_schema, variant_config
from pipeline.layout import SHARD_NUMBER, SOURCE_SPLIT, Results, variant_run
from pipeline.schema import AUGMENT_SETTINGS
from pipeline.sources import ARCHIVES, is_md5_digest, is_remote, local_path
from pipeline.tracking.access import bound_requests
from pipeline.tracking.flags import command_prefix

# Coerces command-line strings, validates, fills in the schema's defaults, and
# checks local sources; exits with the keys at fault.
check_or_exit(config)
SCHEMA_KEYS = {section: spec.get("properties", {}) for section, spec in load_schema()["properties"].items()}

# Every path between stages comes from pipeline/layout.py.
LAYOUT = Results(config["paths"]["results"])
# Used with --software-deployment-method conda; the default is the pip environment (envs/*.txt).
CONDA_ENV = "../../envs/conda.yaml"
TRACKING = config["tracking"]
PARENT_FILE = LAYOUT.parent_run_file
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
REGISTERED_FILE = LAYOUT.train().registered


def tracked(stage, register=None, **options):
    """Shell prefix that runs a stage command in its MLflow child run, output to {log}.

    options: pipeline.track's flags by name (pipeline/tracking/flags.py holds them all), e.g.
    metrics="{output.json}", artifact=[...], model=CHECKPOINT with mean_image and classes (the
    logged model takes images), parent_metrics, tag_registered with evaluated_checkpoint, and
    gpus (the GPUs the job holds, e.g. "{resources.gpu}", whose utilisation, memory and power
    join the run's system metrics). register: the registered model the logged model becomes a
    new version of, recorded in REGISTERED_FILE and tagged with the fingerprints in
    options["fingerprints"] (train.json)."""
    return command_prefix(
        stage=stage,
        log="{log}",
        no_tracking=not TRACKING["enabled"],
        parent_file=PARENT_FILE,
        system_metrics_s=TRACKING["system_metrics_s"] or None,
        register=register,
        registered_file=REGISTERED_FILE if register else None,
        **options,
    )


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


def settings_flags(section, keys=None, exclude=(), cfg=None, **extra):
    """cfg[section]'s settings (`keys`, or all but `exclude`) and `extra` ones, as one flags param.

    In the schema's order, so a command does not change with the order of keys in a config file."""
    cfg = cfg or config
    order = list(SCHEMA_KEYS[section])
    keys = keys or sorted((k for k in cfg[section] if k not in exclude), key=lambda k: order.index(k))
    return cli_flags({**{k: cfg[section][k] for k in keys}, **extra})


# augment.* keys the training and evaluation pipelines read (grid_samples and bench_batches are the augment
# stage's own)
def train_settings(cfg=None):
    """Every setting of the train stage, from the config (or an ablation variant's): train.*, the
    augmentation, the devices.

    train.gpus is a resource (how many GPUs the job holds), not a flag."""
    cfg = cfg or config
    return settings_flags(
        "train",
        exclude=("gpus", "devices", "channels_last"),
        cfg=cfg,
        devices=train_devices(cfg),
        channels_last=str(cfg["train"]["channels_last"]).lower(),
        **{k: cfg["augment"][k] for k in AUGMENT_SETTINGS},
    )


def dali_threads(wildcards, threads):
    """DALI CPU threads per training replica: a runtime knob, not a setting.

    Each sample's augmentation is drawn from the seed, not from the thread that
    runs it, so the thread count never changes the images (identical batches
    with 1 and 3 threads on the demo shards). Half the job's cores, 2 to 8:
    2 threads hold a GPU back, 8 feed it (bench/RESULTS-augment.md). Override
    with --set-resources train:dali_threads=N or in a profile."""
    return min(8, max(2, threads // 2))


def train_devices(cfg=None):
    devices = (cfg or config)["train"]["devices"]
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


# Named functions the rules call for their inputs and params, here so that the rule files hold rules only.
def output_dir(wildcards, output):
    """The folder of a job's first output: the stage's --out-dir."""
    return os.path.dirname(output[0])


def results_root(wildcards, input):
    """paths.results, from a job's first input, which lies two levels below it (results/<stage>/<file>):
    inferred from the files, so it holds wherever the job runs."""
    return os.path.dirname(os.path.dirname(input[0]))


# fetch (workflow/rules/fetch.smk)
DATASET = config["dataset"]


def fetch_sources():
    """The dataset.archives entries fetch reads: all three, or only the devkit for folder names."""
    if DATASET["source"] == "archives":
        return DATASET["archives"]
    return {"devkit": DATASET["archives"]["devkit"]} if (DATASET.get("folders") or {}).get("devkit") else {}


def fetch_inputs():
    """Local sources and md5sum files: files Snakemake can date, so a changed one reruns fetch."""
    inputs = {key: local_path(src["url"]) for key, src in fetch_sources().items() if not is_remote(src["url"])}
    inputs.update(
        {f"{key}_md5": local_path(src["md5"]) for key, src in fetch_sources().items() if not is_md5_digest(src["md5"])}
    )
    return inputs


def fetch_outputs():
    outputs = {"classes": LAYOUT.classes, "val_labels": LAYOUT.val_labels, "json": LAYOUT.fetch_report}
    if DATASET["source"] == "archives":
        outputs.update({key: LAYOUT.archive(key) for key in ARCHIVES})
    return outputs


def fetch_args():
    """The fetch command's flags. They carry only the NAME of the auth variable, never its value:
    flags become MLflow params."""
    args = ["--source", DATASET["source"]]
    for key, src in fetch_sources().items():
        args += [f"--{key}", src["url"], f"--{key}-md5", src["md5"]]
    if DATASET["source"] == "folders":
        args += ["--train-dir", DATASET["folders"]["train"], "--val-dir", DATASET["folders"]["val"]]
    if DATASET.get("auth_env"):
        args += ["--auth-env", DATASET["auth_env"]]
    return shlex.join(args)


# index and resize (workflow/rules/resize.smk)
RESIZE = config["resize"]
# resize.holdout_per_class > 0: a held-out slice of the training set (pipeline/holdout.py) gets its own
# shards, cut from the same training archive; the training shards come from the rows that are left.
HOLDOUT = RESIZE["holdout_per_class"] > 0
SHARD_COUNTS = {
    "train": RESIZE["train_shards"],
    "val": RESIZE["val_shards"],
    **({"holdout": RESIZE["holdout_shards"]} if HOLDOUT else {}),
}
# A folder tree is no file Snakemake can date: its path is only a param, and the index has no archive input.
FROM_FOLDERS = DATASET["source"] == "folders"


def source_archive(wildcards):
    """The fetched archive a split's images come from (none for a folder tree)."""
    return [] if FROM_FOLDERS else [LAYOUT.archive(SOURCE_SPLIT[wildcards.split])]


def source_path(wildcards, input):
    """Where the index and resize commands read a split's images: the archive, or the folder tree."""
    return DATASET["folders"][SOURCE_SPLIT[wildcards.split]] if FROM_FOLDERS else input.source


def shard_index(wildcards):
    return LAYOUT.shard_index(wildcards.split, HOLDOUT)


def shard_files(suffix, splits=None):
    """Every shard's file with `suffix` (.tar, .idx, .json, .stats.npz), over `splits` (default: all)."""
    return [LAYOUT.shard(split, k, suffix) for split in (splits or SHARD_COUNTS) for k in range(SHARD_COUNTS[split])]


def shard_count(wildcards):
    return SHARD_COUNTS[wildcards.split]


def shard_settings(wildcards):
    """resize.* settings of one shard; the shard count is its split's."""
    return settings_flags(
        "resize", ("seed", "jpeg_quality", "max_reject_fraction"), shards=SHARD_COUNTS[wildcards.split]
    )


# train and evaluate (workflow/rules/train.smk, evaluate.smk)
EVALUATE = config["evaluate"]


def torch_threads(wildcards, threads, resources):
    """torch threads per replica, so replicas on the CPU do not oversubscribe the job's cores."""
    return max(1, threads // train_replicas(resources.gpu))


def logged_checkpoint():
    """The checkpoint logged as the MLflow model (and registered): the one the evaluate stage
    scores, so the evaluation's errors can become the version's tags. last.pt is not a declared
    output of rule train (train.smk says why)."""
    return LAYOUT.train().last if EVALUATE["checkpoint"] == "last" else "{output.best}"


def evaluate_input(wildcards):
    """The training output the evaluation waits for: best.pt, or train.json standing for last.pt
    (written after the final last.pt), of the base run or of a sweep run ({variant}). Anything
    else in evaluate.checkpoint is a path to any checkpoint (then training need not run at all);
    a sweep run always scores its own training, its best.pt then."""
    variant = wildcards.get("variant")
    train = LAYOUT.train(variant)
    if EVALUATE["checkpoint"] == "last":
        return train.summary
    return train.best if EVALUATE["checkpoint"] == "best" or variant else EVALUATE["checkpoint"]


def evaluated_checkpoint(wildcards, input):
    """The checkpoint file the evaluation scores: last.pt itself where train.json stood for it."""
    return LAYOUT.train(wildcards.get("variant")).last if EVALUATE["checkpoint"] == "last" else input.checkpoint


# forecast (workflow/rules/forecast.smk)
def forecast_trainability(wildcards, input):
    return " ".join(f"--trainability {path}" for path in input.trainability)


def rehearsal_flags(wildcards):
    return " ".join(f"--rehearsal {shlex.quote(c)}" for c in preflight_changes())


def forecast_cores(wildcards):
    return parallel_jobs()


def evaluate_settings(cfg=None):
    """evaluate.batch_size and max_images, on the training devices."""
    cfg = cfg or config
    return settings_flags(
        "evaluate",
        ("batch_size", "max_images"),
        cfg=cfg,
        dataset_name=cfg["dataset"]["name"],
        devices=train_devices(cfg),
    )


# The stage commands that the base run's rules and the sweep's share.
TRAIN_COMMAND = (
    launch("pipeline.train")
    + " --manifest {input.manifest} --pca {input.pca} --mean-image {input.mean_image} --classes {input.classes}"
    " --out-dir {params.out_dir} {params.settings} --torch-threads {params.torch_threads}"
    " --dali-threads {resources.dali_threads}"
)
EVALUATE_COMMAND = (
    launch("pipeline.evaluate") + " --checkpoint {params.checkpoint} --shards-manifest {input.manifest}"
    " --pca {input.pca} --mean-image {input.mean_image} --classes {input.classes}"
    " {params.settings} --dali-threads {threads} --out-dir {params.out_dir}"
)


# The ablation sweep (workflow/rules/ablations.smk): variant name -> its train.* and augment.* keys.
ABLATIONS = config["ablations"]
SWEEP_SEEDS = ABLATIONS["seeds"] or [TRAIN["seed"]]
# One run per variant and seed; the base recipe also trains for each seed other than train.seed
# (the base run itself is the workflow's own training).
SWEEP_RUNS = {
    variant_run(name, seed): (overrides, seed)
    for name, overrides in {"base": {}, **ABLATIONS["variants"]}.items()
    for seed in SWEEP_SEEDS
    if ABLATIONS["variants"] and not (name == "base" and seed == TRAIN["seed"])
}


def sweep_config(wildcards):
    overrides, seed = SWEEP_RUNS[wildcards.variant]
    return variant_config(config, overrides, seed)


def variant_train_settings(wildcards):
    return train_settings(sweep_config(wildcards))


def variant_evaluate_settings(wildcards):
    return evaluate_settings(sweep_config(wildcards))


def sweep_inputs(wildcards):
    """Every run the comparison reads: the base run's evaluation and each sweep run's."""
    return [LAYOUT.evaluate().metrics, LAYOUT.train().summary] + [
        path for run in SWEEP_RUNS for path in (LAYOUT.evaluate(run).metrics, LAYOUT.train(run).summary)
    ]


def sweep_flags():
    return (
        f"--variants {shlex.quote(json.dumps(ABLATIONS['variants']))} --seeds {' '.join(map(str, SWEEP_SEEDS))}"
        f" --base-seed {TRAIN['seed']} --threshold {ABLATIONS['train_error_threshold']:g}"
    )
