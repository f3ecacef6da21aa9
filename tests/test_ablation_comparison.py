"""pipeline/ablations.py's comparison: which claim a variant tests, the noise of a difference, and
a verdict only where the run can resolve the claim."""

import pytest

from pipeline import ablations as ab

pytestmark = pytest.mark.unit


def run(top1: float, top5: float = 0.0, n: int = 200, classes: int = 10) -> dict:
    return {
        "top1_10crop": top1,
        "top5_10crop": top5,
        "top1_center": top1,
        "top5_center": top5,
        "val_images": n,
        "classes": classes,
    }


def test_each_preset_variant_finds_its_claim():
    assert ab.claim_of({"train": {"lrn": False}})["top1"] == 1.4
    assert ab.claim_of({"train": {"columns": 1}})["top5"] == 1.2
    assert ab.claim_of({"augment": {"crops": False, "flips": False}})["overfit"] is True
    assert ab.claim_of({"train": {"activation": "tanh"}})["speed"] == 6.0
    assert ab.claim_of({"train": {"lrn": True}}) is None  # the paper's own setting tests nothing


def test_epochs_to_threshold_counts_steps_in_epochs():
    rows = [{"step": s, "epoch": 1 + (s - 1) // 10, "train_top1_err": 100 - 3 * s} for s in range(1, 31)]
    assert ab.epochs_to(rows, 40.0) == pytest.approx(2.0)  # step 20 of 10-step epochs
    assert ab.epochs_to(rows, 1.0) is None


def test_a_difference_smaller_than_its_noise_is_not_reported_as_a_finding():
    d = ab.difference([run(6.0)], [run(5.0)], "top1_10crop")
    assert d["mean"] == pytest.approx(1.0) and d["noise"] > 3  # about ±4.6 points on 200 images
    assert ab.verdict(d, 1.4, 10).startswith("cannot show")
    # no error at all in either run still has noise: a claim of 1.2 top-5 points cannot be tested on 200 images
    zero = ab.difference([run(5.0, 0.0)], [run(5.0, 0.0)], "top5_10crop")
    assert zero["noise"] > 1.2 and ab.verdict(zero, 1.2, 10).startswith("cannot show")


def test_a_resolved_difference_is_judged_only_on_imagenet():
    big = [run(30.0, n=50_000, classes=1000)], [run(28.6, n=50_000, classes=1000)]
    d = ab.difference(*big, "top1_10crop")
    assert d["noise"] < 1.4 and ab.verdict(d, 1.4, 1000) == "consistent with the claim"
    assert ab.verdict(d, 5.0, 1000) == "differs from the claim"
    small = ab.difference([run(60.0, n=50_000)], [run(40.0, n=50_000)], "top1_10crop")
    assert ab.verdict(small, 1.4, 10).startswith("worse by 20.0 on 10 classes")


def test_seeds_spread_widens_the_noise():
    seeds = ab.difference([run(10.0), run(30.0)], [run(10.0), run(10.0)], "top1_10crop")
    one = ab.difference([run(20.0)], [run(10.0)], "top1_10crop")
    assert seeds["per_seed"] == [0.0, 20.0] and seeds["noise"] > one["noise"]
