# Forecast of the real run (pipeline/forecast.py), at the end of a preflight
# (workflow/presets/preflight.yaml sets preflight.forecast: true): the
# benchmark files of every job and the stages' own reports, scaled to the
# real set's counts, with as many jobs at once as this invocation runs (its
# --cores, or its --jobs on a cluster). Changing them changes the forecast,
# so they are a param: the forecast reruns.


rule forecast:
    input:
        manifest=f"{RESULTS}/shards/manifest.json",
        augment=f"{RESULTS}/augment/augment.json",
        train=f"{RESULTS}/train/train.json",
        evaluate=f"{RESULTS}/evaluate/metrics.json",
        trainability=[f"{RESULTS}/trainability/trainability.json"] if PREFLIGHT["trainability_inits"] else [],
    output:
        json=f"{RESULTS}/forecast/forecast.json",
        metrics=f"{RESULTS}/forecast/metrics.json",
        table=report(
            f"{RESULTS}/forecast/forecast.md",
            category="Forecast",
            labels={"table": "time, memory and disk of the real run"},
        ),
    log:
        f"{RESULTS}/logs/forecast.log",
    conda:
        CONDA_ENV
    params:
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input.manifest)),
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        cores=lambda wildcards: parallel_jobs(),
        settings=settings_flags("preflight", ("train_images", "val_images", "epochs")),
        rehearsal=lambda wildcards: " ".join(f"--rehearsal {shlex.quote(c)}" for c in preflight_changes()),
        trainability=lambda wildcards, input: " ".join(f"--trainability {path}" for path in input.trainability),
    message:
        "Forecasting the real run ({params.cores} cores) from the preflight's costs"
    shell:
        tracked(
            "forecast",
            metrics="{output.metrics}",
            artifacts=["{output.table}", "{output.json}"],
            parent_metrics="{output.metrics}",
            parent_note="{output.table}",
        )
        + "python -m pipeline.forecast --results {params.results} --out-dir {params.out_dir} "
        "--cores {params.cores} {params.settings} {params.rehearsal} {params.trainability}"
