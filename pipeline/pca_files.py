"""The pca stage's files, read and written here only: pca.json and mean_image.npy.

pca.json holds the RGB statistics of the training pixels on the 0-255 scale
(docs/formats.md): mean, std, covariance, eigval (descending) and eigvec
(eigenvectors as columns: eigvec[:, i] belongs to eigval[i]), used by the
lighting augmentation (paper, section 4.1). mean_image.npy is the float32
256x256x3 training mean image (paper, section 2). The stage writes
mean_image.npy first and pca.json last, each atomically, so a pca.json on
disk means both files are complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, read_json, write_json
from pipeline.shards import IMAGE_SIZE

PCA_JSON = "pca.json"
MEAN_IMAGE = "mean_image.npy"


class PCAFileError(PipelineError, ValueError):
    """A pca.json or mean_image.npy that cannot be read or does not hold what the pca stage writes."""


@dataclass
class PCA:
    """The pca stage's output, 0-255 scale: eigvec[:, i] belongs to eigval[i]."""

    eigval: np.ndarray  # (3,), descending
    eigvec: np.ndarray  # (3, 3), eigenvectors as columns
    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)
    mean_image: np.ndarray | None  # (256, 256, 3) float32


def load_pca(pca_json, mean_image_npy=None) -> PCA:
    """Read pca.json (and mean_image.npy), checking shapes and values."""
    try:
        d = read_json(pca_json)
    except (OSError, json.JSONDecodeError) as exc:
        raise PCAFileError(f"{pca_json}: cannot read the PCA statistics ({exc}); rerun the pca stage") from exc
    return as_pca(d, mean_image_npy, source=str(pca_json))


def as_pca(d, mean_image=None, source="pca") -> PCA:
    """A PCA from a dict (pca.json's keys) or a PCA; mean_image: array or .npy path."""
    if isinstance(d, PCA):
        return d
    want = {"eigval": (3,), "eigvec": (3, 3), "mean": (3,), "std": (3,)}
    arrays = {}
    for key, shape in want.items():
        try:
            a = np.asarray(d[key], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise PCAFileError(f"{source}: key {key!r} missing or not numeric ({exc}); rerun the pca stage") from exc
        if a.shape != shape or not np.all(np.isfinite(a)):
            raise PCAFileError(f"{source}: {key} has shape {a.shape}, expected finite values of shape {shape}")
        arrays[key] = a
    if np.any(arrays["eigval"] < 0) or np.any(arrays["std"] <= 0):
        raise PCAFileError(f"{source}: eigval must be >= 0 and std > 0 (got {arrays['eigval']}, {arrays['std']})")
    if mean_image is not None and not isinstance(mean_image, np.ndarray):
        mean_image = load_mean_image(mean_image)
    if mean_image is not None and mean_image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise PCAFileError(f"mean image has shape {mean_image.shape}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}, 3)")
    return PCA(mean_image=None if mean_image is None else mean_image.astype(np.float32), **arrays)


def load_mean_image(path: str | os.PathLike) -> np.ndarray:
    """mean_image.npy: float32 (256, 256, 3) on the 0-255 scale."""
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PCAFileError(f"mean image {path} cannot be read ({exc}); run the pca stage first") from exc
    if mean.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or not np.issubdtype(mean.dtype, np.floating):
        raise PCAFileError(
            f"mean image {path} holds {mean.dtype} {mean.shape}; expected float "
            f"({IMAGE_SIZE}, {IMAGE_SIZE}, 3) (the pca stage's {MEAN_IMAGE})"
        )
    return np.ascontiguousarray(mean, dtype=np.float32)


def write_pca_files(out_dir: str | os.PathLike, result: dict, mean_image: np.ndarray) -> Path:
    """Write mean_image.npy, then pca.json (its presence marks both complete); return pca.json's path."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / MEAN_IMAGE) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mean_image, np.float32))
    write_json(out_dir / PCA_JSON, result)
    return out_dir / PCA_JSON
