"""The training log: window figures, warnings given once, the divergence message, the epoch lines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.devices import Dist
from pipeline.training.log import EpochResult, TrainingDiverged, TrainingLog, Window
from pipeline.training.run_folder import RunFolder
from pipeline.training.state import TrainState

pytestmark = pytest.mark.unit


def _log(tmp_path, classes=4):
    folder = RunFolder(tmp_path)
    state = TrainState()
    return TrainingLog(folder, state, Dist(), classes, epochs=2, flat_after=2), folder, state


def _rows(folder):
    return [json.loads(line) for line in folder.metrics.read_text().splitlines()]


def test_window_reduces_losses_and_errors():
    window = Window(first_step=1, topk=2)
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    window.add(torch.tensor(1.5), logits, torch.tensor([0, 1]))  # one top-1 hit, two top-2 hits
    window.add(torch.tensor(0.5), logits, torch.tensor([2, 2]))  # none
    losses, top1, top2, images, seconds = window.reduce(Dist())
    assert losses == [1.5, 0.5] and images == 4 and seconds > 0
    assert (top1, top2) == (75.0, 50.0)


def test_window_line_counts_images_and_warns_once(tmp_path):
    log, folder, state = _log(tmp_path)
    for step in (2, 4):
        state.step = step
        window = Window(step - 1, 2)
        for _ in range(2):
            window.add(torch.tensor(math.log(4)), torch.zeros(3, 4), torch.tensor([0, 1, 2]))
        assert log.window_done(window, 1, 0.01, {"fc8": {"act_mean": 0.0}}) == pytest.approx([math.log(4)] * 2)
    rows = _rows(folder)
    assert [r.get("warning") for r in rows] == [None, "flat", None]  # flat from step 2 on, said once
    assert rows[0]["health"] == {"fc8": {"act_mean": 0.0}} and rows[0]["lr"] == 0.01
    assert state.totals["train_images"] == 12 and [w["kind"] for w in state.warnings] == ["flat"]


def test_a_non_finite_loss_names_the_step_and_the_last_checkpoint(tmp_path):
    log, folder, state = _log(tmp_path)
    window = Window(first_step=5, topk=2)
    for loss in (1.0, float("nan")):
        window.add(torch.tensor(loss), torch.zeros(1, 4), torch.tensor([0]))
    with pytest.raises(TrainingDiverged, match="loss nan at step 6 .epoch 2.*no checkpoint was written"):
        log.window_done(window, 2, 0.01, None)
    folder.saved = {"epoch": 1, "step": 4}
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is .*last.pt \(epoch 1, step 4\)"):
        log.window_done(window, 2, 0.01, None)
    assert not folder.metrics.exists()  # nothing logged for the diverged window


def test_epoch_lines_and_the_collapse_warning(tmp_path, capsys):
    log, folder, state = _log(tmp_path, classes=10)
    for epoch, err in ((1, 50.0), (2, 90.0)):
        state.end_epoch(epoch, 0.01, err, err / 2)
        result = EpochResult(epoch, 0.01, 1.0, err, err / 2, 3.0, 100.0)
        log.epoch_row(result)
        log.epoch_report(result, 0.001 if epoch == 2 else 0.01)
    rows = _rows(folder)
    assert [r.get("val_top1_err") for r in rows[:2]] == [50.0, 90.0] and rows[2]["warning"] == "collapse"
    assert folder.curve.exists()
    err = capsys.readouterr().err
    assert "epoch 2/2: train loss 1.0000, val top-1 90.00%" in err and "lr 0.01 -> 0.001" in err
