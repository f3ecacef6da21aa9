"""Ten-crop evaluation: top-k with ties, ten-crop averaging, tables, and the stage end to end on tiny shards."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

from pipeline import report_tables
from pipeline.metrics import CENTER_VIEW, EvalCounts, ten_crop_probs, topk_correct, topk_error, true_class_rank
from pipeline.sources import ILSVRC_VAL_IMAGES

# ---------------------------------------------------------------- top-k, ties


@pytest.mark.unit
def test_topk_hand_made_logits_with_ties():
    scores = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 0: clear winner
            [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 0 tied with class 1 for first: wrong at 1, right at 2
            [
                3.0,
                2.0,
                2.0,
                1.0,
                1.0,
                1.0,
                1.0,
            ],  # true 1 tied with 2 at rank 2: 2 classes >= it -> right at 5, wrong at 2
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # constant output: never right below k=7
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # true 5: rank 5, wrong at 5
            [6.0, 5.0, 4.0, 3.0, 1.0, 1.0, 0.0],  # true 4 tied with 5 after four higher: 5 >= -> wrong at 5
            [6.0, 5.0, 4.0, 1.0, 1.0, 0.0, 0.0],  # true 3 tied with 4 after three higher: 4 >= -> right at 5
            [float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # non-finite true score: wrong
        ]
    )
    labels = torch.tensor([0, 0, 1, 2, 5, 4, 3, 0])
    assert true_class_rank(scores, labels).tolist() == [0, 1, 2, 6, 5, 5, 4, 7]
    assert topk_correct(scores, labels, 1).tolist() == [True, False, False, False, False, False, False, False]
    assert topk_correct(scores, labels, 2).tolist() == [True, True, False, False, False, False, False, False]
    assert topk_correct(scores, labels, 5).tolist() == [True, True, True, False, False, False, True, False]
    assert topk_error(scores, labels, 1) == pytest.approx(100 * 7 / 8)
    assert topk_error(scores, labels, 5) == pytest.approx(100 * 4 / 8)
    # a tie is never resolved in the true class's favour, whichever side of it the label sits
    tie = torch.tensor([[2.0, 2.0, 0.0]])
    assert not topk_correct(tie, torch.tensor([0]), 1) and not topk_correct(tie, torch.tensor([1]), 1)


@pytest.mark.unit
def test_topk_error_rejects_bad_shapes():
    with pytest.raises(ValueError, match="scores must be"):
        true_class_rank(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="zero images"):
        topk_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 1)


# ---------------------------------------------------------------- ten-crop averaging


class _PerImageLinear(torch.nn.Module):
    """A model whose logits depend on the whole view, so views differ."""

    def __init__(self, classes=6, size=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(classes, 3 * size * size, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


@pytest.mark.unit
def test_ten_crop_probs_is_mean_of_view_softmaxes_and_centre_is_view_4():
    model = _PerImageLinear()
    views = torch.randn(3, 10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, centre = ten_crop_probs(model, views)
    ref = torch.stack(
        [torch.stack([torch.softmax(model(views[i, v : v + 1]), 1)[0] for v in range(10)]).mean(0) for i in range(3)]
    )
    torch.testing.assert_close(mean, ref)
    torch.testing.assert_close(centre, torch.softmax(model(views[:, CENTER_VIEW]), 1))
    torch.testing.assert_close(mean.sum(1), torch.ones(3))


@pytest.mark.unit
def test_ten_crop_probs_uses_one_forward_call():
    calls = []
    model = _PerImageLinear()
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    ten_crop_probs(model, torch.zeros(4, 10, 3, 8, 8))
    assert calls == [torch.Size([40, 3, 8, 8])]


@pytest.mark.unit
def test_eval_counts_add_up_and_name_errors():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    centre = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 1, 0])
    whole = EvalCounts(3)
    whole.update(probs, centre, labels)
    parts = EvalCounts(3)
    for sl in (slice(0, 3), slice(3, 4)):
        part = EvalCounts(3)
        part.update(probs[sl], centre[sl], labels[sl])
        parts.add(part)
    for name in whole.tensors:
        assert torch.equal(whole.tensors[name], parts.tensors[name]), name
    assert whole.images == 4
    errs = whole.errors()
    assert errs["val_top1_err_10crop"] == pytest.approx(50.0)  # rows 0, 1 right; row 2 tied; row 3 wrong
    assert errs["val_top1_err_center"] == pytest.approx(75.0)
    assert errs["val_top5_err_10crop"] == 0.0  # 3 classes: everything is in the top 5
    assert whole.tensors["class_images"].tolist() == [2, 2, 0]
    assert whole.tensors["class_top1_10crop"].tolist() == [1, 1, 0]
    # confusion rows = true, columns = argmax (row 2's tie goes to class 0)
    assert whole.tensors["confusion"].tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="label 3 outside"):
        whole.update(probs[:1], centre[:1], torch.tensor([3]))


# ---------------------------------------------------------------- tables


CLASSES = [{"index": str(i), "wnid": f"n0000000{i}", "names": f"thing {i}, sort {i}"} for i in range(3)]


@pytest.mark.unit
def test_per_class_confusions_and_comparison(tmp_path):
    rows = report_tables.per_class_rows(CLASSES, [4, 2, 0], [3, 1, 0], [2, 2, 0])
    assert rows[0] == [0, "n00000000", "thing 0, sort 0", 4, "75.00", "50.00"]
    assert rows[2][4:] == ["", ""]
    report_tables.write_per_class(tmp_path / "per_class.csv", rows)
    with open(tmp_path / "per_class.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert back[0]["name"] == "thing 0, sort 0" and back[1]["top1_acc_center"] == "100.00"

    confusion = np.array([[5, 3, 2], [3, 4, 0], [0, 1, 9]])
    pairs = report_tables.confusion_pairs(confusion, top=3)
    # equal counts (0->1 and 1->0: 3 each) ordered by share: 3/7 before 3/10
    assert pairs == [(1, 0, 3, 3 / 7), (0, 1, 3, 3 / 10), (0, 2, 2, 2 / 10)]
    report_tables.write_confusions(tmp_path / "confusions.csv", CLASSES, pairs)
    with open(tmp_path / "confusions.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert back[0]["true_wnid"] == "n00000001" and back[0]["predicted_wnid"] == "n00000000"
    assert back[0]["count"] == "3" and back[0]["share"] == "0.4286"

    metrics = {
        "dataset_label": report_tables.dataset_label("demo", 3, 6),
        "checkpoint": "best.pt",
        "epoch": 2,
        "checkpoint_choice": "best",
        "images": 6,
        "classes": 3,
        "val_top1_err_center": 50.0,
        "val_top5_err_center": 0.0,
        "val_top1_err_10crop": 33.333,
        "val_top5_err_10crop": 0.0,
    }
    md = report_tables.comparison_markdown(metrics)
    assert "demo (synthetic, 3 classes) — not comparable to ImageNet" in md
    assert "| 40.42 | 18.15 |" in md and "43.48" in md and "| 33.33 |" in md
    assert "Not comparable" in md
    assert "Checkpoint: the epoch with the lowest validation error, chosen on this same validation set" in md
    assert "Checkpoint: the final network" in report_tables.comparison_markdown(
        {**metrics, "checkpoint_choice": "last"}
    )
    report_tables.plot_per_class(tmp_path / "per_class.png", rows, "demo")
    assert (tmp_path / "per_class.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.unit
def test_dataset_label():
    assert report_tables.dataset_label("imagenet", 1000, ILSVRC_VAL_IMAGES) == "ILSVRC-2012 validation"
    assert "subset" in report_tables.dataset_label("imagenet", 1000, 1000)
    assert "not ILSVRC-2012" in report_tables.dataset_label("mine", 20, 100)


# ---------------------------------------------------------------- the stage on tiny shards

import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from pipeline.checkpoint import model_from_checkpoint, save_checkpoint  # noqa: E402
from pipeline.evaluate import EvaluateError, evaluate, main, make_loader, score  # noqa: E402
from pipeline.io import write_json, write_tsv  # noqa: E402
from pipeline.shards import ShardWriter, read_shard  # noqa: E402

from helpers import AUGMENT, alexnet_checkpoint, smooth_image, torchrun, write_classes, write_pca  # noqa: E402

NUM_CLASSES = 6
SHARD_SIZES = (4, 3)  # 7 images: not a multiple of the batch (3) on one rank or two
CORNERS = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]  # (x, y) offsets: TL, TR, BL, BR, C (section 4.1)


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _reference_probs(model, image: np.ndarray, mean_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paper, section 4.1, one view at a time in numpy: (mean of ten softmaxes, centre softmax).

    In float64 (model and pixels), so the reference itself carries no float32 rounding.
    """
    model = copy.deepcopy(model).double()
    x = image.astype(np.float64) - mean_image  # the paper's normalisation: minus the training mean image
    views = [x[oy : oy + 224, ox : ox + 224] for ox, oy in CORNERS]
    views += [v[:, ::-1] for v in views]
    probs = []
    with torch.no_grad():
        for v in views:
            chw = torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1)))[None]
            probs.append(torch.softmax(model(chw), dim=1)[0].double().numpy())
    return np.mean(probs, axis=0), probs[4]


