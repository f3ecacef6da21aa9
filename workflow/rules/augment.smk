# DALI augmentation (pipeline/augment.py; paper, section 4.1), between PCA and
# training. The training and evaluation stages run the same pipelines
# in-process; this rule builds them once on the real shards and records what
# they do: grid.png (augmented training samples beside their originals, the
# crop box drawn) and augment.json (images/s of the training, centre-crop and
# ten-crop pipelines at the training batch size). The device is picked at run
# time (cuda:0 if torch sees a GPU, else the CPU), so the rule runs anywhere.


rule augment:
    input:
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
    output:
        json=LAYOUT.augment,
        grid=report(LAYOUT.augment_grid, category="Augmentation", labels={"figure": "augmented training samples"}),
    log:
        LAYOUT.log("augment"),
    benchmark:
        LAYOUT.benchmark("augment")
    conda:
        CONDA_ENV
    threads: 8  # DALI CPU threads (at most --cores; a profile's set-threads changes it)
    resources:
        gpu=min(1, config["train"]["gpus"]),
    params:
        out_dir=output_dir,
        # the training pipeline at the training batch size and seed
        settings=settings_flags("augment", batch_size=config["train"]["batch_size"], seed=config["train"]["seed"]),
    message:
        f"Building the DALI training and test pipelines (lighting {config['augment']['lighting']}, "
        f"normalize {config['augment']['normalize']}): sample grid and throughput"
    shell:
        tracked("augment", metrics="{output.json}", artifact=["{output.grid}", "{output.json}"], gpus=monitored_gpus())
        + "python -m pipeline.augment --manifest {input.manifest} --pca {input.pca} "
        "--mean-image {input.mean_image} --out-dir {params.out_dir} {params.settings} --dali-threads {threads} --device auto"
