"""PCA stage: the reduced shard statistics give numpy's eigen-decomposition of all written pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from pipeline import pca, resize
from pipeline.io import read_json, write_tsv

pytestmark = pytest.mark.unit

WNIDS = ["n01440764", "n01443537"]


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def synthetic(i: int) -> np.ndarray:
    """Smooth colour fields with correlated channels (a known, non-trivial covariance)."""
    rng = np.random.default_rng(i)
    h, w = (300, 400) if i % 2 else (420, 300)
    y, x = np.mgrid[0:h, 0:w] / 50.0
    base = np.sin(x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) + np.cos(y * rng.uniform(0.5, 2))
    other = np.sin((x + y) * rng.uniform(0.5, 2))
    mix = rng.normal(size=(2, 3)) * [[60], [30]]
    rgb = 128 + base[..., None] * mix[0] + other[..., None] * mix[1] + rng.normal(0, 8, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def real_photos() -> list[np.ndarray]:
    """Crops of scikit-learn's two bundled photos (427x640), at several framings."""
    out = []
    for photo in load_sample_images().images:
        out += [photo, photo[:, :427], photo[50:400, 100:600], photo[::2, ::2]]
    return out


def run_stage(tmp_path, arrays, shards=2):
    """Folder tree -> index -> shard jobs with stats -> PCA; returns (pca.json, direct pixels)."""
    root = tmp_path / "train"
    for i, array in enumerate(arrays):
        folder = root / WNIDS[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{WNIDS[i % 2]}_{i}.JPEG").write_bytes(jpeg(array))
    write_tsv(tmp_path / "classes.tsv", ["index", "wnid", "names"], [(i, w, w) for i, w in enumerate(WNIDS)])
    resize.build_index("train", root, tmp_path / "classes.tsv", None, tmp_path / "train.tsv")
    stats = []
    for k in range(shards):
        report = resize.resize_shard(
            tmp_path / "train.tsv", root, tmp_path / "shards" / f"train-{k:05d}.tar", k, shards, stats=True
        )
        stats.append(report["stats"])
    result = pca.run_pca(stats, tmp_path / "pca")
    # the pixels written: the same resize function on every input file
    written = np.stack([np.asarray(resize.downsample(p.read_bytes())) for p in sorted(root.rglob("*.JPEG"))])
    return result, written


def check_against_numpy(result, written, out_dir):
    pixels = written.reshape(-1, 3).astype(np.float64)
    cov = np.cov(pixels, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    np.testing.assert_allclose(result["mean"], pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result["covariance"], cov, rtol=1e-6)
    np.testing.assert_allclose(result["std"], pixels.std(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(result["eigval"], eigval, rtol=1e-6)
    ours = np.array(result["eigvec"])
    np.testing.assert_allclose(np.abs(np.sum(ours * eigvec, axis=0)), 1.0, rtol=1e-6)  # same axes
    np.testing.assert_allclose(ours, pca.fix_signs(eigvec), atol=1e-6)  # and the documented signs
    assert result["pixels"] == len(pixels) and result["images"] == len(written)
    mean_image = np.load(out_dir / "mean_image.npy")
    assert mean_image.dtype == np.float32 and mean_image.shape == (256, 256, 3)
    np.testing.assert_allclose(mean_image, written.astype(np.float64).mean(axis=0), rtol=1e-6)


def test_pca_of_synthetic_set_equals_numpy(tmp_path):
    result, written = run_stage(tmp_path, [synthetic(i) for i in range(8)], shards=3)
    check_against_numpy(result, written, tmp_path / "pca")


def test_pca_of_real_photos_equals_numpy(tmp_path):
    result, written = run_stage(tmp_path, real_photos())
    check_against_numpy(result, written, tmp_path / "pca")
    # natural photos: the first component carries most of the variance
    assert result["eigval"][0] > 0.5 * sum(result["eigval"])


def test_outputs_follow_the_file_contract(tmp_path):
    result, _ = run_stage(tmp_path, [synthetic(i) for i in range(2)], shards=1)
    on_disk = read_json(tmp_path / "pca" / "pca.json")
    assert on_disk == result
    for key, shape in (
        ("mean", (3,)),
        ("std", (3,)),
        ("covariance", (3, 3)),
        ("eigval", (3,)),
        ("eigvec", (3, 3)),
        ("imagenet_cosine", (3,)),
    ):
        assert np.array(on_disk[key]).shape == shape
    assert on_disk["eigval"] == sorted(on_disk["eigval"], reverse=True)
    assert all(0 <= c <= 1 + 1e-12 for c in on_disk["imagenet_cosine"])
    assert all(isinstance(v, float) for v in on_disk["metrics"].values())
    assert (tmp_path / "pca" / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "pca").glob("*.tmp-*"))


def test_sign_convention_and_imagenet_cosine():
    flipped = -pca.IMAGENET_EIGVEC
    fixed = pca.fix_signs(flipped)
    for i in range(3):
        col = fixed[:, i]
        assert col[np.argmax(np.abs(col))] > 0
    cmp = pca.imagenet_comparison(pca.IMAGENET_EIGVAL * 255.0**2, fixed)
    np.testing.assert_allclose(cmp["cosine"], 1.0, rtol=1e-3)  # the constants are rounded to 4 digits
    np.testing.assert_allclose(cmp["eigval_ratio"], 1.0)


def test_cli_reads_the_manifest_and_reports_bad_input(tmp_path, capsys):
    result, _ = run_stage(tmp_path, [synthetic(i) for i in range(2)], shards=1)
    manifest = tmp_path / "shards" / "manifest.json"
    manifest.write_text('{"train": {"shards": [{"stats": "train-00000.stats.npz"}]}}')
    assert pca.main(["--manifest", str(manifest), "--out-dir", str(tmp_path / "again")]) == 0
    assert read_json(tmp_path / "again" / "pca.json")["eigval"] == result["eigval"]

    bad = tmp_path / "bad.stats.npz"
    np.savez(bad, pixels=np.int64(1))
    assert pca.main(["--stats", str(bad), "--out-dir", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "bad.stats.npz" in err and "missing arrays" in err
    with pytest.raises(pca.PCAError, match="no training images"):
        pca.reduce_stats([])