def _reference_errors(probs: np.ndarray, labels) -> tuple[float, float]:
    ranks = [(p > p[y]).sum() for p, y in zip(probs, labels)]  # no ties in random floats
    return tuple(100.0 * np.mean([r >= k for r in ranks]) for k in (1, 5))


# the true class's place in the reference ten-crop ranking, per image: right at top-1,
# right at top-5 only, wrong at both -> ten-crop top-1 error 4/7, top-5 error 2/7
TRUE_RANKS = [0, 2, 5, 0, 2, 5, 0]


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    """Seven decoded-once JPEGs in two val shards, labelled from the reference so the answers are known."""
    root = tmp_path_factory.mktemp("evaluate")
    results = root / "results"
    rng = np.random.default_rng(0)
    jpegs = [_jpeg(smooth_image(rng)) for _ in TRUE_RANKS]
    images = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]  # = DALI's CPU decode
    mean_image = rng.uniform(60, 200, (256, 256, 3)).astype(np.float32)
    ckpt = results / "train" / "checkpoints" / "best.pt"
    # no dropout_style: a checkpoint from before it was recorded, which loads with torch's dropout
    save_checkpoint(ckpt, alexnet_checkpoint(NUM_CLASSES, epoch=3, step=12, dropout_style=None))
    model, _ = model_from_checkpoint(ckpt, devices=["cpu"])
    pairs = [_reference_probs(model, im, mean_image) for im in images]
    reference = {"10crop": np.stack([p for p, _ in pairs]), "center": np.stack([c for _, c in pairs])}
    labels = [int(np.argsort(-p)[r]) for p, r in zip(reference["10crop"], TRUE_RANKS)]
    for probs in (reference["10crop"], reference["center"]):  # no near-ties, so float32 cannot reorder
        gaps = np.diff(np.sort(probs, axis=1), axis=1)
        assert gaps.min() > 1e-5, "the generated images give a near-tie; change the fixture's seed"

    keys, entries, i = [], [], 0
    for k, n in enumerate(SHARD_SIZES):
        tar = results / "shards" / "val" / f"val-{k:05d}.tar"
        with ShardWriter(tar) as w:
            for _ in range(n):
                keys.append(f"ILSVRC2012_val_{i:08d}")
                w.add(keys[-1], jpegs[i], labels[i])
                i += 1
        entries.append(
            {
                "images": n,
                "tar": os.path.relpath(tar, results / "shards"),
                "idx": os.path.relpath(tar.with_suffix(".idx"), results / "shards"),
                "bytes": tar.stat().st_size,
                **w.checksums,  # as the resize stage records them: the stage verifies them
            }
        )
    classes = write_classes(results / "fetch" / "classes.tsv", NUM_CLASSES)
    write_json(
        results / "shards" / "manifest.json",
        {
            "val": {"images": len(keys), "shards": entries},
            "classes": [{"index": c, "wnid": w, "names": n, "val": labels.count(c)} for c, w, n in classes],
        },
    )
    (results / "pca").mkdir()
    np.save(results / "pca" / "mean_image.npy", mean_image)
    write_pca(results / "pca" / "pca.json")
    return {
        "root": root,
        "results": results,
        "images": images,
        "labels": labels,
        "keys": keys,
        "mean_image": mean_image,
        "checkpoint": ckpt,
        "manifest": results / "shards" / "manifest.json",
        "pca": results / "pca" / "pca.json",
        "mean_npy": results / "pca" / "mean_image.npy",
        "classes": results / "fetch" / "classes.tsv",
        "reference": reference,
    }


