"""PCA of the training pixels' RGB values, from the resize stage's shard statistics.

Paper, section 4.1: "perform PCA on the set of RGB pixel values throughout the
ImageNet training set", used by the lighting augmentation (eigenvalues l_i,
eigenvectors p_i). The resize stage already summed, per training shard, the
pixel count, the RGB sum, the sum of outer products and the image sum
(`.stats.npz`); this stage only adds those up and eigen-decomposes the 3x3
covariance, so there is no second pass over the images.

Conventions (all on the 0-255 pixel scale):
- covariance with the unbiased 1/(N-1) normalisation, as numpy.cov;
- eigenvalues descending, eigenvectors as columns (`eigvec[:, i]`);
- sign: each eigenvector is flipped so that its largest-magnitude component is
  positive (eigenvectors are defined up to sign; the lighting noise
  alpha_i ~ N(0, 0.1) is symmetric, so the sign never changes training);
- the comparison with the ImageNet constants (fb.resnet.torch,
  datasets/imagenet.lua, for pixels in [0,1]) uses |cos| per eigenvector, sign-invariant, and the ratio
  of our eigenvalues to theirs rescaled by 255^2. On the demo set they differ;
  on ImageNet the cosines should be near 1.

The mean image (paper, section 2: "subtracting the mean activity over the
training set from each pixel") is image_sum / images, float32 256x256x3.

Cost: the whole stage on 1,024 shard files (ImageNet's count), start-up and
plot included, takes 2.3 CPU-s, 0.04% of the resize stage's CPU time
(bench/RESULTS-resize.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.errors import PipelineError, run_cli
from pipeline.io import atomic_path
from pipeline.pca_files import write_pca_files
from pipeline.shards import ManifestError, manifest_entries

# fb.resnet.torch (datasets/imagenet.lua: pca.eigval, pca.eigvec), pixels in [0,1]; eigenvectors as columns.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
STATS_KEYS = ("pixels", "sum", "outer", "image_sum", "images")


class PCAError(PipelineError, ValueError):
    """Shard statistics that cannot be reduced (named in the message)."""


def reduce_stats(paths) -> dict[str, np.ndarray]:
    """Sum the arrays of several .stats.npz files (exact: integer values in float64)."""
    total = None
    for path in paths:
        try:
            npz = np.load(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise PCAError(f"{path}: cannot read the shard statistics ({exc}); rerun the resize stage") from None
        with npz:
            missing = [k for k in STATS_KEYS if k not in npz]
            if missing:
                raise PCAError(
                    f"{path}: missing arrays {missing}; expected {list(STATS_KEYS)} (rerun the resize stage)"
                )
            part = {k: npz[k] for k in STATS_KEYS}
        if total is None:
            total = {k: v.astype(np.float64) if k not in ("pixels", "images") else np.int64(v) for k, v in part.items()}
        elif part["image_sum"].shape != total["image_sum"].shape:
            raise PCAError(
                f"{path}: image size {part['image_sum'].shape} differs from the other shards' "
                f"{total['image_sum'].shape}; rerun the resize stage"
            )
        else:
            for k in STATS_KEYS:
                total[k] = total[k] + part[k]
    if total is None or total["images"] == 0:
        raise PCAError("no training images in the shard statistics; check the resize stage's manifest")
    return total


def fix_signs(eigvec: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude component is positive."""
    idx = np.argmax(np.abs(eigvec), axis=0)
    signs = np.sign(eigvec[idx, np.arange(eigvec.shape[1])])
    return eigvec * np.where(signs == 0, 1.0, signs)


