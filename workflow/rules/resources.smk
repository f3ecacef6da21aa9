# Per-job resources (pipeline/resources.py): every job's benchmark file,
# gathered per rule into one table for `snakemake --report` and the MLflow
# parent run. It runs last (its inputs are the chain's final outputs) and on
# the submitting host: reading a few hundred small files is no cluster job.
# It writes no benchmark of its own: it could only count in the next table.


localrules:
    resources,


rule resources:
    input:
        f"{RESULTS}/augment/augment.json",
        f"{RESULTS}/evaluate/metrics.json",
        [f"{RESULTS}/forecast/forecast.json"] if config["preflight"]["forecast"] else [],
    output:
        json=f"{RESULTS}/resources/resources.json",
        metrics=f"{RESULTS}/resources/metrics.json",
        table=report(
            f"{RESULTS}/resources/resources.md",
            category="Resources",
            labels={"table": "time, memory and I/O per rule"},
        ),
    log:
        f"{RESULTS}/logs/resources.log",
    conda:
        CONDA_ENV
    params:
        benchmarks=f"{RESULTS}/benchmarks",
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
    message:
        "Gathering the jobs' benchmark files into resources per rule"
    shell:
        tracked(
            "resources",
            metrics="{output.metrics}",
            artifacts=["{output.table}", "{output.json}"],
            parent_metrics="{output.metrics}",
        )
        + "python -m pipeline.resources --benchmarks {params.benchmarks} --out-dir {params.out_dir}"
