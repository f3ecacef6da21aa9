# Forecast of the real run (pipeline/forecast.py), at the end of a preflight
# (workflow/presets/preflight.yaml sets preflight.forecast: true): the
# benchmark files of every job and the stages' own reports, scaled to the
# real set's counts, with as many jobs at once as this invocation runs (its
# --cores, or its --jobs on a cluster). Changing them changes the forecast,
# so they are a param: the forecast reruns.


rule forecast:
    input:
        manifest=LAYOUT.manifest,
        augment=LAYOUT.augment,
        train=LAYOUT.train().summary,
        evaluate=LAYOUT.evaluate().metrics,
        trainability=[LAYOUT.report("trainability", "trainability.json")] if PREFLIGHT["trainability_inits"] else [],
    output:
        json=LAYOUT.report("forecast", "forecast.json"),
        metrics=LAYOUT.report("forecast", "metrics.json"),
        table=report(
            LAYOUT.report("forecast", "forecast.md"),
            category="Forecast",
            labels={"table": "time, memory and disk of the real run"},
        ),
    log:
        LAYOUT.log("forecast"),
    conda:
        CONDA_ENV
    params:
        results=results_root,
        out_dir=output_dir,
        cores=forecast_cores,
        settings=settings_flags("preflight", ("train_images", "val_images", "epochs")),
        rehearsal=rehearsal_flags,
        trainability=forecast_trainability,
    message:
        "Forecasting the real run ({params.cores} cores) from the preflight's costs"
    shell:
        tracked(
            "forecast",
            metrics="{output.metrics}",
            artifact=["{output.table}", "{output.json}"],
            parent_metrics="{output.metrics}",
            parent_note="{output.table}",
        )
        + "python -m pipeline.forecast --results {params.results} --out-dir {params.out_dir} "
        "--cores {params.cores} {params.settings} {params.rehearsal} {params.trainability}"
