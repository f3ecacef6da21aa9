"""The demo dataset: official ILSVRC-2012 layouts, determinism, the real set's quirks; the
ImageNet-shaped variant (1000 real classes, ImageNet's sizes and quirk rarity)."""

import hashlib
import io
import json
import math
import re
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline import demo
from pipeline.demo import class_table
from pipeline.demo.devkit_meta import id_order, meta_mat, synsets
from pipeline.demo.draw import stripe_mask
from pipeline.demo.photo import draw_stripes
from pipeline.devkit import SYNSET_FIELDS, parse_meta, read_devkit

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


@pytest.mark.unit
def test_train_archive_is_a_tar_of_per_class_tars(demo_dir):
    outer = [m.name for m, _ in members(demo_dir / demo.TRAIN_TAR)]
    wnids = sorted(w for w, *_ in demo.CLASSES[:4])
    assert outer == [f"{w}.tar" for w in wnids]
    images = list(train_images(demo_dir))
    assert len(images) == 4 * 6
    for outer_name, name, _ in images:
        assert re.fullmatch(rf"{outer_name[:-4]}_\d+\.JPEG", name)


@pytest.mark.unit
def test_val_archive_is_flat_and_numbered(demo_dir):
    names = [m.name for m, _ in members(demo_dir / demo.VAL_TAR)]
    assert names == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 13)]


@pytest.mark.unit
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


@pytest.mark.unit
def test_md5sums_match_the_archives(demo_dir):
    lines = (demo_dir / "MD5SUMS").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.md5((demo_dir / name).read_bytes()).hexdigest() == digest


@pytest.mark.unit
def test_same_seed_same_bytes_other_seed_other_bytes(demo_dir, tmp_path):
    demo.make_demo(tmp_path / "again", seed=0, **SIZES)
    for name in (demo.TRAIN_TAR, demo.VAL_TAR, demo.DEVKIT_TAR, "MD5SUMS"):
        assert (tmp_path / "again" / name).read_bytes() == (demo_dir / name).read_bytes(), name
    demo.make_demo(tmp_path / "other", seed=1, **SIZES)
    assert (tmp_path / "other" / demo.TRAIN_TAR).read_bytes() != (demo_dir / demo.TRAIN_TAR).read_bytes()


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(demo.DemoError, match="demo.classes"):
        demo.make_demo(tmp_path, classes=1)
    with pytest.raises(demo.DemoError, match="demo.classes"):
        demo.make_demo(tmp_path, classes=len(demo.CLASSES) + 1)
    with pytest.raises(demo.DemoError, match="large_fraction"):
        demo.make_demo(tmp_path, large_fraction=1.5)
    with pytest.raises(demo.DemoError, match="demo.sizes"):
        demo.make_demo(tmp_path, sizes="huge")
    with pytest.raises(demo.DemoError, match="workers"):
        demo.make_demo(tmp_path, workers=0)
    assert not any(tmp_path.iterdir())


@pytest.mark.unit
def test_cli(tmp_path, capsys):
    assert (
        demo.main(
            [
                "--out-dir",
                str(tmp_path),
                "--classes",
                "2",
                "--train-per-class",
                "2",
                "--val-per-class",
                "1",
                "--large-fraction",
                "0",
            ]
        )
        == 0
    )
    assert (tmp_path / "demo.json").exists() and (tmp_path / "MD5SUMS").exists()
    assert demo.main(["--out-dir", str(tmp_path / "x"), "--classes", "1001"]) == 1
    assert "error: demo.classes = 1001" in capsys.readouterr().err


# ---------------------------------------------------------------- ImageNet-shaped: 1000 classes, sizes imagenet


@pytest.mark.unit
def test_class_table_holds_the_1000_classes():
    table = demo.ilsvrc2012_classes()
    assert [i for i, *_ in table] == list(range(1, 1001))
    assert table[0][1] == "n02119789" and table[448][1] == "n01440764"  # kit fox is ID 1, tench ID 449
    wnids = {w for _, w, _, _ in table}
    assert len(demo.CLASSES) == 1000 and {w for w, *_ in demo.CLASSES} == wnids
    rest = [w for w, *_ in demo.CLASSES[100:]]
    assert rest == sorted(rest)
    words = {w: (words, gloss) for _, w, words, gloss in table}
    assert all(words[w] == (n, g) for w, n, g, _ in demo.CLASSES[100:])
    living = {w: alive for w, _, _, alive in demo.CLASSES}
    assert sum(living[w] for w in wnids if w < "n02666196") == 398  # the ILSVRC-2012 animals
    assert living["n13054560"] and living["n11939491"]  # bolete, daisy
    assert (
        not living["n02666196"] and not living["n15075141"] and not living["n09472597"]
    )  # abacus, toilet tissue, volcano


IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079"]
IMAGENETTE += ["n03394916", "n03417042", "n03425413", "n03445777", "n03888605"]


@pytest.mark.unit
def test_demo_order_words_and_glosses():
    """The Imagenette ten first, then sorted-wnid order; the demo's own words and glosses where
    pipeline/data/demo_classes.tsv gives them, none for the rest of the first 100, the class table's after."""
    table = {w: (words, gloss) for _, w, words, gloss in demo.ilsvrc2012_classes()}
    assert [w for w, *_ in demo.CLASSES[:10]] == IMAGENETTE
    rest = [w for w, *_ in demo.CLASSES[10:]]
    assert rest == sorted(rest)
    tench = "freshwater dace-like game fish of Europe and western Asia"
    assert demo.CLASSES[0] == ("n01440764", "tench, Tinca tinca", tench, True)
    parachute = ("parachute, chute", "rescue equipment that fills with air and retards your fall", False)
    assert demo.CLASSES[9] == ("n03888605", *parachute)
    assert demo.CLASSES[2][1:3] == table["n02979186"]  # "-": the class table's
    assert all(gloss == class_table.GLOSS_NOT_KEPT for _, _, gloss, _ in demo.CLASSES[20:100])
    assert all(words == table[w][0] for w, words, _, _ in demo.CLASSES[10:])
    assert demo.DEMO_CLASSES == demo.CLASSES[:100]


@pytest.mark.unit
def test_meta_mat_bytes_are_pinned():
    """meta.mat's bytes at 100 and at 1000 classes, as the demo has written them since its class
    list moved to pipeline/data/: a change to the class tables or the synsets shows here."""
    digests = {
        100: "7274d03d6a4eba5e587f05d77ec4f25a75cc039920db7e5e98a6337803eaab84",
        1000: "1190c8e01f54bf7ed53c9dbcebbbf41e7f536dba57c9a7ad109aa925941540b4",
    }
    for n, n_train in ((100, 3), (1000, 2)):
        data = meta_mat(*synsets(id_order(np.random.default_rng([0, 2]), n), n_train))
        assert hashlib.sha256(data).hexdigest() == digests[n], n


@pytest.mark.unit
def test_demo_table_names_only_real_classes(tmp_path):
    bad = tmp_path / "demo_classes.tsv"
    bad.write_text("wnid\twords\tgloss\nn99999999\t-\t-\n")
    with pytest.raises(ValueError, match="n99999999"):
        class_table.demo_classes(class_table.ILSVRC2012, bad)
    bad.write_text("wnid\twords\nn01440764\t-\n")
    with pytest.raises(ValueError, match="expected the header"):
        class_table.demo_classes(class_table.ILSVRC2012, bad)


@pytest.mark.unit
def test_looks_are_distinct_codes_at_1000_classes():
    looks = [demo.class_look(k, 1000) for k in range(1000)]
    codes = {
        (round(lk["hue"] * demo.HUE_BINS - 0.5), lk["shape"], lk.get("stripe_angle"), lk.get("stripe_period"))
        for lk in looks
    }
    assert len(codes) == 1000
    assert {c[0] for c in codes} == set(range(10)) and {c[1] for c in codes} == set(demo.SHAPES)
    assert len({c[2:] for c in codes}) == 13
    # stripe angles in [0, pi/2]: a horizontal flip (a -> pi - a) maps none onto another
    assert all(0 <= lk["stripe_angle"] <= math.pi / 2 for lk in looks if lk["stripes"])
    assert all(lk["hue_jitter"] <= 0.25 / demo.HUE_BINS for lk in looks)  # hue stays inside its bin
    assert demo.class_look(3, 100) == demo.class_look(3, 100) and "stripe_period" not in demo.class_look(3, 100)