@pytest.fixture(scope="module")
def reference(val_data):
    return val_data["reference"]


PATHS = ("checkpoint", "manifest", "pca", "mean_npy", "classes")


def _evaluate(paths, out, **kw) -> dict:
    """The stage's function on `paths` (val_data, or files of the same keys), one CPU thread."""
    return evaluate(*(paths[k] for k in PATHS), out, devices="cpu", threads=1, **kw)


def _stage_args(paths, out, *more) -> list[str]:
    """The stage's command-line arguments for `paths`, writing to `out`; `more` after them."""
    inputs = ["--checkpoint", str(paths["checkpoint"]), "--shards-manifest", str(paths["manifest"])]
    inputs += ["--pca", str(paths["pca"]), "--mean-image", str(paths["mean_npy"]), "--classes", str(paths["classes"])]
    return inputs + ["--out-dir", str(out), *more]


def _loader(val_data, shard_id=0, num_shards=1, batch_size=3):
    shards = [str(p) for p in sorted((val_data["results"] / "shards" / "val").glob("*.tar"))]
    return make_loader(
        shards,
        val_data["pca"],
        val_data["mean_npy"],
        AUGMENT,
        batch_size,
        "cpu",
        shard_id=shard_id,
        num_shards=num_shards,
        threads=1,
    )


