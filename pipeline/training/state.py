"""What a training has done so far: counters, best epoch, history, warnings.

Saved in every checkpoint beside the weights (pipeline/checkpoint.py lists
the keys), so a resumed run goes on with the same counts, the same best
epoch and the warnings already given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _no_best() -> dict:
    return {"epoch": None, "val_top1_err": None, "val_top5_err": None}


def _zero_totals() -> dict:
    return {"train_images": 0, "train_s": 0.0, "wall_s": 0.0, "save_s": 0.0, "data_wait_s": 0.0}


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # SGD updates so far
    best: dict = field(default_factory=_no_best)  # by centre-crop validation top-1 error
    totals: dict = field(default_factory=_zero_totals)  # images and seconds, summed over attempts
    history: list = field(default_factory=list)  # per epoch: epoch, lr, val_top1_err, val_top5_err
    warnings: list = field(default_factory=list)  # health warnings given: kind, step, epoch, message

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        # checkpoints written before a counter existed lack it
        return cls(
            epoch=ckpt["epoch"],
            step=ckpt["step"],
            best=ckpt.get("best", _no_best()),
            totals={**_zero_totals(), **ckpt.get("totals", {})},
            history=list(ckpt.get("history", [])),
            warnings=list(ckpt.get("warnings", [])),
        )

    def end_epoch(self, epoch: int, lr: float, val1: float, val5: float) -> bool:
        """Record a validated epoch; True if it is the best so far."""
        better = self.best["epoch"] is None or val1 < self.best["val_top1_err"]
        if better:
            self.best = {"epoch": epoch, "val_top1_err": val1, "val_top5_err": val5}
        self.history.append({"epoch": epoch, "lr": lr, "val_top1_err": val1, "val_top5_err": val5})
        self.epoch = epoch
        return better

    def lr_drops(self) -> list[int]:
        """The epochs after which the plateau schedule divided the lr."""
        return [h["epoch"] for h, nxt in zip(self.history, self.history[1:]) if nxt["lr"] < h["lr"]]


# A run "collapses" when its validation error, having been well below chance,
# is back at chance: typically every unit of a layer has stopped firing after
# too large an update, and SGD cannot bring it back (the loss sits at
# ln(classes)). The finite loss does not stop training; the log says so.
COLLAPSE_LEARNED = 10.0  # points below chance that count as having learned
COLLAPSE_AT_CHANCE = 0.5  # points below chance that still count as chance


def collapse_epoch(history: list[dict], chance: float) -> int | None:
    """First epoch whose val top-1 error is back at chance after an earlier epoch was well below it."""
    learned = False
    for h in history:
        err = h["val_top1_err"]
        if learned and err >= chance - COLLAPSE_AT_CHANCE:
            return h["epoch"]
        learned = learned or err <= chance - COLLAPSE_LEARNED
    return None
