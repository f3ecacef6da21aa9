# DALI augmentation (pipeline/augment.py; paper, section 4.1), between PCA and
# training. The training and evaluation stages run the same pipelines
# in-process; this rule builds them once on the real shards and records what
# they do: grid.png (augmented training samples beside their originals, the
# crop box drawn) and augment.json (images/s of the training, centre-crop and
# ten-crop pipelines at the training batch size). The device is picked at run
# time (cuda:0 if torch sees a GPU, else the CPU), so the rule runs anywhere.

AUGMENT = config["augment"]


rule augment:
    input:
        manifest=f"{RESULTS}/shards/manifest.json",
        pca=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
    output:
        json=f"{RESULTS}/augment/augment.json",
        grid=report(
            f"{RESULTS}/augment/grid.png", category="Augmentation", labels={"figure": "augmented training samples"}
        ),
    log:
        f"{RESULTS}/logs/augment.log",
    benchmark:
        f"{RESULTS}/benchmarks/augment.tsv"
    conda:
        CONDA_ENV
    threads: 8  # DALI CPU threads (at most --cores; a profile's set-threads changes it)
    resources:
        gpu=min(1, config["train"]["gpus"]),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        # the training pipeline at the training batch size and seed
        settings=settings_flags("augment", batch_size=config["train"]["batch_size"], seed=config["train"]["seed"]),
    message:
        f"Building the DALI training and test pipelines (lighting {AUGMENT['lighting']}, "
        f"normalize {AUGMENT['normalize']}): sample grid and throughput"
    shell:
        tracked(
            "augment", metrics="{output.json}", artifacts=["{output.grid}", "{output.json}"], gpus=monitored_gpus()
        )
        + "python -m pipeline.augment --manifest {input.manifest} --pca {input.pca} "
        "--mean-image {input.mean_image} --out-dir {params.out_dir} {params.settings} --dali-threads {threads} --device auto"