@pytest.mark.integration
def test_ten_crop_equals_reference_views_in_both_layouts(val_data, reference):
    grouped, meta = model_from_checkpoint(val_data["checkpoint"], devices=["cpu"])
    split, _ = model_from_checkpoint(val_data["checkpoint"], devices=["cpu", "cpu"])  # two-column layout
    assert meta["epoch"] == 3
    index = {k: i for i, k in enumerate(val_data["keys"])}
    seen = []
    with torch.no_grad():
        for images, labels, keys in _loader(val_data):
            rows = [index[k] for k in keys]
            assert labels.tolist() == [val_data["labels"][r] for r in rows]
            for model in (grouped, split):
                # the network in float64, so the two layouts' summation orders do not
                # matter; what is left is ten_crop_probs's float32 softmax, a few
                # roundings of 2^-24 on probabilities of at most 1
                probs_10crop, probs_center = ten_crop_probs(model.double(), images.double())
                np.testing.assert_allclose(probs_10crop.double().numpy(), reference["10crop"][rows], atol=1e-6)
                np.testing.assert_allclose(probs_center.double().numpy(), reference["center"][rows], atol=1e-6)
            seen += keys
    assert seen == val_data["keys"]
    # the views really differ, so averaging them is not the centre crop in disguise
    assert np.abs(reference["10crop"] - reference["center"]).max() > 1e-3


def _score(val_data, shard_id, num_shards):
    model, _ = model_from_checkpoint(val_data["checkpoint"], devices=["cpu"])
    loader = _loader(val_data, shard_id, num_shards)
    keys = [k for _, _, batch_keys in loader for k in batch_keys]
    assert len(keys) == len(loader)
    counts, _, _ = score(model, loader, NUM_CLASSES, progress=False)
    return counts, keys


