# The demo dataset (pipeline/demo.py): a small ILSVRC-2012 look-alike drawn
# from a seed, in the official archive formats, so the whole chain runs with
# no download. It is meant for dataset.name: demo, whose dataset.archives point
# at these files; with other sources nothing asks for them and it never runs.
# demo.sizes: imagenet draws ImageNet's size mix and quirks for a rehearsal of
# the real run, up to all 1000 classes.

DEMO = config["demo"]


rule demo:
    output:
        train=f"{DEMO['out_dir']}/ILSVRC2012_img_train.tar",
        val=f"{DEMO['out_dir']}/ILSVRC2012_img_val.tar",
        devkit=f"{DEMO['out_dir']}/ILSVRC2012_devkit_t12.tar.gz",
        md5=f"{DEMO['out_dir']}/MD5SUMS",
        json=f"{DEMO['out_dir']}/demo.json",
    log:
        f"{RESULTS}/logs/demo.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo.tsv"
    conda:
        CONDA_ENV
    # processes that draw the images: a runtime knob, the bytes do not depend on it; Snakemake caps a
    # rule's threads at --cores
    threads: 64
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
        settings=settings_flags("demo", exclude=("out_dir",)),
    message:
        f"Drawing the demo dataset: {DEMO['classes']} classes, seed {DEMO['seed']}, into {{params.out_dir}}"
    shell:
        tracked("demo", metrics="{output.json}")
        + "python -m pipeline.demo --out-dir {params.out_dir} {params.settings} --workers {threads}"
