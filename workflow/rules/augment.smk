# DALI augmentation (pipeline/augment.py; paper, section 4.1), between PCA and
# training. The training and evaluation stages run the same pipelines
# in-process; this rule builds them once on the real shards and records what
# they do: grid.png (augmented training samples beside their originals, the
# crop box drawn) and augment.json (images/s of the training, centre-crop and
# ten-crop pipelines at the training batch size). The device is picked at run
# time (cuda:0 if torch sees a GPU, else the CPU), so the rule runs anywhere.

AUGMENT = config["augment"]


rule augment:
    conda:
        CONDA_ENV
    input:
        manifest=f"{RESULTS}/shards/manifest.json",
        pca=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
    output:
        json=f"{RESULTS}/augment/augment.json",
        grid=report(f"{RESULTS}/augment/grid.png", category="Augmentation",
                    labels={"figure": "augmented training samples"}),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        lighting=AUGMENT["lighting"],
        lighting_std=AUGMENT["lighting_std"],
        normalize=AUGMENT["normalize"],
        grid_samples=AUGMENT["grid_samples"],
        bench_batches=AUGMENT["bench_batches"],
        batch_size=config["train"]["batch_size"],
        seed=config["train"]["seed"],
    threads: config["train"]["workers"]  # DALI CPU threads, as in training
    resources:
        gpu=min(1, config["train"]["gpus"]),
    log:
        f"{RESULTS}/logs/augment.log",
    message:
        "Building the DALI training and test pipelines (lighting {params.lighting}, "
        "normalize {params.normalize}): sample grid and throughput"
    shell:
        tracked("augment", metrics="{output.json}", artifacts=["{output.grid}", "{output.json}"])
        + "python -m pipeline.augment --manifest {input.manifest} --pca {input.pca} "
        "--mean-image {input.mean_image} --out-dir {params.out_dir} --lighting {params.lighting} "
        "--lighting-std {params.lighting_std} --normalize {params.normalize} "
        "--grid-samples {params.grid_samples} --bench-batches {params.bench_batches} "
        "--batch-size {params.batch_size} --seed {params.seed} --threads {threads} --device auto"
