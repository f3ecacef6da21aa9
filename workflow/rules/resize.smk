# Index, resize and shard (pipeline/archive.py, pipeline/resize.py).
# index: byte offsets of every image (tar headers only, nested per-class tars
# resolved), or the files of a class-folder tree. resize_{train,val}_shard:
# one job per shard, so `--cores all` or a cluster executor spreads them; each
# writes <split>-<k>.tar/.idx/.json (+ .stats.npz for train, the RGB
# statistics fused into the same pass) atomically, so a killed run keeps its
# finished shards and a rerun redoes only the missing ones. resize: checks
# the rejects over all shards and writes the manifest later stages read.
# Params carry every setting that changes the shards, so editing
# resize.jpeg_quality (or seed, shard counts) reruns resize and PCA only. The size is
# the paper's 256 (section 2; pipeline/shards.py IMAGE_SIZE), not a setting.

RESIZE = config["resize"]
# resize.holdout_per_class > 0: a held-out slice of the training set (pipeline/holdout.py) gets its own
# shards, cut from the same training archive; the training shards come from the rows that are left.
RESIZE_HOLDOUT = RESIZE["holdout_per_class"] > 0
RESIZE_SHARDS = {
    "train": RESIZE["train_shards"],
    "val": RESIZE["val_shards"],
    **({"holdout": RESIZE["holdout_shards"]} if RESIZE_HOLDOUT else {}),
}
RESIZE_INDEX = {
    "train": f"{RESULTS}/index/train-kept.tsv" if RESIZE_HOLDOUT else f"{RESULTS}/index/train.tsv",
    "val": f"{RESULTS}/index/val.tsv",
    "holdout": f"{RESULTS}/index/holdout.tsv",
}
# The archive fetch verified is an input file; a folder tree is no file
# Snakemake can date, so its path is only a param.
RESIZE_FROM_FOLDERS = config["dataset"]["source"] == "folders"
RESIZE_SOURCE_SPLIT = {"train": "train", "val": "val", "holdout": "train"}  # the held-out images are training images
RESIZE_ARCHIVE = {
    split: [] if RESIZE_FROM_FOLDERS else [f"{RESULTS}/fetch/ILSVRC2012_img_{RESIZE_SOURCE_SPLIT[split]}.tar"]
    for split in RESIZE_SOURCE_SPLIT
}
RESIZE_SOURCE = {
    split: (
        lambda wildcards, input, split=split: (
            config["dataset"]["folders"][RESIZE_SOURCE_SPLIT[split]] if RESIZE_FROM_FOLDERS else input.source
        )
    )
    for split in RESIZE_SOURCE_SPLIT
}
RESIZE_SHARD_FILES = {
    (split, suffix): expand(f"{RESULTS}/shards/{split}/{split}-{{k:05d}}{suffix}", k=range(shards))
    for split, shards in RESIZE_SHARDS.items()
    for suffix in (".tar", ".idx", ".json", ".stats.npz")
}
# resize.* settings of one shard; the shard counts are per split
RESIZE_SHARD_SETTINGS = ("seed", "jpeg_quality", "max_reject_fraction")
RESIZE_SHARD_SHELL = (
    "python -m pipeline.resize shard --split {params.split} --index {input.index} --source {params.source}"
    " --shard {wildcards.shard} {params.settings} {params.stats} --out {output.tar} > {log} 2>&1"
)


rule index:
    input:
        source=lambda wildcards: RESIZE_ARCHIVE[wildcards.split],
        classes=f"{RESULTS}/fetch/classes.tsv",
        val_labels=f"{RESULTS}/fetch/val_labels.tsv",
    output:
        f"{RESULTS}/index/{{split}}.tsv",
    log:
        f"{RESULTS}/logs/index/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/index/{{split}}.tsv"
    wildcard_constraints:
        split="train|val",
    conda:
        CONDA_ENV
    params:
        source=lambda wildcards, input: RESIZE_SOURCE[wildcards.split](wildcards, input),
    message:
        "Indexing the {wildcards.split} images of {params.source} by byte offset"
    shell:
        "python -m pipeline.resize index --split {wildcards.split} --source {params.source}"
        " --classes {input.classes} --val-labels {input.val_labels} --out {output} > {log} 2>&1"


