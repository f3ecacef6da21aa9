# Fetch (pipeline/fetch.py): get and verify the ILSVRC-2012 archives, or read
# a class-folder tree, and write the class table and validation labels.
# Local sources (paths, file://) and md5sum files are inputs, so the demo rule
# runs first and a changed file reruns fetch; https:// sources can only be
# params (Snakemake cannot see a remote file change). Archive outputs are
# symlinks: to the local source, or to results/fetch/downloads/, which this
# rule does not declare, so a rerun never deletes a verified download.
# dataset.folders.devkit (optional, default false): with source: folders,
# take class names from dataset.archives.devkit instead of the folder names.
# The inputs, outputs and flags come from common.smk (fetch_inputs, fetch_outputs, fetch_args).


# Compute nodes of many clusters have no internet: the download and its MD5 check run where
# Snakemake runs (the login node under the SLURM profile; docs/cluster.md), every other job on
# the cluster. On one machine this changes nothing.
localrules:
    fetch,


rule fetch:
    input:
        **fetch_inputs(),
    output:
        **fetch_outputs(),
    log:
        LAYOUT.log("fetch"),
    benchmark:
        LAYOUT.benchmark("fetch")
    conda:
        CONDA_ENV
    params:
        args=fetch_args(),
        out_dir=output_dir,
        dataset=DATASET["name"],
        source=DATASET["source"],
    message:
        "Fetching and verifying the {params.dataset} dataset ({params.source})"
    shell:
        tracked(
            "fetch",
            metrics="{output.json}",
            artifact=["{output.classes}", "{output.val_labels}"],
            redact_env=DATASET.get("auth_env"),
        )
        + "python -m pipeline.fetch {params.args} --out-dir {params.out_dir}"
