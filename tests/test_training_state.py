"""The training's counters, best epoch and history, and the collapse rule read from them."""

from __future__ import annotations

import pytest
import torch

from pipeline.training.recipe import make_plateau, plateau_step, warmup
from pipeline.training.state import TrainState, collapse_epoch

pytestmark = pytest.mark.unit


def test_state_round_trips_through_a_checkpoint_and_fills_missing_counters():
    state = TrainState()
    assert state.end_epoch(1, 0.01, 80.0, 50.0) and not state.end_epoch(2, 0.01, 81.0, 49.0)
    assert state.end_epoch(3, 0.001, 70.0, 40.0)
    state.step, state.totals["train_s"] = 30, 12.5
    saved = {"model": {}, **state.as_dict()}
    assert TrainState.from_checkpoint(saved) == state
    assert state.best == {"epoch": 3, "val_top1_err": 70.0, "val_top5_err": 40.0}
    assert state.lr_drops() == [2]
    # a checkpoint from before the checkpoint-time counter existed
    old = {**saved, "totals": {"train_images": 10, "train_s": 1.0, "wall_s": 2.0}}
    assert TrainState.from_checkpoint(old).totals["save_s"] == 0.0


def test_plateau_divides_lr_by_ten_after_patience_epochs():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    plateau = make_plateau(opt, factor=0.1, patience=2)
    errors = [60, 50, 51, 50, 52, 45, 45, 46, 47, 44]  # epochs 1..10 (%)
    lrs = []
    for epoch, err in enumerate(errors, 1):
        if epoch == 5:  # save and restore mid-way: the count of bad epochs survives
            state = plateau.state_dict()
            plateau = make_plateau(opt, factor=0.1, patience=2)
            plateau.load_state_dict(state)
        plateau.step(err)
        lrs.append(opt.param_groups[0]["lr"])
    # epochs 3, 4, 5 do not beat 50 -> drop after epoch 5; 7, 8, 9 do not beat 45 -> drop after epoch 9
    assert lrs == pytest.approx([0.01] * 4 + [0.001] * 4 + [0.0001] * 2)


def test_plateau_waits_until_the_error_has_left_chance():
    """A slow start (the demo at lr 0.005: seven epochs at 90%) is no plateau; counting starts once learning has."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005, momentum=0.9)
    plateau = make_plateau(opt, factor=0.1, patience=2)
    errors = [90, 90, 89.5, 90, 90, 90, 90, 84, 79, 77.5, 78, 79, 80, 60]  # 10-class chance: 90%
    history, lrs, stepped = [], [], []
    for epoch, err in enumerate(errors, 1):
        history.append({"epoch": epoch, "val_top1_err": err})
        stepped.append(plateau_step(plateau, history, chance=90.0))
        lrs.append(opt.param_groups[0]["lr"])
    # 84% is only 6 below chance; 79% (epoch 9) is the first epoch 10 below: counting starts there
    assert stepped == [False] * 8 + [True] * 6
    # 79 -> 77.5 improves; 78, 79, 80 do not -> divided after epoch 13, not during the seven at chance
    assert lrs == pytest.approx([0.005] * 12 + [0.0005] * 2)
    # without the wait, the same errors divide it at chance, after epoch 6 (4, 5, 6 no lower than 89.5)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    plain = make_plateau(opt2, factor=0.1, patience=2)
    for err in errors[:6]:
        plain.step(err)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0005)


def test_warmup_scales_the_lr_of_one_update_only():
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.1)
    used = []
    for step in range(4):
        p.grad = torch.ones(1)
        with warmup(opt, 0.1, step, warmup_steps=2) as lr:
            opt.step()
            used.append(lr)
        assert opt.param_groups[0]["lr"] == 0.1  # restored after each update
    assert used == pytest.approx([0.05, 0.1, 0.1, 0.1])
    assert p.item() == pytest.approx(1 - 0.35)


def test_collapse_is_flagged_only_after_learning():
    hist = lambda errs: [{"epoch": e, "val_top1_err": v} for e, v in enumerate(errs, 1)]  # noqa: E731
    chance = 90.0
    # the seed-0 demo run: learns to 52.5% by epoch 8, back at chance from epoch 10
    assert collapse_epoch(hist([90, 90, 90, 88, 90, 68, 66, 52.5, 81, 90, 89.5, 90]), chance) == 10
    assert collapse_epoch(hist([90, 90, 89.5, 90, 78, 60, 40]), chance) is None  # chance before learning
    assert collapse_epoch(hist([90, 81, 89.4]), chance) is None  # 0.6 points below chance: not chance
    assert collapse_epoch(hist([90, 80, 89.5]), chance) == 3  # 80 is 10 points below chance: it had learned
    assert collapse_epoch(hist([90, 80.1, 90]), chance) is None  # 9.9 points is not learning yet
    assert collapse_epoch(hist([99.9, 70, 99.95]), 99.9) == 3  # ImageNet's 1000 classes
    assert collapse_epoch([], chance) is None
