# Ten-crop evaluation (paper, section 4.1) of the training stage's checkpoint.
# evaluate.checkpoint: best | last | a path to any checkpoint (then training
# need not run at all). The headline errors also go to the parent MLflow run.
# With train.gpus above one replica's devices, torchrun starts one rank per
# share; the ranks split the validation shards and sum their counts.


EVALUATE = config["evaluate"]
# best.pt and last.pt come from rule train; anything else is a path to any checkpoint.
# last.pt is not a declared output of rule train (see train.smk): train.json,
# written after the final last.pt, stands for it as the input.
EVALUATE_INPUT = {"best": f"{RESULTS}/train/checkpoints/best.pt", "last": f"{RESULTS}/train/train.json"}.get(
    str(EVALUATE["checkpoint"]), EVALUATE["checkpoint"]
)


rule evaluate:
    input:
        checkpoint=EVALUATE_INPUT,
        manifest=f"{RESULTS}/shards/manifest.json",
        pca=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
        classes=f"{RESULTS}/fetch/classes.tsv",
    output:
        metrics=f"{RESULTS}/evaluate/metrics.json",
        per_class=report(
            f"{RESULTS}/evaluate/per_class.csv", category="Evaluation", labels={"table": "per-class top-1 accuracy"}
        ),
        confusions=report(
            f"{RESULTS}/evaluate/confusions.csv", category="Evaluation", labels={"table": "most confused class pairs"}
        ),
        comparison=report(
            f"{RESULTS}/evaluate/comparison.md", category="Evaluation", labels={"table": "comparison with the paper"}
        ),
        plot=report(
            f"{RESULTS}/evaluate/per_class.png", category="Evaluation", labels={"table": "per-class accuracy plot"}
        ),
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        CONDA_ENV
    threads: 8  # DALI CPU threads (at most --cores; a profile's set-threads changes it)
    resources:
        gpu=config["train"]["gpus"],
    params:
        checkpoint=lambda wildcards, input: (
            os.path.join(os.path.dirname(input.checkpoint), "checkpoints", "last.pt")
            if EVALUATE["checkpoint"] == "last"
            else input.checkpoint
        ),
        # evaluate.batch_size and max_images, on the training devices (common.smk)
        settings=settings_flags(
            "evaluate", ("batch_size", "max_images"), dataset_name=config["dataset"]["name"], devices=train_devices()
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    message:
        "Ten-crop evaluation of {params.checkpoint} on the validation set"
    shell:
        tracked(
            "evaluate",
            metrics="{output.metrics}",
            artifacts=["{output.per_class}", "{output.confusions}", "{output.comparison}", "{output.plot}"],
            parent_metrics="{output.metrics}",
            tag_registered=REGISTERED_FILE,
            evaluated_checkpoint="{params.checkpoint}",
            gpus=monitored_gpus(),
        )
        + launch("pipeline.evaluate")
        + " --checkpoint {params.checkpoint} --shards-manifest {input.manifest}"
        " --pca {input.pca} --mean-image {input.mean_image} --classes {input.classes}"
        " {params.settings} --dali-threads {threads} --out-dir {params.out_dir}"