@pytest.mark.unit
def test_imagenet_size_mix():
    rng = np.random.default_rng(0)
    sizes = [demo.image_size(rng, rng.random() < 0.03, "imagenet") for _ in range(10000)]
    stats = demo.size_stats(sizes)
    assert 380 <= stats["mean_width"] <= 460 and 330 <= stats["mean_height"] <= 400
    assert 0.02 <= stats["share_over_1000px"] <= 0.04
    assert 30 <= stats["multi_megapixel"] <= 100  # a fifth of the 3 %
    arr = np.array(sizes)
    long_side, short_side = arr.max(1), arr.min(1)
    assert np.bincount(long_side).argmax() == 500 and 0.3 <= (long_side == 500).mean() <= 0.5
    assert long_side.min() >= 150 and long_side.max() <= 4500
    assert 0.15 <= (arr[:, 1] > arr[:, 0]).mean() <= 0.3  # about a quarter portrait
    ratios = {round(r, 2) for r in long_side / short_side}
    assert all(min(abs(r - a) for a in (4 / 3, 3 / 2, 1.0, 5 / 4)) < 0.02 for r in ratios)
    originals = arr[long_side >= 2800]
    assert (originals.prod(1) >= demo.MULTI_MP_PIXELS).all()
    # the demo's own mix is unchanged
    demo_sizes = np.array([demo.image_size(rng, False) for _ in range(1000)]).max(1)
    assert demo_sizes.min() >= 300 and demo_sizes.max() < 500


@pytest.mark.unit
def test_quirks_at_their_real_rarity():
    assert demo.quirk_list("imagenet", 0, 1281167).count("cmyk") == 22
    assert demo.quirk_list("imagenet", 0, 1281167).count("png") == 1
    assert sorted(demo.quirk_list("imagenet", 1, 50)) == ["cmyk", "gray", "png"]  # a small set carries one of each
    assert demo.quirk_list("demo", 0, 10**6) == ("cmyk", "gray", "png") and demo.quirk_list("demo", 1, 10) == ("gray",)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo1000")
    demo.make_demo(
        out, seed=0, classes=1000, train_per_class=2, val_per_class=1, large_fraction=0.001, sizes="imagenet"
    )
    return out


@pytest.mark.integration
def test_1000_classes_carry_the_real_devkit(imagenet_dir):
    kit = read_devkit(imagenet_dir / demo.DEVKIT_TAR)
    table = demo.ilsvrc2012_classes()
    assert kit.id_to_wnid == {i: w for i, w, _, _ in table}  # the devkit's own IDs
    assert kit.id_to_wnid[1] == "n02119789" and kit.id_to_wnid[449] == "n01440764"
    assert [kit.id_to_wnid[i] for i in range(1, 1001)] != kit.wnids  # not sorted-wnid order
    synsets, _ = meta(imagenet_dir)
    assert len(synsets) > 1000 and all(int(s[0]["num_children"][0, 0]) > 0 for s in synsets[1000:])
    with tarfile.open(imagenet_dir / demo.DEVKIT_TAR, "r:gz") as tar:
        leaves = parse_meta(tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read(), "meta.mat")
    assert len(leaves) == 1000
    # val ground truth: file n holds an image of class val_order[n - 1]
    drawn = [demo.CLASSES[k][0] for k in demo.val_order(0, 1000, 1)]
    assert [kit.id_to_wnid[i] for i in kit.val_ids] == drawn
    assert [kit.wnids[label] for _, label in kit.val_rows()] == drawn


@pytest.mark.integration
def test_1000_classes_archives_and_metrics(imagenet_dir):
    outer = [m.name for m, _ in members(imagenet_dir / demo.TRAIN_TAR)]
    assert outer == [f"{w}.tar" for w in sorted(w for w, *_ in demo.CLASSES)]
    kinds = {"cmyk": 0, "gray": 0, "png": 0}
    sides = []
    for _, _, data in train_images(imagenet_dir):
        img = Image.open(io.BytesIO(data))  # reads the header only
        kinds["png"] += img.format == "PNG"
        kinds["cmyk"] += img.mode == "CMYK"
        kinds["gray"] += img.mode == "L"
        sides.append(max(img.size))
    metrics = json.loads((imagenet_dir / "demo.json").read_text())
    assert kinds == metrics["quirks"]["train"] == {"cmyk": 1, "gray": 1, "png": 1}
    assert metrics["quirks"]["val"] == {"cmyk": 1, "gray": 1, "png": 1}
    assert any(s > 1000 for s in sides)  # encoded at full size, not at the drawing canvas
    assert metrics["sizes"] == "imagenet" and metrics["workers"] == 1 and metrics["large_images"] == 3
    assert {"mean_width", "mean_height", "share_over_1000px", "multi_megapixel"} <= set(metrics)


