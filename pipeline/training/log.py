"""What a training tells its user: metrics.jsonl, the progress bar, the log lines,
the health warnings and the curve.

metrics.jsonl (docs/formats.md) gets a line per window of `log_every` steps
(loss, top-1/top-5 error, lr, images/s, per-layer health), a line per epoch
(validation errors, time, peak memory) and a line per warning. Only rank 0
writes and prints; every rank takes part in the reductions.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.devices import Dist, InputWait, all_sum
from pipeline.errors import PipelineError
from pipeline.health import DEAD_LAYERS, DEAD_SHARE, LossWatch, dead_layers
from pipeline.io import disk_full, disk_full_error
from pipeline.metrics import true_class_rank
from pipeline.training.curve import plot_curve
from pipeline.training.run_folder import RunFolder
from pipeline.training.state import TrainState, collapse_epoch


class TrainingDiverged(PipelineError, RuntimeError):
    """The training loss became inf or nan."""


class TrainingStalled(PipelineError, RuntimeError):
    """The training loss was still at chance after train.stall_after steps."""


# A window that spends more than this share of its time waiting for batches is
# input-bound: the device idles while DALI decodes and augments. An epoch's
# first window is not judged: it includes building the epoch's pipeline.
INPUT_BOUND_FRACTION = 0.25


def append_jsonl(path: Path, row: dict) -> None:
    line = json.dumps(row) + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
    except OSError as exc:
        if disk_full(exc, path.parent, len(line)):
            raise disk_full_error(path, 0, len(line)) from exc
        raise


class Window:
    """Per-step losses and top-k hits between two log lines, kept on the device (no sync per step)."""

    def __init__(self, first_step: int, topk: int):
        self.first_step, self.topk, self.losses, self.hits, self.images = first_step, topk, [], [], 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        rank = true_class_rank(logits.detach().float(), labels)
        self.losses.append(loss.detach().float())
        self.hits.append(torch.stack([(rank < 1).sum(), (rank < self.topk).sum()]))
        self.images += len(labels)

    def reduce(self, env: Dist) -> tuple[list[float], float, float, int, float]:
        """Per-step mean losses over ranks, top-1/top-5 error (%), images, seconds."""
        k = len(self.losses)
        packed = torch.cat(
            [
                torch.stack(self.losses),
                torch.stack(self.hits).sum(0).float(),
                torch.tensor([float(self.images)], device=self.losses[0].device),
            ]
        )
        packed = all_sum(packed, env).double().cpu()
        losses = (packed[:k] / env.world).tolist()
        n = packed[k + 2].item()
        errs = [100.0 * (1 - packed[k + i].item() / n) for i in (0, 1)]
        return losses, errs[0], errs[1], int(n), time.perf_counter() - self.t0


@dataclass
class EpochResult:
    epoch: int
    lr: float  # the lr the epoch trained with
    train_loss: float  # mean of its step losses
    val_top1_err: float  # centre crop, %
    val_top5_err: float
    seconds: float  # training and validation
    peak_mem_mb: float


# how the log lines and the curve name the split the epochs are validated on
VALIDATION_LABELS = {"val": "val", "holdout": "held-out"}


class TrainingLog:
    def __init__(
        self,
        folder: RunFolder,
        state: TrainState,
        env: Dist,
        num_classes: int,
        epochs: int,
        flat_after: int,
        devices: list[str] = ("cpu",),
        validated_on: str = "val",
        stall_after: int = 0,
    ):
        self.folder, self.state, self.env, self.num_classes, self.epochs = folder, state, env, num_classes, epochs
        self.validated_on = validated_on  # val, or holdout: the held-out training slice (pipeline/holdout.py)
        self.val_label = VALIDATION_LABELS[validated_on]
        self.watch = LossWatch(num_classes, flat_after=flat_after)
        self.stall_after = stall_after
        self.wait = InputWait(devices)
        self.bar, self.first_window = None, True

    def resumed(self, state: TrainState) -> None:
        self.state = state
        self.watch.given = {w["kind"] for w in state.warnings}

    @property
    def chance_top1_err(self) -> float:
        return 100.0 * (1 - 1 / self.num_classes)

    def say(self, text: str) -> None:
        if self.env.main:
            print(text, file=sys.stderr)

    def write(self, row: dict) -> None:
        if self.env.main:
            append_jsonl(self.folder.metrics, row)

    def progress(self, batches, steps: int, per_step: int, epoch: int):
        """The first `steps` of `batches`, timed (InputWait), with a progress bar in images."""
        self.bar = tqdm(
            total=steps * per_step,
            unit="img",
            unit_scale=True,
            desc=f"epoch {epoch}/{self.epochs}",
            disable=None if self.env.main else True,
            file=sys.stderr,
            leave=False,
        )
        self.first_window = True
        for i, batch in enumerate(self.wait.batches(batches)):
            if i == steps:
                break
            yield batch
            self.bar.update(per_step)
        self.bar.close()

    def window_done(self, window: Window, epoch: int, lr: float, health: dict | None) -> list[float]:
        """The window's metrics line and its warnings; returns its per-step losses."""
        losses, e1, e5, n, secs = window.reduce(self.env)
        bad = [j for j, v in enumerate(losses) if not np.isfinite(v)]
        if bad:
            raise diverged(window.first_step + bad[0], epoch, losses[bad[0]], self.folder)
        wait = self.wait.take()
        totals = self.state.totals
        totals["train_images"] += n
        totals["train_s"] += secs
        totals["data_wait_s"] += wait
        row = {
            "step": self.state.step,
            "epoch": epoch,
            "train_loss": sum(losses) / len(losses),
            "train_top1_err": e1,
            "train_top5_err": e5,
            "lr": lr,
            "images_per_s": n / secs,
            "data_wait_s": wait,
            "data_wait_fraction": wait / secs,
        }
        if health:
            row["health"] = health
        self.write(row)
        for kind, message in self.watch.check_loss(self.state.step, row["train_loss"]):
            self.warn(kind, message, epoch)
        dead = dead_layers(health)
        if dead and epoch == 1:
            self.warn("dead", dead_message(self.state.step, dead), epoch)
        if self.watch.stalled(window.first_step, self.state.step, row["train_loss"], self.stall_after):
            self.warn("stall", f"step {self.state.step}: stopped at chance", epoch)
            raise stalled(self.state.step, epoch, row["train_loss"], self.num_classes, health, self.folder)
        if not self.first_window and row["data_wait_fraction"] > INPUT_BOUND_FRACTION:
            self.warn("input_bound", input_bound_message(self.state.step, row["data_wait_fraction"]), epoch)
        self.first_window = False
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr:g}")
        return losses

    def warn(self, kind: str, message: str, epoch: int) -> None:
        """A health warning, once per run: the log, metrics.jsonl (an MLflow tag), train.json."""
        if any(w["kind"] == kind for w in self.state.warnings):
            return
        self.state.warnings.append({"kind": kind, "step": self.state.step, "epoch": epoch, "message": message})
        self.say(f"warning: {message}")
        self.write({"step": self.state.step, "epoch": epoch, "warning": kind, "message": message})

    def epoch_row(self, r: EpochResult) -> None:
        """The epoch's metrics line: written before its checkpoint, so a resumed run keeps it."""
        self.write(
            {
                "step": self.state.step,
                "epoch": r.epoch,
                "val_top1_err": r.val_top1_err,
                "val_top5_err": r.val_top5_err,
                "validated_on": self.validated_on,
                "epoch_train_loss": r.train_loss,
                "lr": r.lr,
                "epoch_time_s": r.seconds,
                "peak_mem_mb": r.peak_mem_mb,
            }
        )

    def epoch_report(self, r: EpochResult, new_lr: float) -> None:
        """The curve, the epoch's log line, and the collapse warning."""
        if self.env.main:
            plot_curve(self.folder.metrics, self.folder.curve, self.num_classes)
        self.say(
            f"epoch {r.epoch}/{self.epochs}: train loss {r.train_loss:.4f}, {self.val_label} top-1 {r.val_top1_err:.2f}% "
            f"top-5 {r.val_top5_err:.2f}% (centre crop), {r.seconds:.1f} s"
            + (f"; lr {r.lr:g} -> {new_lr:g}" if new_lr < r.lr else "")
        )
        chance, best = self.chance_top1_err, self.state.best
        if collapse_epoch(self.state.history, chance) == r.epoch:
            self.warn(
                "collapse",
                f"epoch {r.epoch}: validation top-1 error is back at chance "
                f"({r.val_top1_err:.2f}%, chance {chance:.2f}%) after {best['val_top1_err']:.2f}% at epoch "
                f"{best['epoch']}: the network has collapsed and rarely recovers. best.pt keeps the best "
                "epoch (evaluation uses it); train.warmup_steps, another train.seed or a lower train.lr "
                "may train further.",
                r.epoch,
            )

    def summary(self, lr: float, setup: dict, digests: list[str], attempt: dict, inputs: dict | None) -> dict:
        """train.json (docs/formats.md): what the run did, then `setup` (what it ran on), then how it started."""
        state, totals, hist = self.state, self.state.totals, self.state.history
        return {
            "epochs": state.epoch,
            "steps": state.step,
            "best_epoch": state.best["epoch"],
            "best_val_top1_err": state.best["val_top1_err"],
            "best_val_top5_err": state.best["val_top5_err"],
            "final_val_top1_err": hist[-1]["val_top1_err"] if hist else None,
            "final_val_top5_err": hist[-1]["val_top5_err"] if hist else None,
            "chance_top1_err": self.chance_top1_err,
            "collapsed_epoch": collapse_epoch(hist, self.chance_top1_err),
            "final_lr": lr,
            "lr_drops": state.lr_drops(),
            "images_per_s": totals["train_images"] / totals["train_s"] if totals["train_s"] else 0.0,
            "train_time_s": totals["train_s"],
            "wall_time_s": totals["wall_s"],
            "checkpoint_time_s": totals["save_s"],
            "data_wait_s": totals["data_wait_s"],
            "data_wait_fraction": totals["data_wait_s"] / totals["train_s"] if totals["train_s"] else 0.0,
            "input_bound": any(w["kind"] == "input_bound" for w in state.warnings),
            **setup,
            "replica_digests": digests,
            "replicas_in_sync": len(set(digests)) == 1,
            "warnings": state.warnings,
            "start": attempt.get("action"),
            "start_reason": attempt.get("why"),
            "run_uid": attempt.get("uid"),
            "inputs": inputs,
        }


