# Ten-crop evaluation (paper, section 4.1) of the training stage's checkpoint.
# evaluate.checkpoint: best | last | a path to any checkpoint (then training
# need not run at all). The headline errors also go to the parent MLflow run.
# With train.gpus above one replica's devices, torchrun starts one rank per
# share; the ranks split the validation shards and sum their counts.
# best.pt and last.pt come from rule train; anything else is a path to any checkpoint
# (common.smk evaluate_input). last.pt is not a declared output of rule train (see
# train.smk): train.json, written after the final last.pt, stands for it as the input.


rule evaluate:
    input:
        checkpoint=evaluate_input,
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        classes=LAYOUT.classes,
    output:
        metrics=LAYOUT.evaluate().metrics,
        per_class=report(
            LAYOUT.evaluate().per_class, category="Evaluation", labels={"table": "per-class top-1 accuracy"}
        ),
        confusions=report(
            LAYOUT.evaluate().confusions, category="Evaluation", labels={"table": "most confused class pairs"}
        ),
        comparison=report(
            LAYOUT.evaluate().comparison, category="Evaluation", labels={"table": "comparison with the paper"}
        ),
        plot=report(
            LAYOUT.evaluate().per_class_plot, category="Evaluation", labels={"table": "per-class accuracy plot"}
        ),
    log:
        LAYOUT.log("evaluate"),
    benchmark:
        LAYOUT.benchmark("evaluate")
    conda:
        CONDA_ENV
    threads: 8  # DALI CPU threads (at most --cores; a profile's set-threads changes it)
    resources:
        gpu=config["train"]["gpus"],
    params:
        checkpoint=evaluated_checkpoint,
        # evaluate.batch_size and max_images, on the training devices (common.smk)
        settings=evaluate_settings(),
        out_dir=output_dir,
    message:
        "Ten-crop evaluation of {params.checkpoint} on the validation set"
    shell:
        tracked(
            "evaluate",
            metrics="{output.metrics}",
            artifact=["{output.per_class}", "{output.confusions}", "{output.comparison}", "{output.plot}"],
            parent_metrics="{output.metrics}",
            tag_registered=REGISTERED_FILE,
            evaluated_checkpoint="{params.checkpoint}",
            gpus=monitored_gpus(),
        )
        + EVALUATE_COMMAND
