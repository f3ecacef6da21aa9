# Training (pipeline/train.py): the paper's recipe (section 5) on model/alexnet.py.
#
# What a rerun of this job does (the stage decides, logs one line saying why,
# and the MLflow run gets it as the tags start / start_reason):
# - after an interruption (killed, preempted, crashed; `--rerun-incomplete`
#   where Snakemake asks for it) it continues from checkpoints/last.pt and
#   reproduces the uninterrupted run's losses; its MLflow run continues too;
# - after changed inputs (shards, manifest, PCA, mean image, class list: the
#   checkpoint stores their content fingerprints) or changed settings it
#   starts over;
# - a rerun of a run that had finished (--forcerun train, -R train, a rerun of
#   anything upstream) starts over;
# - raising train.epochs on a finished run extends it to the new count, in
#   the same MLflow run: the one change that asks to continue.
# Starting over moves the replaced run's checkpoints and metrics to
# train/previous/ (one generation kept); its best model stays logged in MLflow.
#
# Why best.pt is declared but last.pt is not: Snakemake deletes a job's
# declared outputs before it runs the job again (after a kill, with
# --rerun-incomplete) and after the job fails. The state a resume needs
# therefore lives in files this rule does not declare: checkpoints/last.pt
# (rewritten every epoch), checkpoints/epoch-NNN.pt (the best epoch so far),
# checkpoints/finished.json (the mark of a run that reached its end) and
# metrics.jsonl. best.pt, a hard link to epoch-NNN.pt, is declared so that
# evaluation depends on it, and a resume recreates it. train.json is written
# last; attempt.json and mlflow_run.json record how the latest attempt
# started and which MLflow run it logs to.
#
# The MLflow model (and the registered version) is the checkpoint the evaluate
# stage scores: best.pt, or last.pt where evaluate.checkpoint is last (the
# ImageNet preset: the final network, as the paper reports), so the
# evaluation's errors can become the version's tags (common.smk logged_checkpoint).

# GPUs: resources gpu=N is only a counter; the stage picks its devices itself.
# With more GPUs than one replica uses (train.devices: one device, or two for
# the paper's split), the rule starts one DDP replica per share via torchrun.


rule train:
    input:
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        classes=LAYOUT.classes,
    output:
        json=LAYOUT.train().summary,
        curve=report(LAYOUT.train().curve, category="Training", labels={"figure": "training curve"}),
        best=LAYOUT.train().best,
    log:
        LAYOUT.log("train"),
    benchmark:
        LAYOUT.benchmark("train")
    conda:
        CONDA_ENV
    threads: 256  # every core the job is given: Snakemake caps a rule's threads at --cores
    resources:
        gpu=TRAIN["gpus"],
        dali_threads=dali_threads,  # runtime, not a param: the images do not depend on it (common.smk)
    params:
        out_dir=output_dir,
        settings=train_settings(),
        torch_threads=torch_threads,
    message:
        f"Training AlexNet (width {TRAIN['width']}, {TRAIN['epochs']} epochs, batch {TRAIN['batch_size']}, "
        f"lr {TRAIN['lr']}) on {train_devices()}"
    shell:
        tracked(
            "train",
            metrics="{output.json}",
            artifact=["{output.curve}"],
            jsonl=LAYOUT.train().metrics,
            model=logged_checkpoint(),
            mean_image="{input.mean_image}",
            classes="{input.classes}",
            attempt=LAYOUT.train().attempt,
            register=REGISTERED_MODEL,
            fingerprints="{output.json}",
            gpus=monitored_gpus(),
        )
        + TRAIN_COMMAND
