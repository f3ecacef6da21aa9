# Trainability (pipeline/trainability.py), part of the preflight: each candidate init of
# preflight.trainability_inits trains for preflight.trainability_steps on the preflight's data
# with the ImageNet preset's recipe, and the forecast says where each left ln(classes) and which
# the real run should use. Without a GPU the job only records that it did not train (2,500
# full-width steps take hours per init on a CPU), unless preflight.trainability_on_cpu.


rule trainability:
    input:
        manifest=LAYOUT.manifest,
        pca=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        classes=LAYOUT.classes,
    output:
        json=LAYOUT.report("trainability", "trainability.json"),
    log:
        LAYOUT.log("trainability"),
    benchmark:
        LAYOUT.benchmark("trainability")
    conda:
        CONDA_ENV
    threads: 256  # every core the job is given, as the train job
    resources:
        gpu=min(TRAIN["gpus"], 1),
        dali_threads=dali_threads,
    params:
        out_dir=output_dir,
        inits=" ".join(PREFLIGHT["trainability_inits"]),
        steps=PREFLIGHT["trainability_steps"],
        on_cpu="--on-cpu" if PREFLIGHT["trainability_on_cpu"] else "",
        settings=train_settings(),
    message:
        "Trainability: {params.inits}, {params.steps} steps each"
    shell:
        tracked("trainability", artifact=["{output.json}"])
        + "python -m pipeline.trainability --manifest {input.manifest} --pca {input.pca} "
        "--mean-image {input.mean_image} --classes {input.classes} --out-dir {params.out_dir} "
        "--inits {params.inits} --steps {params.steps} {params.on_cpu} -- {params.settings} "
        "--torch-threads {threads} --dali-threads {resources.dali_threads}"
