# Index, resize and shard (pipeline/archive.py, pipeline/resize.py).
# index: byte offsets of every image (tar headers only, nested per-class tars
# resolved), or the files of a class-folder tree. resize_train_shard, resize_shard:
# one job per shard, so `--cores all` or a cluster executor spreads them; each
# writes <split>-<k>.tar/.idx/.json (+ .stats.npz for train, the RGB
# statistics fused into the same pass) atomically, so a killed run keeps its
# finished shards and a rerun redoes only the missing ones. resize: checks
# the rejects over all shards and writes the manifest later stages read.
# The training shards' jobs also gather the RGB statistics (a rule of their
# own, with one more output); the validation and held-out shards share one rule.
# Params carry every setting that changes the shards, so editing
# resize.jpeg_quality (or seed, shard counts) reruns resize and PCA only. The size is
# the paper's 256 (section 2; pipeline/shards.py IMAGE_SIZE), not a setting.

RESIZE_SHARD_SHELL = (
    "python -m pipeline.resize shard --split {wildcards.split} --index {input.index} --source {params.source}"
    " --shard {wildcards.shard} {params.settings} {params.stats} --out {output.tar} > {log} 2>&1"
)


rule index:
    input:
        source=source_archive,
        classes=LAYOUT.classes,
        val_labels=LAYOUT.val_labels,
    output:
        LAYOUT.index("{split}"),
    log:
        LAYOUT.log("index", "{split}"),
    benchmark:
        LAYOUT.benchmark("index", "{split}")
    wildcard_constraints:
        split="train|val",
    conda:
        CONDA_ENV
    params:
        source=source_path,
    message:
        "Indexing the {wildcards.split} images of {params.source} by byte offset"
    shell:
        "python -m pipeline.resize index --split {wildcards.split} --source {params.source}"
        " --classes {input.classes} --val-labels {input.val_labels} --out {output} > {log} 2>&1"


rule holdout:
    input:
        LAYOUT.index("train"),
    output:
        kept=LAYOUT.index("train-kept"),
        holdout=LAYOUT.index("holdout"),
    log:
        LAYOUT.log("holdout"),
    benchmark:
        LAYOUT.benchmark("holdout")
    conda:
        CONDA_ENV
    params:
        per_class=RESIZE["holdout_per_class"],
        seed=RESIZE["seed"],
    message:
        "Holding out {params.per_class} training images of every class (seed {params.seed})"
    shell:
        "python -m pipeline.resize holdout --index {input} --per-class {params.per_class} --seed {params.seed}"
        " --out-kept {output.kept} --out-holdout {output.holdout} > {log} 2>&1"


rule resize_train_shard:
    input:
        index=shard_index,
        source=source_archive,
    output:
        tar=LAYOUT.shard("{split}", "{shard}", ".tar"),
        idx=LAYOUT.shard("{split}", "{shard}", ".idx"),
        json=LAYOUT.shard("{split}", "{shard}", ".json"),
        stats=LAYOUT.shard("{split}", "{shard}", ".stats.npz"),
    log:
        LAYOUT.log("resize", "{split}-{shard}"),
    benchmark:
        LAYOUT.benchmark("resize", "{split}-{shard}")
    wildcard_constraints:
        split="train",
        shard=SHARD_NUMBER,
    conda:
        CONDA_ENV
    resources:
        mem_mb=1024,
    params:
        stats="--stats",
        source=source_path,
        shards=SHARD_COUNTS["train"],
        settings=shard_settings,
    message:
        "Resizing training shard {wildcards.shard} of {params.shards}, with RGB statistics"
    shell:
        RESIZE_SHARD_SHELL


rule resize_shard:
    input:
        index=shard_index,
        source=source_archive,
    output:
        tar=LAYOUT.shard("{split}", "{shard}", ".tar"),
        idx=LAYOUT.shard("{split}", "{shard}", ".idx"),
        json=LAYOUT.shard("{split}", "{shard}", ".json"),
    log:
        LAYOUT.log("resize", "{split}-{shard}"),
    benchmark:
        LAYOUT.benchmark("resize", "{split}-{shard}")
    wildcard_constraints:
        split="val|holdout",
        shard=SHARD_NUMBER,
    conda:
        CONDA_ENV
    resources:
        mem_mb=1024,
    params:
        stats="",
        source=source_path,
        shards=shard_count,
        settings=shard_settings,
    message:
        "Resizing {wildcards.split} shard {wildcards.shard} of {params.shards}"
    shell:
        RESIZE_SHARD_SHELL


rule resize:
    input:
        json=shard_files(".json"),
        # the shards themselves, so a missing or deleted one is made again
        shards=shard_files(".tar") + shard_files(".idx"),
        classes=LAYOUT.classes,
    output:
        manifest=LAYOUT.manifest,
    log:
        LAYOUT.log("resize"),
    benchmark:
        LAYOUT.benchmark("resize")
    conda:
        CONDA_ENV
    params:
        shards_dir=output_dir,
        settings=settings_flags(
            "resize",
            ("train_shards", "val_shards", "max_reject_fraction"),
            holdout_shards=SHARD_COUNTS.get("holdout", 0),
        ),
    message:
        f"Checking the rejects over all {' + '.join(map(str, SHARD_COUNTS.values()))} shards and writing the manifest"
    shell:
        tracked("resize", metrics="{output.manifest}", artifact=["{output.manifest}"])
        + "python -m pipeline.resize manifest --shards-dir {params.shards_dir} --classes {input.classes}"
        " {params.settings} --out {output.manifest}"