def rgb_pca(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean, covariance (ddof=1), descending eigenvalues and sign-fixed eigenvectors (columns)."""
    n = float(stats["pixels"])
    mean = stats["sum"] / n
    covariance = (stats["outer"] - np.outer(stats["sum"], stats["sum"]) / n) / (n - 1)
    eigval, eigvec = np.linalg.eigh(covariance)
    order = np.argsort(eigval)[::-1]
    return {"mean": mean, "covariance": covariance, "eigval": eigval[order], "eigvec": fix_signs(eigvec[:, order])}


def imagenet_comparison(eigval: np.ndarray, eigvec: np.ndarray) -> dict[str, list[float]]:
    cosine = np.abs(np.sum(eigvec * IMAGENET_EIGVEC, axis=0)) / (
        np.linalg.norm(eigvec, axis=0) * np.linalg.norm(IMAGENET_EIGVEC, axis=0)
    )
    reference = IMAGENET_EIGVAL * 255.0**2
    return {"cosine": cosine.tolist(), "eigval_255": reference.tolist(), "eigval_ratio": (eigval / reference).tolist()}


def plot_pca(result: dict, mean_image: np.ndarray, path: str | os.PathLike) -> None:
    """Colour swatches mean + t*sqrt(l_i)*p_i (t = -2..2) for ours and ImageNet's; the mean image."""

    mean = np.asarray(result["mean"])
    steps = np.linspace(-2, 2, 9)
    rows, labels = [], []
    sets = (
        ("ours", result["eigval"], result["eigvec"]),
        ("ImageNet", IMAGENET_EIGVAL * 255.0**2, fix_signs(IMAGENET_EIGVEC)),
    )
    for name, eigval, eigvec in sets:
        eigval, eigvec = np.asarray(eigval), np.asarray(eigvec)
        for i in range(3):
            colours = mean + steps[:, None] * np.sqrt(max(eigval[i], 0.0)) * eigvec[:, i]
            rows.append(np.clip(colours, 0, 255) / 255.0)
            labels.append(f"{name} PC{i + 1}  λ={eigval[i]:.0f}")
    fig = Figure(figsize=(11, 4.2))
    ax_sw, ax_mean = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    ax_sw.imshow(np.stack(rows), aspect="auto", interpolation="nearest")
    ax_sw.set_yticks(range(len(labels)), labels)
    ax_sw.set_xticks(range(len(steps)), [f"{t:+.1f}σ" for t in steps])
    ax_sw.set_title("mean RGB + t·sqrt(eigval)·eigvec")
    ax_mean.imshow(np.clip(mean_image, 0, 255).astype(np.uint8))
    ax_mean.set_title(f"mean image ({result['images']} training images)")
    ax_mean.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def run_pca(stats_paths, out_dir: str | os.PathLike) -> dict:
    """Write pca.png, mean_image.npy and pca.json (pipeline.pca_files) into out_dir; return pca.json's content."""
    out_dir = Path(out_dir)
    stats = reduce_stats(stats_paths)
    pca = rgb_pca(stats)
    mean_image = (stats["image_sum"] / float(stats["images"])).astype(np.float32)
    std = np.sqrt(np.diag(pca["covariance"]))
    cmp = imagenet_comparison(pca["eigval"], pca["eigvec"])
    explained = pca["eigval"] / pca["eigval"].sum()
    result = {
        "mean": pca["mean"].tolist(),
        "std": std.tolist(),
        "covariance": pca["covariance"].tolist(),
        "eigval": pca["eigval"].tolist(),
        "eigvec": pca["eigvec"].tolist(),  # row r, column i: component r of eigenvector i
        "pixels": int(stats["pixels"]),
        "images": int(stats["images"]),
        "imagenet_cosine": cmp["cosine"],
        "imagenet": {
            "eigval_255": cmp["eigval_255"],
            "eigvec": IMAGENET_EIGVEC.tolist(),
            "eigval_ratio": cmp["eigval_ratio"],
        },
        "conventions": {
            "scale": "0-255",
            "covariance": "unbiased, 1/(N-1)",
            "eigvec": "columns",
            "sign": "largest-magnitude component of each eigenvector positive",
        },
        "metrics": {
            **{f"mean_{c}": float(v) for c, v in zip("rgb", pca["mean"])},
            **{f"std_{c}": float(v) for c, v in zip("rgb", std)},
            **{f"eigval_{i + 1}": float(v) for i, v in enumerate(pca["eigval"])},
            **{f"explained_{i + 1}": float(v) for i, v in enumerate(explained)},
            **{f"imagenet_cosine_{i + 1}": float(v) for i, v in enumerate(cmp["cosine"])},
            **{f"imagenet_eigval_ratio_{i + 1}": float(v) for i, v in enumerate(cmp["eigval_ratio"])},
        },
    }
    plot_pca(result, mean_image, out_dir / "pca.png")
    pca_json = write_pca_files(out_dir, result, mean_image)
    print(
        f"{pca_json}: {result['images']} images, eigval "
        + ", ".join(f"{v:.1f}" for v in result["eigval"])
        + "; |cos| to ImageNet "
        + ", ".join(f"{v:.3f}" for v in cmp["cosine"]),
        file=sys.stderr,
    )
    return result


def stats_from_manifest(manifest: str | os.PathLike) -> list[Path]:
    """The training shards' .stats.npz paths listed in results/shards/manifest.json."""
    manifest = Path(manifest)
    try:
        return [e["stats"] for e in manifest_entries(manifest, "train")]
    except (KeyError, ManifestError) as exc:
        raise PCAError(f"{manifest}: no training shard statistics listed ({exc!r}); rerun the resize stage") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pca", description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="results/shards/manifest.json (lists the training shards' statistics)")
    src.add_argument("--stats", nargs="+", help=".stats.npz files")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    return run_cli(lambda: run_pca(args.stats or stats_from_manifest(args.manifest), args.out_dir))


if __name__ == "__main__":
    sys.exit(main())
