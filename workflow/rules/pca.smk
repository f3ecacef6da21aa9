# PCA of the training pixels' RGB values (pipeline/pca.py; paper, section 4.1):
# reduces the resize stage's per-shard statistics (no second pass over the
# images) into the mean, covariance, eigenvalues/eigenvectors and mean image
# that the augmentation (PCA lighting, mean subtraction) reads. The stats files
# are inputs so a changed shard reruns PCA; the command reads their paths from
# the manifest, which keeps the command (and its MLflow params) short.


rule pca:
    input:
        stats=shard_files(".stats.npz", ["train"]),
        manifest=LAYOUT.manifest,
    output:
        json=LAYOUT.pca,
        mean_image=LAYOUT.mean_image,
        png=report(LAYOUT.pca_plot, category="PCA", labels={"figure": "RGB eigenvectors and mean image"}),
    log:
        LAYOUT.log("pca"),
    benchmark:
        LAYOUT.benchmark("pca")
    conda:
        CONDA_ENV
    params:
        out_dir=output_dir,
    message:
        "PCA of the training pixels' RGB covariance, and the mean image"
    shell:
        tracked("pca", metrics="{output.json}", artifact=["{output.json}", "{output.png}"])
        + "python -m pipeline.pca --manifest {input.manifest} --out-dir {params.out_dir}"
