"""The demo dataset: official ILSVRC-2012 layouts, determinism, the real set's quirks."""
import hashlib
import io
import re
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline import demo
from pipeline.devkit import SYNSET_FIELDS

SIZES = dict(classes=4, train_per_class=6, val_per_class=3, large_fraction=0.1)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.make_demo(out, seed=0, **SIZES)
    return out


def members(path, mode="r:"):
    with tarfile.open(path, mode) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def train_images(demo_dir):
    for outer, data in members(demo_dir / demo.TRAIN_TAR):
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
            for m in inner:
                yield outer.name, m.name, inner.extractfile(m).read()


def meta(demo_dir):
    with tarfile.open(demo_dir / demo.DEVKIT_TAR, "r:gz") as tar:
        data = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
        gt = tar.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read()
    return scipy.io.loadmat(io.BytesIO(data))["synsets"], [int(x) for x in gt.split()]


def test_train_archive_is_a_tar_of_per_class_tars(demo_dir):
    outer = [m.name for m, _ in members(demo_dir / demo.TRAIN_TAR)]
    wnids = sorted(w for w, *_ in demo.CLASSES[:4])
    assert outer == [f"{w}.tar" for w in wnids]
    images = list(train_images(demo_dir))
    assert len(images) == 4 * 6
    for outer_name, name, _ in images:
        assert re.fullmatch(rf"{outer_name[:-4]}_\d+\.JPEG", name)


def test_val_archive_is_flat_and_numbered(demo_dir):
    names = [m.name for m, _ in members(demo_dir / demo.VAL_TAR)]
    assert names == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 13)]


def test_devkit_layout_and_meta_mat(demo_dir):
    names = [m.name for m, _ in members(demo_dir / demo.DEVKIT_TAR, "r:gz")]
    assert "ILSVRC2012_devkit_t12/data/meta.mat" in names
    assert "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt" in names
    synsets, gt = meta(demo_dir)
    assert synsets.shape[1] == 1 and synsets.dtype.names == SYNSET_FIELDS
    ids = [int(s[0]["ILSVRC2012_ID"][0, 0]) for s in synsets]
    children = [int(s[0]["num_children"][0, 0]) for s in synsets]
    wnids = [str(s[0]["WNID"][0]) for s in synsets]
    assert ids == list(range(1, len(ids) + 1))
    assert children[:4] == [0] * 4 and all(c > 0 for c in children[4:]) and len(ids) > 4  # non-leaf synsets follow
    assert wnids[:4] != sorted(wnids[:4])  # ILSVRC2012_ID order is not sorted-wnid order
    assert "n00001740" in wnids[4:]
    for s in synsets[4:]:  # non-leaf children point at existing synsets
        assert set(s[0]["children"].ravel()) <= set(ids)
    assert len(gt) == 12 and set(gt) <= set(range(1, 5))
    assert sorted(np.bincount(gt)[1:]) == [3, 3, 3, 3]


def test_md5sums_match_the_archives(demo_dir):
    lines = (demo_dir / "MD5SUMS").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.md5((demo_dir / name).read_bytes()).hexdigest() == digest


def test_same_seed_same_bytes_other_seed_other_bytes(demo_dir, tmp_path):
    demo.make_demo(tmp_path / "again", seed=0, **SIZES)
    for name in (demo.TRAIN_TAR, demo.VAL_TAR, demo.DEVKIT_TAR, "MD5SUMS"):
        assert (tmp_path / "again" / name).read_bytes() == (demo_dir / name).read_bytes(), name
    demo.make_demo(tmp_path / "other", seed=1, **SIZES)
    assert (tmp_path / "other" / demo.TRAIN_TAR).read_bytes() != (demo_dir / demo.TRAIN_TAR).read_bytes()


def test_quirks_and_sizes(demo_dir):
    kinds = []
    for _, _, data in train_images(demo_dir):
        img = Image.open(io.BytesIO(data))
        kinds.append((img.format, img.mode, max(img.size)))
    assert sum(1 for f, m, _ in kinds if (f, m) == ("JPEG", "CMYK")) == 1
    assert sum(1 for f, m, _ in kinds if (f, m) == ("JPEG", "L")) == 1
    assert sum(1 for f, _, _ in kinds if f == "PNG") == 1  # a PNG named .JPEG
    val = [Image.open(io.BytesIO(d)) for _, d in members(demo_dir / demo.VAL_TAR)]
    assert any(v.mode == "L" for v in val)
    sides = [s for *_, s in kinds] + [max(v.size) for v in val]
    assert any(s > 1000 for s in sides) and any(s <= 500 for s in sides)


def test_classes_differ_in_colour(demo_dir):
    """A weak learnability check: nearest class-mean of the saturated pixels beats chance."""
    def feature(data):
        hsv = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64)).convert("HSV"), np.float32)
        top = hsv[..., 1] >= np.percentile(hsv[..., 1], 85)
        angle, weight = hsv[..., 0][top] / 255 * 2 * np.pi, hsv[..., 1][top] / 255
        return np.array([(weight * np.cos(angle)).mean(), (weight * np.sin(angle)).mean()])

    wnids = sorted(w for w, *_ in demo.CLASSES[:4])
    feats = {w: [] for w in wnids}
    for outer, _, data in train_images(demo_dir):
        feats[outer[:-4]].append(feature(data))
    centres = np.array([np.mean(feats[w], axis=0) for w in wnids])
    synsets, gt = meta(demo_dir)
    id_to_class = {int(s[0]["ILSVRC2012_ID"][0, 0]): wnids.index(str(s[0]["WNID"][0])) for s in synsets[:4]}
    val = [d for _, d in members(demo_dir / demo.VAL_TAR)]
    pred = [int(np.argmin(((centres - feature(d)) ** 2).sum(1))) for d in val]
    accuracy = np.mean([p == id_to_class[i] for p, i in zip(pred, gt)])
    assert accuracy >= 0.5  # chance is 0.25


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(demo.DemoError, match="demo.classes"):
        demo.make_demo(tmp_path, classes=1)
    with pytest.raises(demo.DemoError, match="demo.classes"):
        demo.make_demo(tmp_path, classes=len(demo.CLASSES) + 1)
    with pytest.raises(demo.DemoError, match="large_fraction"):
        demo.make_demo(tmp_path, large_fraction=1.5)
    assert not any(tmp_path.iterdir())


def test_cli(tmp_path, capsys):
    assert demo.main(["--out-dir", str(tmp_path), "--classes", "2", "--train-per-class", "2",
                      "--val-per-class", "1", "--large-fraction", "0"]) == 0
    assert (tmp_path / "demo.json").exists() and (tmp_path / "MD5SUMS").exists()
    assert demo.main(["--out-dir", str(tmp_path / "x"), "--classes", "101"]) == 1
    assert "error: demo.classes = 101" in capsys.readouterr().err