rule holdout:
    input:
        f"{RESULTS}/index/train.tsv",
    output:
        kept=f"{RESULTS}/index/train-kept.tsv",
        holdout=f"{RESULTS}/index/holdout.tsv",
    log:
        f"{RESULTS}/logs/holdout.log",
    benchmark:
        f"{RESULTS}/benchmarks/holdout.tsv"
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
        index=RESIZE_INDEX["train"],
        source=RESIZE_ARCHIVE["train"],
    output:
        tar=f"{RESULTS}/shards/train/train-{{shard}}.tar",
        idx=f"{RESULTS}/shards/train/train-{{shard}}.idx",
        json=f"{RESULTS}/shards/train/train-{{shard}}.json",
        stats=f"{RESULTS}/shards/train/train-{{shard}}.stats.npz",
    log:
        f"{RESULTS}/logs/resize/train-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/resize/train-{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d{5}",
    conda:
        CONDA_ENV
    resources:
        mem_mb=1024,
    params:
        split="train",
        stats="--stats",
        source=RESIZE_SOURCE["train"],
        shards=RESIZE_SHARDS["train"],
        settings=settings_flags("resize", RESIZE_SHARD_SETTINGS, shards=RESIZE_SHARDS["train"]),
    message:
        "Resizing training shard {wildcards.shard} of {params.shards}, with RGB statistics"
    shell:
        RESIZE_SHARD_SHELL


rule resize_val_shard:
    input:
        index=f"{RESULTS}/index/val.tsv",
        source=RESIZE_ARCHIVE["val"],
    output:
        tar=f"{RESULTS}/shards/val/val-{{shard}}.tar",
        idx=f"{RESULTS}/shards/val/val-{{shard}}.idx",
        json=f"{RESULTS}/shards/val/val-{{shard}}.json",
    log:
        f"{RESULTS}/logs/resize/val-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/resize/val-{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d{5}",
    conda:
        CONDA_ENV
    resources:
        mem_mb=1024,
    params:
        split="val",
        stats="",
        source=RESIZE_SOURCE["val"],
        shards=RESIZE_SHARDS["val"],
        settings=settings_flags("resize", RESIZE_SHARD_SETTINGS, shards=RESIZE_SHARDS["val"]),
    message:
        "Resizing validation shard {wildcards.shard} of {params.shards}"
    shell:
        RESIZE_SHARD_SHELL


rule resize_holdout_shard:
    input:
        index=RESIZE_INDEX["holdout"],
        source=RESIZE_ARCHIVE["holdout"],
    output:
        tar=f"{RESULTS}/shards/holdout/holdout-{{shard}}.tar",
        idx=f"{RESULTS}/shards/holdout/holdout-{{shard}}.idx",
        json=f"{RESULTS}/shards/holdout/holdout-{{shard}}.json",
    log:
        f"{RESULTS}/logs/resize/holdout-{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/resize/holdout-{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d{5}",
    conda:
        CONDA_ENV
    resources:
        mem_mb=1024,
    params:
        split="holdout",
        stats="",
        source=RESIZE_SOURCE["holdout"],
        shards=RESIZE["holdout_shards"],
        settings=settings_flags("resize", RESIZE_SHARD_SETTINGS, shards=RESIZE["holdout_shards"]),
    message:
        "Resizing held-out training shard {wildcards.shard} of {params.shards}"
    shell:
        RESIZE_SHARD_SHELL


rule resize:
    input:
        json=[RESIZE_SHARD_FILES[split, ".json"] for split in RESIZE_SHARDS],
        # the shards themselves, so a missing or deleted one is made again
        shards=[RESIZE_SHARD_FILES[split, suffix] for split in RESIZE_SHARDS for suffix in (".tar", ".idx")],
        classes=f"{RESULTS}/fetch/classes.tsv",
    output:
        manifest=f"{RESULTS}/shards/manifest.json",
    log:
        f"{RESULTS}/logs/resize.log",
    benchmark:
        f"{RESULTS}/benchmarks/resize.tsv"
    conda:
        CONDA_ENV
    params:
        shards_dir=lambda wildcards, output: os.path.dirname(output.manifest),
        settings=settings_flags(
            "resize",
            ("train_shards", "val_shards", "max_reject_fraction"),
            holdout_shards=RESIZE_SHARDS.get("holdout", 0),
        ),
    message:
        f"Checking the rejects over all {' + '.join(map(str, RESIZE_SHARDS.values()))} shards and writing the manifest"
    shell:
        tracked("resize", metrics="{output.manifest}", artifacts=["{output.manifest}"])
        + "python -m pipeline.resize manifest --shards-dir {params.shards_dir} --classes {input.classes}"
        " {params.settings} --out {output.manifest}"
