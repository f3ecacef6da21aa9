"""pipeline/checkpoint.py: saving and loading, the errors a user sees, best.pt's link, RNG states, the model."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from model.alexnet import PaperDropout
from pipeline.checkpoint import (
    CheckpointError,
    build_model,
    keep_best,
    load_checkpoint,
    model_from_checkpoint,
    model_from_state,
    restore_best,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pipeline.errors import PipelineError

pytestmark = pytest.mark.unit

MODEL = {"num_classes": 4, "width": 0.0625, "init": "caffe", "dropout_style": "paper"}


def state(epoch: int, **extra) -> dict:
    return {
        "model": {"w": torch.full((2,), float(epoch))},
        "config": {"model": MODEL},
        "epoch": epoch,
        "step": 3 * epoch,
        **extra,
    }


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class NotPlainData:
    """Stands for any pickled object: loading one could run code, so a checkpoint must not hold it."""


def test_save_and_load_round_trip_plain_types_and_tensors(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    saved = state(2, best={"epoch": 1, "val_top1_err": 61.5}, optimizer={"lr": 0.01}, totals=[10, 2.5])
    save_checkpoint(path, saved)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], saved["model"]["w"])
    assert {k: v for k, v in loaded.items() if k != "model"} == {k: v for k, v in saved.items() if k != "model"}
    assert files(path.parent) == ["last.pt"]


def test_a_missing_checkpoint_says_to_train_first(tmp_path):
    path = tmp_path / "best.pt"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path} does not exist; run the train stage first"
    assert isinstance(err.value, PipelineError)  # reported by the stages' CLIs as one error line


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled object"])
def test_an_unreadable_checkpoint_names_the_file_and_what_to_do(tmp_path, damage):
    path = tmp_path / "last.pt"
    if damage == "truncated":  # a copy cut short
        save_checkpoint(path, state(1))
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:  # refused without being run: checkpoints load with weights_only
        torch.save({**state(1), "extra": NotPlainData()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} cannot be read (") and message.endswith("delete it to start over")
    assert err.value.__cause__ is not None


@pytest.mark.parametrize(
    "content, missing",
    [
        ({"model": {}, "epoch": 1}, "config, step"),
        ({"weights": torch.zeros(1)}, "model, config, epoch, step"),
        (torch.zeros(3), "model, config, epoch, step"),  # a bare tensor, not even a dict
    ],
)
def test_a_foreign_file_is_not_taken_for_a_checkpoint(tmp_path, content, missing):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=f"is not a training checkpoint \\(missing {missing}\\)") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_keep_best_links_best_to_the_kept_epoch_and_drops_older_ones(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, state(1))
    assert keep_best(tmp_path, 1) == tmp_path / "epoch-001.pt"
    assert (tmp_path / "best.pt").samefile(tmp_path / "epoch-001.pt")  # one copy on disk
    save_checkpoint(last, state(2))  # an epoch that is not better: last.pt moves on, best stays
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    save_checkpoint(last, state(3))
    keep_best(tmp_path, 3)
    assert files(tmp_path) == ["best.pt", "epoch-003.pt", "last.pt"]
    assert (tmp_path / "best.pt").samefile(tmp_path / "epoch-003.pt")
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_keep_best_copies_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    save_checkpoint(tmp_path / "last.pt", state(4))
    keep_best(tmp_path, 4)
    best, kept = tmp_path / "best.pt", tmp_path / "epoch-004.pt"
    assert not best.samefile(kept) and best.read_bytes() == kept.read_bytes()
    assert load_checkpoint(best)["epoch"] == 4
    assert files(tmp_path) == ["best.pt", "epoch-004.pt", "last.pt"]


def test_restore_best_relinks_best_to_the_best_epoch_after_a_resume(tmp_path):
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path / "last.pt", state(epoch))
        if epoch <= 2:
            keep_best(tmp_path, epoch)
    (tmp_path / "best.pt").unlink()  # what Snakemake does to an output before it reruns the rule
    restore_best(tmp_path, 2)
    assert (tmp_path / "best.pt").samefile(tmp_path / "epoch-002.pt")
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert files(tmp_path) == ["best.pt", "epoch-002.pt", "last.pt"]


def test_restore_best_leaves_a_present_best_alone_and_does_nothing_without_a_best_epoch(tmp_path):
    save_checkpoint(tmp_path / "last.pt", state(1))
    keep_best(tmp_path, 1)
    inode = (tmp_path / "best.pt").stat().st_ino
    restore_best(tmp_path, 1)
    assert (tmp_path / "best.pt").stat().st_ino == inode
    (tmp_path / "best.pt").unlink()
    restore_best(tmp_path, None)  # no epoch was best yet: nothing to restore
    assert not (tmp_path / "best.pt").exists()


def test_restore_best_without_the_kept_epoch_says_how_to_start_over(tmp_path):
    save_checkpoint(tmp_path / "last.pt", state(3))
    with pytest.raises(CheckpointError) as err:
        restore_best(tmp_path, 2)
    assert str(err.value) == (
        f"{tmp_path / 'epoch-002.pt'} (the best epoch's checkpoint) is missing; delete {tmp_path} to train from scratch"
    )
    assert not (tmp_path / "best.pt").exists()


def draws() -> tuple:
    return (
        torch.rand(4).tolist(),
        torch.randn(2).tolist(),
        np.random.rand(3).tolist(),
        np.random.normal(),
        random.random(),
        random.gauss(0, 1),
    )


def test_rng_states_survive_a_checkpoint_and_reproduce_the_same_draws(tmp_path):
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    np.random.normal(), random.gauss(0, 1)  # leave a cached Gaussian in numpy's and Python's states
    captured = rng_state()
    expected = draws()
    path = tmp_path / "last.pt"
    save_checkpoint(path, {**state(1), "rng": [captured]})  # as the train stage stores it: one per rank
    draws()  # move every generator on
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert draws() == expected


def test_build_model_defaults_to_the_dropout_older_checkpoints_were_trained_with():
    old = build_model({k: v for k, v in MODEL.items() if k != "dropout_style"})
    assert type(old.dropout) is torch.nn.Dropout
    assert isinstance(build_model(MODEL, ["cpu"]).dropout, PaperDropout)
    assert build_model(MODEL).input_device == torch.device("cpu")


def test_model_from_checkpoint_gives_the_saved_weights_in_eval_mode_and_the_rest_as_meta(tmp_path):
    torch.manual_seed(0)
    trained = build_model(MODEL)
    path = tmp_path / "best.pt"
    save_checkpoint(
        path,
        {
            "model": trained.state_dict(),
            "config": {"model": MODEL},
            "epoch": 5,
            "step": 15,
            "best": {"epoch": 5, "val_top1_err": 40.0},
            "optimizer": {"lr": 0.01},
            "plateau": {"best": 40.0},
            "rng": [rng_state()],
        },
    )
    model, meta = model_from_checkpoint(path, ["cpu"])
    assert not model.training
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), trained.eval()(x))
    assert meta == {"config": {"model": MODEL}, "epoch": 5, "step": 15, "best": {"epoch": 5, "val_top1_err": 40.0}}


def test_weights_that_do_not_fit_their_config_name_the_checkpoint(tmp_path):
    wider = build_model({**MODEL, "width": 0.125}).state_dict()
    with pytest.raises(CheckpointError, match="weights do not fit the model its config describes") as err:
        model_from_state({"model": wider, "config": {"model": MODEL}, "epoch": 1, "step": 3}, tmp_path / "x.pt")
    assert str(err.value).startswith(f"{tmp_path / 'x.pt'}: ")
