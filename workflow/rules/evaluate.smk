# Ten-crop evaluation (paper, section 4.1) of the training stage's checkpoint.
# evaluate.checkpoint: best | last | a path to any checkpoint (then training
# need not run at all). The headline errors also go to the parent MLflow run.
# With train.gpus above one replica's devices, torchrun starts one rank per
# share; the ranks split the validation shards and sum their counts.


def evaluate_checkpoint():
    """The checkpoint file evaluated (config evaluate.checkpoint)."""
    choice = str(config["evaluate"]["checkpoint"])
    if choice in ("best", "last"):
        return f"{RESULTS}/train/checkpoints/{choice}.pt"
    return choice


def evaluate_checkpoint_input():
    # last.pt is not a declared output of rule train (see train.smk); train.json,
    # written after the final last.pt, stands for it
    if str(config["evaluate"]["checkpoint"]) == "last":
        return f"{RESULTS}/train/train.json"
    return evaluate_checkpoint()


def evaluate_devices():
    devices = config["train"]["devices"]
    return ",".join(devices) if isinstance(devices, list) else devices


def evaluate_launcher():
    """One process, or one torchrun rank per GPU share (each scores its part of the shards)."""
    devices = config["train"]["devices"]
    ranks = max(1, config["train"]["gpus"] // (len(devices) if isinstance(devices, list) else 1))
    if ranks == 1:
        return "python -m pipeline.evaluate"
    return (f"python -m torch.distributed.run --nproc-per-node {ranks} --rdzv-backend c10d "
            "--rdzv-endpoint localhost:0 -m pipeline.evaluate")


rule evaluate:
    input:
        checkpoint=evaluate_checkpoint_input(),
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
        checkpoint=evaluate_checkpoint(),
        dataset=config["dataset"]["name"],
        batch_size=config["evaluate"]["batch_size"],
        devices=evaluate_devices(),
        launcher=evaluate_launcher(),
        threads=config["train"]["workers"],
        out_dir=f"{RESULTS}/evaluate",
    resources:
        gpu=config["train"]["gpus"],
    threads: config["train"]["workers"]
    log:
        f"{RESULTS}/logs/evaluate.log",
    message:
        "Ten-crop evaluation of {params.checkpoint} on the validation set"
    shell:
        tracked(
            "evaluate",
            metrics="{output.metrics}",
            artifacts=["{output.per_class}", "{output.confusions}", "{output.comparison}", "{output.plot}"],
            parent_metrics="{output.metrics}",
        ) + "{params.launcher} --checkpoint {params.checkpoint} --shards-manifest {input.manifest}"
        " --pca {input.pca} --mean-image {input.mean_image} --classes {input.classes}"
        " --dataset-name {params.dataset} --batch-size {params.batch_size} --devices {params.devices}"
        " --threads {params.threads} --out-dir {params.out_dir}"
