"""The run folder: whether a rerun resumes, extends or starts over, and what each leaves on disk."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.io import read_json
from pipeline.train import TrainConfig
from pipeline.training.run_folder import RunFolder, plan_start, set_aside, truncate_jsonl

pytestmark = pytest.mark.unit

CLASSES = 4
SMALL = dict(width=0.0625, init="caffe", batch_size=4, lr=0.01, devices="cpu")


def test_plan_start_decisions(tmp_path):
    cfg = TrainConfig(**SMALL)
    key, inputs, last = (
        cfg.key(CLASSES),
        {k: "x" for k in ("manifest", "shards", "pca", "mean_image", "classes")},
        tmp_path / "last.pt",
    )
    ckpt = {"config": {**key, "inputs": inputs}, "epoch": 3, "step": 36, "uid": "a"}
    plan = lambda c=ckpt, f=None, k=key, i=inputs, e=3, fresh=False: plan_start(c, f, k, i, e, last, fresh)  # noqa: E731
    assert plan()[0] == "resume" and "interruption" in plan()[1]  # no finished mark: it was killed after epoch 3
    assert plan(f={"uid": "a", "epoch": 3})[0] == "start"
    assert plan(f={"uid": "other", "epoch": 3})[0] == "resume"  # the mark of an earlier run
    assert plan(f={"uid": "a", "epoch": 3}, e=5)[0] == "extend"
    assert plan(e=2) == ("start", f"starting over: {last} is at epoch 3, past the 2 asked for")
    assert plan(c=None)[0] == "start" and plan(fresh=True) == ("start", "starting over: --fresh")
    other = dict(inputs, shards="y", classes="z")
    assert plan(i=other) == (
        "start",
        "starting over: the training and validation shards and the class list differ from the checkpoint's",
    )
    assert plan(c={**ckpt, "config": key})[0] == "start"  # a checkpoint with no fingerprints (older version)
    lr = TrainConfig(**{**SMALL, "lr": 0.02}).key(CLASSES)
    assert plan(k=lr) == ("start", "starting over: the recipe differs from the checkpoint's (lr 0.01 -> 0.02)")


def test_truncate_drops_lines_after_the_checkpoint_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 4, "epoch": 1, "train_loss": 1.0},
        {"step": 4, "epoch": 1, "val_top1_err": 50.0},
        {"step": 8, "epoch": 2, "train_loss": 0.5},
        {"step": 6, "epoch": 2, "warning": "flat"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "ep')
    truncate_jsonl(path, step=4, epoch=1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    assert not list(tmp_path.glob("*.tmp-*"))


def _ckpt(epoch: int) -> dict:
    return {"model": {"w": torch.zeros(1)}, "config": {}, "epoch": epoch, "step": 3 * epoch}


def test_set_aside_keeps_one_generation_and_drops_leftovers_without_a_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    folder.checkpoints.mkdir()
    folder.metrics.write_text("killed before its first epoch\n")
    assert set_aside(tmp_path) is None and not folder.metrics.exists() and not folder.checkpoints.exists()
    for generation in ("first", "second"):
        folder.checkpoints.mkdir()
        folder.save(_ckpt(1), best=True)
        folder.metrics.write_text(generation)
        assert set_aside(tmp_path) == tmp_path / "previous"
    assert (tmp_path / "previous" / "metrics.jsonl").read_text() == "second"
    assert (tmp_path / "previous" / "checkpoints" / "best.pt").exists()
    assert not folder.checkpoints.exists()


def test_prepare_save_and_finish_write_the_documented_files(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_last(fresh=False) == (None, None)
    assert folder.prepare({"action": "start", "uid": "u1"}, 0, 0, None) is None
    assert read_json(tmp_path / "attempt.json") == {"action": "start", "uid": "u1"}
    folder.save(_ckpt(1), best=True)
    folder.save(_ckpt(2), best=False)
    assert load_checkpoint(folder.last)["epoch"] == 2
    assert load_checkpoint(folder.checkpoints / "best.pt")["epoch"] == 1
    assert folder.read_last(fresh=True) == (None, None)
    folder.finish({"epochs": 2, "steps": 6}, "u1")
    assert read_json(tmp_path / "train.json") == {"epochs": 2, "steps": 6}
    ckpt, finished = folder.read_last(fresh=False)
    assert ckpt["epoch"] == 2 and finished == {"uid": "u1", "epoch": 2, "step": 6}
    # a resumed attempt keeps the folder and drops the metrics logged after the checkpoint
    folder.metrics.write_text(json.dumps({"step": 6, "epoch": 2}) + "\n" + json.dumps({"step": 7, "epoch": 3}) + "\n")
    assert folder.prepare({"action": "resume", "uid": "u1"}, 6, 2, 1) is None
    assert folder.metrics.read_text().count("\n") == 1 and folder.last.exists()
