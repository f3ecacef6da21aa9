# Forecast of the real run (pipeline/forecast.py), at the end of a preflight
# (workflow/presets/preflight.yaml sets preflight.forecast: true): the
# benchmark files of every job and the stages' own reports, scaled to the
# real set's counts, with as many jobs at once as this invocation runs (its
# --cores, or its --jobs on a cluster). Changing them changes the forecast,
# so they are a param: the forecast reruns.

PREFLIGHT = config["preflight"]


def parallel_jobs():
    """Jobs this invocation runs at once: --cores locally, at most --jobs on a cluster."""
    nodes = workflow.nodes
    return min(workflow.cores, nodes) if isinstance(nodes, int) and nodes > 0 else workflow.cores


def preflight_changes():
    """What the rehearsal changed from the ImageNet preset, for every report it writes."""
    changes = [f"generated ImageNet-shaped data ({config['demo']['classes']} classes, "
               f"{config['demo']['train_per_class']} + {config['demo']['val_per_class']} images per class, "
               f"{config['demo'].get('sizes', 'demo')} size mix)"]
    if TRAIN["steps_per_epoch"]:
        changes.append(f"{TRAIN['epochs']} epoch(s) of at most {TRAIN['steps_per_epoch']} steps")
    if config["evaluate"]["max_images"]:
        changes.append(f"evaluation of the first {config['evaluate']['max_images']} validation images only")
    return changes


rule forecast:
    conda:
        CONDA_ENV
    input:
        manifest=f"{RESULTS}/shards/manifest.json",
        augment=f"{RESULTS}/augment/augment.json",
        train=f"{RESULTS}/train/train.json",
        evaluate=f"{RESULTS}/evaluate/metrics.json",
    output:
        json=f"{RESULTS}/forecast/forecast.json",
        metrics=f"{RESULTS}/forecast/metrics.json",
        table=report(f"{RESULTS}/forecast/forecast.md", category="Forecast",
                     labels={"table": "time, memory and disk of the real run"}),
    params:
        results=RESULTS,
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        cores=lambda wildcards: parallel_jobs(),
        settings=settings_flags("preflight", ("train_images", "val_images", "epochs")),
        rehearsal=lambda wildcards: " ".join(f"--rehearsal {shlex.quote(c)}" for c in preflight_changes()),
    log:
        f"{RESULTS}/logs/forecast.log",
    message:
        "Forecasting the real run ({params.cores} cores) from the preflight's costs"
    shell:
        tracked("forecast", metrics="{output.metrics}", artifacts=["{output.table}", "{output.json}"],
                parent_metrics="{output.metrics}")
        + "python -m pipeline.forecast --results {params.results} --out-dir {params.out_dir} "
        "--cores {params.cores} {params.settings} {params.rehearsal}"
