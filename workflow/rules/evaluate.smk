# Ten-crop evaluation (paper, section 4.1) of the training stage's checkpoint.
# evaluate.checkpoint: best | last | a path to any checkpoint (then training
# need not run at all). The headline errors also go to the parent MLflow run.


def evaluate_checkpoint():
    choice = str(config["evaluate"]["checkpoint"])
    if choice in ("best", "last"):
        return f"{RESULTS}/train/checkpoints/{choice}.pt"
    return choice


def evaluate_devices():
    devices = config["train"]["devices"]
    return ",".join(devices) if isinstance(devices, list) else devices


rule evaluate:
    input:
        checkpoint=evaluate_checkpoint(),
        manifest=f"{RESULTS}/shards/manifest.json",
        pca=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
        classes=f"{RESULTS}/fetch/classes.tsv",
    output:
        metrics=f"{RESULTS}/evaluate/metrics.json",
        per_class=report(f"{RESULTS}/evaluate/per_class.csv", category="Evaluation",
                         labels={"table": "per-class top-1 accuracy"}),
        confusions=report(f"{RESULTS}/evaluate/confusions.csv", category="Evaluation",
                          labels={"table": "most confused class pairs"}),
        comparison=report(f"{RESULTS}/evaluate/comparison.md", category="Evaluation",
                          labels={"table": "comparison with the paper"}),
        plot=report(f"{RESULTS}/evaluate/per_class.png", category="Evaluation",
                    labels={"table": "per-class accuracy plot"}),
    params:
        dataset=config["dataset"]["name"],
        batch_size=config["evaluate"]["batch_size"],
        devices=evaluate_devices(),
        threads=config["train"]["workers"],
        out_dir=f"{RESULTS}/evaluate",
    resources:
        gpu=config["train"]["gpus"],
    threads: config["train"]["workers"]
    log:
        f"{RESULTS}/logs/evaluate.log",
    message:
        "Ten-crop evaluation of {input.checkpoint} on the validation set"
    shell:
        tracked(
            "evaluate",
            metrics="{output.metrics}",
            artifacts=["{output.per_class}", "{output.confusions}", "{output.comparison}", "{output.plot}"],
            parent_metrics="{output.metrics}",
        ) + "python -m pipeline.evaluate --checkpoint {input.checkpoint} --shards-manifest {input.manifest}"
        " --pca {input.pca} --mean-image {input.mean_image} --classes {input.classes}"
        " --dataset-name {params.dataset} --batch-size {params.batch_size} --devices {params.devices}"
        " --threads {params.threads} --out-dir {params.out_dir}"
