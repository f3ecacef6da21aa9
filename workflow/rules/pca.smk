# PCA of the training pixels' RGB values (pipeline/pca.py; paper, section 4.1):
# reduces the resize stage's per-shard statistics (no second pass over the
# images) into the mean, covariance, eigenvalues/eigenvectors and mean image
# that the augmentation (PCA lighting, mean subtraction) reads. The stats files
# are inputs so a changed shard reruns PCA; the command reads their paths from
# the manifest, which keeps the command (and its MLflow params) short.


rule pca:
    input:
        stats=RESIZE_SHARD_FILES["train", ".stats.npz"],
        manifest=f"{RESULTS}/shards/manifest.json",
    output:
        json=f"{RESULTS}/pca/pca.json",
        mean_image=f"{RESULTS}/pca/mean_image.npy",
        png=report(f"{RESULTS}/pca/pca.png", category="PCA", labels={"figure": "RGB eigenvectors and mean image"}),
    log:
        f"{RESULTS}/logs/pca.log",
    benchmark:
        f"{RESULTS}/benchmarks/pca.tsv"
    conda:
        CONDA_ENV
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
    message:
        "PCA of the training pixels' RGB covariance, and the mean image"
    shell:
        tracked("pca", metrics="{output.json}", artifacts=["{output.json}", "{output.png}"])
        + "python -m pipeline.pca --manifest {input.manifest} --out-dir {params.out_dir}"
