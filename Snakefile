# AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as a workflow:
#   demo/fetch -> index -> resize -> pca -> augment -> train -> evaluate
# Run: snakemake --cores all            (the demo, config.yaml)
#      snakemake --cores all --configfile workflow/presets/imagenet.yaml
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/resize.smk"
include: "workflow/rules/pca.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        f"{RESULTS}/augment/augment.json",
        f"{RESULTS}/evaluate/metrics.json",
    default_target: True
