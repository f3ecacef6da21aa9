# Per-job resources (pipeline/resources.py): every job's benchmark file,
# gathered per rule into one table for `snakemake --report` and the MLflow
# parent run. It runs last (its inputs are the chain's final outputs) and on
# the submitting host: reading a few hundred small files is no cluster job.
# It writes no benchmark of its own: it could only count in the next table.


localrules:
    resources,


rule resources:
    input:
        LAYOUT.augment,
        LAYOUT.evaluate().metrics,
        [LAYOUT.report("forecast", "forecast.json")] if config["preflight"]["forecast"] else [],
        [LAYOUT.ablations("comparison.json")] if ABLATIONS["variants"] else [],
    output:
        json=LAYOUT.report("resources", "resources.json"),
        metrics=LAYOUT.report("resources", "metrics.json"),
        table=report(
            LAYOUT.report("resources", "resources.md"),
            category="Resources",
            labels={"table": "time, memory and I/O per rule"},
        ),
    log:
        LAYOUT.log("resources"),
    conda:
        CONDA_ENV
    params:
        benchmarks=LAYOUT.benchmarks,
        out_dir=output_dir,
    message:
        "Gathering the jobs' benchmark files into resources per rule"
    shell:
        tracked(
            "resources",
            metrics="{output.metrics}",
            artifact=["{output.table}", "{output.json}"],
            parent_metrics="{output.metrics}",
        )
        + "python -m pipeline.resources --benchmarks {params.benchmarks} --out-dir {params.out_dir}"
