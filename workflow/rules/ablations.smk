# The ablation sweep (pipeline/ablations.py, docs/ablations.md): each variant of
# ablations.variants changes train.* or augment.* keys of the base recipe and
# trains and evaluates as its own job, {variant} being <name>-s<seed>
# (results/ablations/<name>-s<seed>/train, evaluate). Everything up to the
# shards and PCA is shared; the base run is the workflow's own training. One
# variant reruns alone (snakemake --forcerun train_variant -- <its train.json>),
# and adding a variant trains only it. Each run's MLflow runs are tagged
# variant=<name>-s<seed>; the comparison's figures go to the parent run.
# With no variants (the default) these rules are never asked for.


rule train_variant:
    input:
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        classes=LAYOUT.classes,
    output:
        json=LAYOUT.train("{variant}").summary,
        curve=LAYOUT.train("{variant}").curve,
        best=LAYOUT.train("{variant}").best,
    log:
        LAYOUT.log("train_variant", "{variant}"),
    benchmark:
        LAYOUT.benchmark("train_variant", "{variant}")
    wildcard_constraints:
        variant="|".join(SWEEP_RUNS) or "no_sweep",
    conda:
        CONDA_ENV
    threads: 256  # as rule train
    resources:
        gpu=TRAIN["gpus"],
        dali_threads=dali_threads,
    params:
        out_dir=output_dir,
        settings=variant_train_settings,
        torch_threads=torch_threads,
    message:
        "Training the ablation variant {wildcards.variant}"
    shell:
        tracked(
            "train",
            tag=["variant={wildcards.variant}"],
            metrics="{output.json}",
            artifact=["{output.curve}"],
            jsonl=LAYOUT.train("{wildcards.variant}").metrics,
            attempt=LAYOUT.train("{wildcards.variant}").attempt,
            gpus=monitored_gpus(),
        )
        + TRAIN_COMMAND


rule evaluate_variant:
    input:
        checkpoint=evaluate_input,
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        classes=LAYOUT.classes,
    output:
        metrics=LAYOUT.evaluate("{variant}").metrics,
        per_class=LAYOUT.evaluate("{variant}").per_class,
        confusions=LAYOUT.evaluate("{variant}").confusions,
        comparison=LAYOUT.evaluate("{variant}").comparison,
        plot=LAYOUT.evaluate("{variant}").per_class_plot,
    log:
        LAYOUT.log("evaluate_variant", "{variant}"),
    benchmark:
        LAYOUT.benchmark("evaluate_variant", "{variant}")
    wildcard_constraints:
        variant="|".join(SWEEP_RUNS) or "no_sweep",
    conda:
        CONDA_ENV
    threads: 8  # as rule evaluate
    resources:
        gpu=TRAIN["gpus"],
    params:
        checkpoint=evaluated_checkpoint,
        settings=variant_evaluate_settings,
        out_dir=output_dir,
    message:
        "Ten-crop evaluation of the ablation variant {wildcards.variant}"
    shell:
        tracked(
            "evaluate",
            tag=["variant={wildcards.variant}"],
            metrics="{output.metrics}",
            artifact=["{output.comparison}"],
            gpus=monitored_gpus(),
        )
        + EVALUATE_COMMAND


rule ablations:
    input:
        sweep_inputs,
    output:
        json=LAYOUT.ablations("comparison.json"),
        metrics=LAYOUT.ablations("metrics.json"),
        table=report(
            LAYOUT.ablations("comparison.md"), category="Ablations", labels={"table": "variants against the paper"}
        ),
        plot=report(
            LAYOUT.ablations("comparison.png"), category="Ablations", labels={"figure": "top-1 error per variant"}
        ),
    log:
        LAYOUT.log("ablations"),
    conda:
        CONDA_ENV
    params:
        results=results_root,
        out_dir=output_dir,
        sweep=sweep_flags(),
    message:
        f"Comparing {len(ABLATIONS['variants'])} ablation variants with the base run, seeds {SWEEP_SEEDS}"
    shell:
        tracked(
            "ablations",
            metrics="{output.metrics}",
            parent_metrics="{output.metrics}",
            artifact=["{output.table}", "{output.plot}", "{output.json}"],
        )
        + "python -m pipeline.ablations --results {params.results} {params.sweep} --out-dir {params.out_dir}"