@pytest.mark.integration
def test_two_shards_score_every_image_exactly_once(val_data):
    whole, keys = _score(val_data, 0, 1)
    parts = [_score(val_data, r, 2) for r in range(2)]
    assert sorted(keys) == sorted(parts[0][1] + parts[1][1]) == sorted(val_data["keys"])
    assert not set(parts[0][1]) & set(parts[1][1])
    summed = parts[0][0].add(parts[1][0])
    assert summed.images == whole.images == 7
    for name in whole.tensors:
        assert torch.equal(summed.tensors[name], whole.tensors[name]), name


@pytest.mark.integration
def test_stage_writes_metrics_tables_and_plot(val_data, reference, tmp_path):
    out = tmp_path / "evaluate"
    metrics = _evaluate(val_data, out, dataset_name="demo", batch_size=3)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    e1, e5 = _reference_errors(reference["10crop"], val_data["labels"])
    c1, c5 = _reference_errors(reference["center"], val_data["labels"])
    assert metrics["val_top1_err_10crop"] == pytest.approx(e1) and metrics["val_top5_err_10crop"] == pytest.approx(e5)
    assert metrics["val_top1_err_center"] == pytest.approx(c1) and metrics["val_top5_err_center"] == pytest.approx(c5)
    assert (e1, e5) == (pytest.approx(100 * 4 / 7), pytest.approx(100 * 2 / 7))  # TRUE_RANKS
    assert metrics["val_images"] == 7 and metrics["checkpoint_epoch"] == 3 and metrics["dataset"] == "demo"
    assert metrics["eval_images_per_s"] > 0 and metrics["checkpoint"] == str(val_data["checkpoint"])
    assert metrics["checkpoint_choice"] == {"last.pt": "last", "best.pt": "best"}.get(
        Path(val_data["checkpoint"]).name, "given"
    )
    assert 0 <= metrics["data_wait_fraction"] <= 1

    with open(out / "per_class.csv", newline="") as f:
        per_class = list(csv.DictReader(f))
    assert [int(r["images"]) for r in per_class] == [val_data["labels"].count(c) for c in range(NUM_CLASSES)]
    pred = reference["10crop"].argmax(1)
    for c, row in enumerate(per_class):
        mine = [p == y for p, y in zip(pred, val_data["labels"]) if y == c]
        assert row["top1_acc_10crop"] == (f"{100 * np.mean(mine):.2f}" if mine else "")
    with open(out / "confusions.csv", newline="") as f:
        confusions = list(csv.DictReader(f))
    wrong = sum(p != y for p, y in zip(pred, val_data["labels"]))
    assert sum(int(r["count"]) for r in confusions) == wrong  # fewer than 20 pairs: all of them
    md = (out / "comparison.md").read_text()
    assert "demo (synthetic, 6 classes) — not comparable to ImageNet" in md and "| 40.70 | 18.20 |" in md
    assert (out / "per_class.png").stat().st_size > 1000


@pytest.mark.integration
def test_torchrun_two_ranks_give_the_one_process_numbers(val_data, tmp_path):
    """Two gloo ranks, each its EvalLoader shard; counts all-reduced; rank 0 writes."""
    out = tmp_path / "evaluate"
    more = ["--dataset-name", "demo", "--batch-size", "3", "--devices", "cpu", "--dali-threads", "1"]
    cmd = torchrun("pipeline.evaluate") + _stage_args(val_data, out, *more)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((out / "metrics.json").read_text())
    one_out = tmp_path / "one"
    one = _evaluate(val_data, one_out, batch_size=3)
    assert two["world_size"] == 2 and two["val_images"] == 7
    for key in ("val_top1_err_10crop", "val_top5_err_10crop", "val_top1_err_center", "val_top5_err_center"):
        assert two[key] == one[key], key
    assert (out / "per_class.csv").read_text() == (one_out / "per_class.csv").read_text()
    assert (out / "confusions.csv").read_text() == (one_out / "confusions.csv").read_text()


