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
include: "workflow/rules/trainability.smk"
include: "workflow/rules/ablations.smk"
include: "workflow/rules/forecast.smk"
include: "workflow/rules/resources.smk"


onstart:
    if TRACKING["enabled"]:
        from pipeline.tracking.access import redact
        from pipeline.tracking.parent import start_parent

        run_id = start_parent(
            TRACKING_URI,
            TRACKING["experiment"],
            PARENT_FILE,
            run_name=f"workflow {config['dataset']['name']}",
            params=flat_config(config),
            tags={"dataset": config["dataset"]["name"], "command": shlex.join(sys.argv)[:5000]},
            code_dir=workflow.basedir,
            config=config,
        )
        print(f"MLflow: parent run {run_id} in {redact(TRACKING_URI)}", file=sys.stderr)


onsuccess:
    if TRACKING["enabled"]:
        from pipeline.tracking.parent import end_parent

        end_parent(TRACKING_URI, PARENT_FILE, "FINISHED")


onerror:
    if TRACKING["enabled"]:
        from pipeline.tracking.parent import end_parent

        end_parent(TRACKING_URI, PARENT_FILE, "FAILED")


# The training's summary is a target of its own: after a failed training (whose outputs Snakemake
# removes) the evaluation's older outputs would otherwise satisfy the run, and a plain rerun would
# call the workflow complete with no trained network behind it.
rule all:
    default_target: True
    input:
        LAYOUT.augment,
        LAYOUT.train().summary,
        LAYOUT.evaluate().metrics,
        [LAYOUT.report("forecast", "forecast.json")] if config["preflight"]["forecast"] else [],
        LAYOUT.report("resources", "resources.json"),
        [LAYOUT.ablations("comparison.json")] if ABLATIONS["variants"] else [],
