# Fetch (pipeline/fetch.py): get and verify the ILSVRC-2012 archives, or read
# a class-folder tree, and write the class table and validation labels.
# Local sources (paths, file://) and md5sum files are inputs, so the demo rule
# runs first and a changed file reruns fetch; https:// sources can only be
# params (Snakemake cannot see a remote file change). Archive outputs are
# symlinks: to the local source, or to results/fetch/downloads/, which this
# rule does not declare, so a rerun never deletes a verified download.
# dataset.folders.devkit (optional, default false): with source: folders,
# take class names from dataset.archives.devkit instead of the folder names.
import shlex

from pipeline.sources import ARCHIVES, is_md5_digest, is_remote, local_path

FETCH_DATASET = config["dataset"]
# The dataset.archives entries fetch reads: all three, or only the devkit for folder names.
FETCH_SOURCES = (
    FETCH_DATASET["archives"]
    if FETCH_DATASET["source"] == "archives"
    else {"devkit": FETCH_DATASET["archives"]["devkit"]} if (FETCH_DATASET.get("folders") or {}).get("devkit") else {}
)
FETCH_INPUTS = {key: local_path(src["url"]) for key, src in FETCH_SOURCES.items() if not is_remote(src["url"])}
FETCH_INPUTS.update(
    {f"{key}_md5": local_path(src["md5"]) for key, src in FETCH_SOURCES.items() if not is_md5_digest(src["md5"])}
)
FETCH_OUTPUTS = {
    "classes": f"{RESULTS}/fetch/classes.tsv",
    "val_labels": f"{RESULTS}/fetch/val_labels.tsv",
    "json": f"{RESULTS}/fetch/fetch.json",
}
if FETCH_DATASET["source"] == "archives":
    FETCH_OUTPUTS.update({key: f"{RESULTS}/fetch/{name}" for key, name in ARCHIVES.items()})
# Stage flags carry only the NAME of the auth variable, never its value: flags become MLflow params.
FETCH_ARGS = ["--source", FETCH_DATASET["source"]]
for _key, _src in FETCH_SOURCES.items():
    FETCH_ARGS += [f"--{_key}", _src["url"], f"--{_key}-md5", _src["md5"]]
if FETCH_DATASET["source"] == "folders":
    FETCH_ARGS += ["--train-dir", FETCH_DATASET["folders"]["train"], "--val-dir", FETCH_DATASET["folders"]["val"]]
if FETCH_DATASET.get("auth_env"):
    FETCH_ARGS += ["--auth-env", FETCH_DATASET["auth_env"]]


# Compute nodes of many clusters have no internet: the download and its MD5 check run where
# Snakemake runs (the login node under the SLURM profile; docs/cluster.md), every other job on
# the cluster. On one machine this changes nothing.
localrules:
    fetch,


rule fetch:
    input:
        **FETCH_INPUTS,
    output:
        **FETCH_OUTPUTS,
    log:
        f"{RESULTS}/logs/fetch.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch.tsv"
    conda:
        CONDA_ENV
    params:
        args=shlex.join(FETCH_ARGS),
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        dataset=FETCH_DATASET["name"],
        source=FETCH_DATASET["source"],
    message:
        "Fetching and verifying the {params.dataset} dataset ({params.source})"
    shell:
        tracked(
            "fetch",
            metrics="{output.json}",
            artifacts=["{output.classes}", "{output.val_labels}"],
            redact_env=FETCH_DATASET.get("auth_env"),
        )
        + "python -m pipeline.fetch {params.args} --out-dir {params.out_dir}"