def input_bound_message(step: int, fraction: float) -> str:
    return (
        f"step {step}: {fraction:.0%} of the last window went to waiting for the next batch (over "
        f"{INPUT_BOUND_FRACTION:.0%}): the input pipeline is slower than the training. Give DALI more "
        "threads (--set-resources train:dali_threads=N, at most the job's threads) or the train job more "
        "cores (--cores, or set-threads in a cluster profile); data_wait_fraction in metrics.jsonl shows "
        "each window"
    )


def dead_message(step: int, dead: dict[str, float]) -> str:
    shares = " and ".join(f"{layer} {share:.0%}" for layer, share in dead.items())
    return (
        f"step {step}: {shares} of the units are dead (ReLU output 0; over {DEAD_SHARE:.0%}) in the first "
        "epoch: the classifier sees almost nothing and the loss tends to sit at chance. The paper's init "
        "(biases 1) did this at 1000 classes; try train.init caffe or cuda_convnet2, or a lower train.lr"
    )


def stalled(step: int, epoch: int, loss: float, num_classes: int, health: dict | None, folder: RunFolder):
    shares = ", ".join(
        f"{layer} {health[layer]['dead']:.0%} dead" if health and layer in health else f"{layer} not measured"
        for layer in DEAD_LAYERS
    )
    saved = folder.saved
    kept = f"; its last checkpoint is {folder.last} (epoch {saved['epoch']})" if saved else ""
    return TrainingStalled(
        f"training stalled: at step {step} (epoch {epoch}) the mean loss {loss:.3f} is still at chance, "
        f"ln({num_classes}) = {math.log(num_classes):.3f} ({shares}); stopped by train.stall_after{kept}. "
        "Try another init (train.init: caffe or cuda_convnet2, with train.bias_lr_factor: 2 as their "
        "sources train), another train.lr, or check the inputs; train.stall_after: 0 trains on regardless"
    )


def diverged(step: int, epoch: int, value: float, folder: RunFolder) -> TrainingDiverged:
    saved = folder.saved
    kept = (
        f"the last good checkpoint is {folder.last} (epoch {saved['epoch']}, step {saved['step']})"
        if saved
        else "no checkpoint was written (it diverged in the first epoch)"
    )
    return TrainingDiverged(
        f"training diverged: loss {value} at step {step} (epoch {epoch}); stopped; "
        f"{kept}. Lower the learning rate (train.lr) or check the inputs."
    )