@pytest.mark.integration
def test_bad_inputs_fail_with_a_clear_message(val_data, tmp_path, capsys):
    args = _stage_args(val_data, tmp_path / "out", "--devices", "cpu")
    # a manifest that promises another image count: the stage refuses to report
    manifest = json.loads(val_data["manifest"].read_text())
    manifest["val"]["images"] = 8
    for e in manifest["val"]["shards"]:
        e["tar"] = str(val_data["results"] / "shards" / e["tar"])
    bad_manifest = tmp_path / "manifest.json"
    bad_manifest.write_text(json.dumps(manifest))
    with pytest.raises(EvaluateError, match="scored 7 validation images but .* lists 8"):
        _evaluate({**val_data, "manifest": bad_manifest}, tmp_path / "out", batch_size=4)
    assert not (tmp_path / "out" / "metrics.json").exists()
    # a class table of another size than the checkpoint's outputs
    other = tmp_path / "classes.tsv"
    write_tsv(other, ["index", "wnid", "names"], [[c, f"n{c:08d}", "x"] for c in range(4)])
    assert main(args[:9] + [str(other)] + args[10:]) == 1
    assert "lists 4 classes but checkpoint" in capsys.readouterr().err
    # a missing input of an earlier stage
    assert main(args[:5] + [str(tmp_path / "pca.json")] + args[6:]) == 1
    assert "pca.json does not exist; run the pca stage first" in capsys.readouterr().err
    # a missing checkpoint
    assert main(["--checkpoint", str(tmp_path / "nope.pt")] + args[2:]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.pt does not exist" in err and "Traceback" not in err


# ---------------------------------------------------------------- damaged shards


def _damaged_copy(val_data, tmp_path) -> dict:
    """The stage's inputs in a copy whose shards a test may damage."""
    results = tmp_path / "results"
    shutil.copytree(val_data["results"], results)
    return {k: results / v.relative_to(val_data["results"]) for k, v in val_data.items() if k in PATHS}


def _run_stage(paths, out) -> int:
    return main(_stage_args(paths, out, "--devices", "cpu", "--dali-threads", "1", "--batch-size", "4"))


@pytest.mark.integration
def test_a_flipped_shard_stops_the_stage_before_scoring_naming_it_and_its_rebuild(val_data, tmp_path, capsys):
    paths = _damaged_copy(val_data, tmp_path)
    tar = paths["manifest"].parent / "val" / "val-00001.tar"
    data = bytearray(tar.read_bytes())
    data[600:4696] = bytes(b ^ 0xFF for b in data[600:4696])  # over the first image's data
    tar.write_bytes(bytes(data))
    assert _run_stage(paths, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 of 2 val shards differ") and "Traceback" not in err
    assert f"{tar}: sha256: expected " in err and "(the same size)" in err
    assert f"snakemake --cores all --forcerun resize_shard -- {tar}" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.integration
def test_an_undecodable_image_in_a_verified_shard_is_named_by_shard_and_key(val_data, tmp_path, capsys):
    paths = _damaged_copy(val_data, tmp_path)
    tar = paths["manifest"].parent / "val" / "val-00000.tar"
    samples = list(read_shard(tar))
    with ShardWriter(tar) as w:  # written with a garbage image: the checksums hold, the decoder fails
        for i, (key, jpeg, label) in enumerate(samples):
            w.add(key, b"\xff\xd8\xff\xe0 garbage " * 30 if i == 1 else jpeg, label)
    manifest = json.loads(paths["manifest"].read_text())
    manifest["val"]["shards"][0].update(w.checksums, bytes=tar.stat().st_size)
    write_json(paths["manifest"], manifest)
    assert _run_stage(paths, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"shard {tar}, sample {samples[1][0]} (" in err and "cannot be decoded" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "metrics.json").exists()