@pytest.mark.integration
def test_workers_do_not_change_a_byte(tmp_path):
    settings = dict(seed=5, classes=120, train_per_class=2, val_per_class=1, large_fraction=0.02, sizes="imagenet")
    one = demo.make_demo(tmp_path / "one", workers=1, **settings)
    two = demo.make_demo(tmp_path / "two", workers=2, **settings)
    assert one["md5"] == two["md5"] and two["workers"] == 2
    assert (tmp_path / "one" / "MD5SUMS").read_bytes() == (tmp_path / "two" / "MD5SUMS").read_bytes()


# ---------------------------------------------------------------- ImageNet's bytes per file, the class code kept


@pytest.mark.unit
def test_imagenet_images_carry_imagenet_bytes(tmp_path):
    """ILSVRC-2012's training JPEGs average about 115 kB (147,897,477,120 archive bytes / 1,281,167
    images); the rehearsal's must not be much lighter, or it forecasts the decoding short."""
    demo.make_demo(
        tmp_path, seed=0, classes=20, train_per_class=5, val_per_class=1, large_fraction=0.03, sizes="imagenet"
    )
    files = [data for _, _, data in train_images(tmp_path)]
    sizes = [Image.open(io.BytesIO(d)).size for d in files]
    assert len(files) == 100 and any(max(s) > 1000 for s in sizes)
    assert np.mean([len(d) for d in files]) >= 90e3
    small = [len(d) / (w * h) for d, (w, h) in zip(files, sizes) if max(w, h) <= 1000]
    assert np.mean(small) >= 0.4  # bytes per pixel: the ordinary images carry their share, not only the tail


def _object_hue(img):
    """Median hue (0-1) of the strongly saturated, bright pixels, and their share of the image."""
    hsv = np.asarray(img.convert("HSV"), np.float32) / 255
    strong = (hsv[..., 1] >= 0.55) & (hsv[..., 2] >= 0.5)
    angle = hsv[..., 0][strong] * 2 * np.pi
    return (math.atan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi)) % 1.0, strong.mean()


@pytest.mark.unit
def test_imagenet_images_keep_the_class_code():
    """The photographs' clutter and texture leave the code readable: the object's hue lies in its
    class's bin, and the object covers a good share of the image, at 500 px and over 1000 px."""
    job = demo.Job(0, 1000, "imagenet", tuple(demo.class_look(k, 1000) for k in range(1000)), ())
    texture = demo.texture_tile(0)
    for k in (0, 13, 27, 101, 555, 999):  # plain and striped, all hue bins' neighbours
        look = job.looks[k]
        for size in ((500, 375), (375, 500), (1600, 1200)):
            img = demo.draw_photo(np.random.default_rng([k, size[0]]), look, 1000, size, texture)
            hue, share = _object_hue(img)
            off = abs((hue - look["hue"] + 0.5) % 1.0 - 0.5)
            assert off < 0.5 / demo.HUE_BINS, (k, size, hue)  # inside the class's hue bin
            assert share >= 0.03, (k, size, share)


@pytest.mark.unit
def test_imagenet_stripes_are_drawn_at_full_size():
    """A striped class's stripes, drawn as polygons on the object's box, match the per-pixel mask of
    the demo's drawing but for the stripes' edges."""
    from PIL import ImageDraw

    for angle in (0.0, 0.3, 1.2, math.pi / 2):
        mask = np.asarray(stripe_mask(20.0, angle, 300, 200)).astype(bool)
        whole = Image.new("L", (300, 200), 0)
        draw_stripes(ImageDraw.Draw(whole), 20.0, angle, (0, 0), (300, 200))
        part = Image.new("L", (100, 80), 0)
        draw_stripes(ImageDraw.Draw(part), 20.0, angle, (150, 90), (100, 80))
        drawn = np.asarray(whole) > 0
        assert (drawn == mask).mean() >= 0.9
        assert ((np.asarray(part) > 0) == drawn[90:170, 150:250]).mean() >= 0.9
