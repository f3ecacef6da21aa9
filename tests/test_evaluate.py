"""Ten-crop evaluation: top-k with ties, ten-crop averaging, tables, and the stage end to end on tiny shards."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pipeline.metrics import CENTER_VIEW, EvalCounts, ten_crop_probs, topk_correct, topk_error, true_class_rank
from pipeline import report_tables


# ---------------------------------------------------------------- top-k, ties


def test_topk_hand_made_logits_with_ties():
    scores = torch.tensor([
        [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 0: clear winner
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # true 0 tied with class 1 for first: wrong at 1, right at 2
        [3.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0],  # true 1 tied with 2 at rank 2: 2 classes >= it -> right at 5, wrong at 2
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # constant output: never right below k=7
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # true 5: rank 5, wrong at 5
        [6.0, 5.0, 4.0, 3.0, 1.0, 1.0, 0.0],  # true 4 tied with 5 after four higher: 5 >= -> wrong at 5
        [6.0, 5.0, 4.0, 1.0, 1.0, 0.0, 0.0],  # true 3 tied with 4 after three higher: 4 >= -> right at 5
        [float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # non-finite true score: wrong
    ])
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


def test_ten_crop_probs_is_mean_of_view_softmaxes_and_centre_is_view_4():
    model = _PerImageLinear()
    views = torch.randn(3, 10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, centre = ten_crop_probs(model, views)
    ref = torch.stack([torch.stack([torch.softmax(model(views[i, v:v + 1]), 1)[0] for v in range(10)]).mean(0)
                       for i in range(3)])
    torch.testing.assert_close(mean, ref)
    torch.testing.assert_close(centre, torch.softmax(model(views[:, CENTER_VIEW]), 1))
    torch.testing.assert_close(mean.sum(1), torch.ones(3))


def test_ten_crop_probs_uses_one_forward_call():
    calls = []
    model = _PerImageLinear()
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    ten_crop_probs(model, torch.zeros(4, 10, 3, 8, 8))
    assert calls == [torch.Size([40, 3, 8, 8])]


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

    metrics = {"dataset_label": report_tables.dataset_label("demo", 3, 6), "checkpoint": "best.pt", "epoch": 2,
               "images": 6, "classes": 3, "val_top1_err_center": 50.0, "val_top5_err_center": 0.0,
               "val_top1_err_10crop": 33.333, "val_top5_err_10crop": 0.0}
    md = report_tables.comparison_markdown(metrics)
    assert "demo (synthetic, 3 classes) — not comparable to ImageNet" in md
    assert "| 40.42 | 18.15 |" in md and "43.48" in md and "| 33.33 |" in md
    assert "Not comparable" in md
    report_tables.plot_per_class(tmp_path / "per_class.png", rows, "demo")
    assert (tmp_path / "per_class.png").read_bytes()[:4] == b"\x89PNG"


def test_dataset_label():
    assert report_tables.dataset_label("imagenet", 1000, 50000) == "ILSVRC-2012 validation"
    assert "subset" in report_tables.dataset_label("imagenet", 1000, 1000)
    assert "not ILSVRC-2012" in report_tables.dataset_label("mine", 20, 100)
