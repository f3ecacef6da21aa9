# Trainability (pipeline/trainability.py), part of the preflight: each candidate init of
# preflight.trainability_inits trains for preflight.trainability_steps on the preflight's data
# with the ImageNet preset's recipe, and the forecast says where each left ln(classes) and which
# the real run should use. Without a GPU the job only records that it did not train (2,500
# full-width steps take hours per init on a CPU), unless preflight.trainability_on_cpu.


rule trainability:
    input:
        manifest=f"{RESULTS}/shards/manifest.json",
        pca=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
        classes=f"{RESULTS}/fetch/classes.tsv",
    output:
        json=f"{RESULTS}/trainability/trainability.json",
    log:
        f"{RESULTS}/logs/trainability.log",
    benchmark:
        f"{RESULTS}/benchmarks/trainability.tsv"
    conda:
        CONDA_ENV
    threads: 256  # every core the job is given, as the train job
    resources:
        gpu=min(TRAIN["gpus"], 1),
        dali_threads=dali_threads,
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        inits=" ".join(PREFLIGHT["trainability_inits"]),
        steps=PREFLIGHT["trainability_steps"],
        on_cpu="--on-cpu" if PREFLIGHT["trainability_on_cpu"] else "",
        settings=train_settings(),
    message:
        "Trainability: {params.inits}, {params.steps} steps each"
    shell:
        tracked("trainability", artifacts=["{output.json}"])
        + "python -m pipeline.trainability --manifest {input.manifest} --pca {input.pca} "
        "--mean-image {input.mean_image} --classes {input.classes} --out-dir {params.out_dir} "
        "--inits {params.inits} --steps {params.steps} {params.on_cpu} -- {params.settings} "
        "--torch-threads {threads} --dali-threads {resources.dali_threads}"
