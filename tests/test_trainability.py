"""The trainability verdict (pipeline/training/verdict.py), the stage that trains the candidate
inits (pipeline/trainability.py) and the forecast's section on it."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.trainability import check_trainability
from pipeline.training.verdict import dead_shares, left_chance_step, recommend, run_verdict, section

from helpers import SMALL

LN1000 = math.log(1000)


def windows(losses: list[float], dead: list[float] | None = None, every: int = 20) -> list[dict]:
    rows = []
    for i, loss in enumerate(losses):
        row = {"step": (i + 1) * every, "train_loss": loss, "images_per_s": 1280.0}
        if dead:
            row["health"] = {"fc7": {"dead": dead[i]}}
        rows.append(row)
    return rows


@pytest.mark.unit
def test_the_step_a_loss_left_chance_is_the_first_window_past_the_margin():
    rows = windows([7.05, 6.95, 6.90, 6.85, 6.70, 6.30])
    assert left_chance_step(rows, 1000, 0.1) == 100  # 6.70 < ln(1000) - 0.1 = 6.808
    assert left_chance_step(rows, 1000, 0.5) == 120
    assert left_chance_step(windows([6.91] * 10), 1000, 0.1) is None


@pytest.mark.unit
def test_dead_shares_are_sampled_at_the_first_and_last_windows_and_near_fixed_steps():
    rows = windows([6.9] * 150, dead=[i / 150 for i in range(150)])  # steps 20 .. 3000
    shares = dead_shares(rows)
    assert list(shares) == ["20", "240", "500", "1000", "2000", "3000"]
    assert shares["20"] == 0.0 and shares["3000"] == pytest.approx(149 / 150)


def verdict(init: str, losses: list[float]) -> dict:
    rows = windows(losses, dead=[0.5] * len(losses)) + [{"epoch": 1, "val_top1_err": 99.0, "val_top5_err": 97.5}]
    return run_verdict(init, rows, 1000, 128)


@pytest.mark.unit
def test_the_paper_init_is_kept_while_it_leaves_chance():
    paper, other = verdict("paper", [6.95, 6.7, 6.2]), verdict("cuda_convnet2", [6.6, 6.0, 5.5])
    assert paper["left_chance_step"] == 40 and paper["steps_per_s"] == pytest.approx(10.0)
    assert paper["best_val_top5_err"] == 97.5 and paper["chance_top5_err"] == pytest.approx(99.5)
    assert recommend([paper, other])[0] == "paper"


@pytest.mark.unit
def test_another_init_is_recommended_when_the_paper_init_stalls():
    paper, other = verdict("paper", [7.0, 6.92, 6.91]), verdict("cuda_convnet2", [6.95, 6.7, 6.2])
    init, why = recommend([paper, other])
    assert init == "cuda_convnet2" and "train.init: cuda_convnet2" in why and "bias_lr_factor: 2" in why
    lines = "\n".join(
        section(
            {"ran": True, "device": "cuda", "steps": 60, "runs": [paper, other], **dict(recommended_init=init, why=why)}
        )
    )
    assert "paper: did not leave chance" in lines and "cuda_convnet2: left chance at step 40" in lines
    assert "**Use: cuda_convnet2**" in lines


@pytest.mark.unit
def test_no_recommendation_when_nothing_leaves_chance():
    init, why = recommend([verdict("paper", [6.91] * 3), verdict("caffe", [6.90] * 3)])
    assert init is None and "do not start the real run" in why


def _check_trainability(data, out, inits, steps, flags, **kw) -> dict:
    """The trainability stage on train_data's files, its candidates' runs in `out`."""
    return check_trainability(
        data["manifest"], data["pca"], data["mean_image"], data["classes"], out, inits, steps, flags, **kw
    )


@pytest.mark.unit
def test_without_a_gpu_the_candidates_are_not_trained_and_the_verdict_says_so(train_data, tmp_path):
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("a GPU is present: the candidates would train")
    result = _check_trainability(train_data, tmp_path, ["paper"], 2500, [])
    assert result["ran"] is False and "no GPU" in result["reason"]
    assert json.loads((tmp_path / "trainability.json").read_text()) == result
    assert not (tmp_path / "paper").exists()
    assert "Not trained here" in "\n".join(section(result))


@pytest.mark.integration
def test_the_stage_trains_each_candidate_through_the_train_command(train_data, tmp_path):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "init"]
    flags += ["--batch-size", "4"]
    result = _check_trainability(train_data, tmp_path, ["paper", "caffe"], 3, flags, on_cpu=True)
    assert result["ran"] and [r["init"] for r in result["runs"]] == ["paper", "caffe"]
    for init, bias_lr in (("paper", 1.0), ("caffe", 2.0)):  # each init with its source's bias lr
        train = json.loads((tmp_path / init / "train.json").read_text())
        assert train["steps"] == 3
        ckpt = pytest.importorskip("torch").load(tmp_path / init / "checkpoints" / "last.pt", weights_only=False)
        assert ckpt["config"]["model"]["init"] == init and ckpt["config"]["recipe"]["bias_lr_factor"] == bias_lr
    mtime = (tmp_path / "paper" / "train.json").stat().st_mtime
    # a rerun keeps the candidates already trained
    again = _check_trainability(train_data, tmp_path, ["paper", "caffe"], 3, flags, on_cpu=True)
    assert (tmp_path / "paper" / "train.json").stat().st_mtime == mtime and again["runs"] == result["runs"]
