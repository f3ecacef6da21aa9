# The demo dataset (pipeline/demo/): a small ILSVRC-2012 look-alike drawn
# from a seed, in the official archive formats, so the whole chain runs with
# no download. It is meant for dataset.name: demo, whose dataset.archives point
# at these files; with other sources nothing asks for them and it never runs.
# demo.sizes: imagenet draws ImageNet's size mix and quirks for a rehearsal of
# the real run, up to all 1000 classes.


rule demo:
    output:
        train=os.path.join(config["demo"]["out_dir"], ARCHIVES["train"]),
        val=os.path.join(config["demo"]["out_dir"], ARCHIVES["val"]),
        devkit=os.path.join(config["demo"]["out_dir"], ARCHIVES["devkit"]),
        md5=os.path.join(config["demo"]["out_dir"], "MD5SUMS"),
        json=os.path.join(config["demo"]["out_dir"], "demo.json"),
    log:
        LAYOUT.log("demo"),
    benchmark:
        LAYOUT.benchmark("demo")
    conda:
        CONDA_ENV
    # processes that draw the images: a runtime knob, the bytes do not depend on it; Snakemake caps a
    # rule's threads at --cores
    threads: 64
    params:
        out_dir=output_dir,
        settings=settings_flags("demo", exclude=("out_dir",)),
    message:
        f"Drawing the demo dataset: {config['demo']['classes']} classes, seed {config['demo']['seed']}, into {{params.out_dir}}"
    shell:
        tracked("demo", metrics="{output.json}")
        + "python -m pipeline.demo --out-dir {params.out_dir} {params.settings} --workers {threads}"
