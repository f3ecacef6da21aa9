"""A training's folder on disk, and whether a rerun continues the run in it.

    out_dir/checkpoints/last.pt        every epoch (pipeline/checkpoint.py)
    out_dir/checkpoints/epoch-NNN.pt   the best epoch, best.pt a hard link to it
    out_dir/checkpoints/finished.json  the run of last.pt reached its end
    out_dir/metrics.jsonl, curve.png   the training log (pipeline/training/log.py)
    out_dir/attempt.json               how the latest attempt started (read by the tracking)
    out_dir/train.json                 the summary; its presence means the stage finished
    out_dir/previous/                  the replaced run, one generation kept

Only rank 0 writes. Every file is written atomically (pipeline/io.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.checkpoint import keep_best, load_checkpoint, restore_best, save_checkpoint
from pipeline.fingerprint import LABELS, changed_inputs
from pipeline.io import read_json, write_json, write_text
from pipeline.layout import TrainFolder

SECTIONS = {"model": "the model", "recipe": "the recipe", "augment": "the augmentation"}
# settings that joined a checkpoint's key later, with the value older checkpoints were trained with,
# so an interrupted run from before still resumes
ADDED_KEYS = {
    "recipe": {"steps_per_epoch": 0, "bias_lr_factor": 1.0},
    "model": {"init_gain": "source", "activation": "relu", "columns": 2, "drop_conv": 0},
    "augment": {"crops": True, "flips": True},
}


def plan_start(
    ckpt: dict | None,
    finished: dict | None,
    key: dict,
    inputs: dict | None,
    epochs: int,
    last: Path,
    fresh: bool = False,
) -> tuple[str, str]:
    """(action, reason): "resume" after an interruption, "extend" a finished run, or "start" over.

    A run continues only from a run that was interrupted (no finished mark for
    last.pt's run) on the same inputs and settings, or from a finished one whose
    train.epochs was raised (the one change that asks to extend it). Any other
    rerun (changed data or settings, --forcerun, an upstream rerun) starts over.
    """
    if fresh:
        return "start", "starting over: --fresh"
    if ckpt is None:
        return "start", f"starting: no checkpoint at {last}"
    changed = changed_inputs(ckpt["config"].get("inputs"), inputs)
    if changed:
        what = " and ".join(LABELS[k] for k in changed[:2]) + (" (and more)" if len(changed) > 2 else "")
        return "start", f"starting over: {what} {'differ' if len(changed) > 1 else 'differs'} from the checkpoint's"
    old = {k: ckpt["config"].get(k) or {} for k in key}
    for section, label in SECTIONS.items():
        was = {**ADDED_KEYS.get(section, {}), **old[section]}
        diffs = [f"{k} {was.get(k)!r} -> {v!r}" for k, v in key[section].items() if was.get(k) != v]
        if diffs:
            return "start", f"starting over: {label} differs from the checkpoint's ({', '.join(diffs)})"
    epoch, step = ckpt["epoch"], ckpt["step"]
    if epoch > epochs:
        return "start", f"starting over: {last} is at epoch {epoch}, past the {epochs} asked for"
    done = bool(finished) and finished.get("uid") == ckpt.get("uid") and finished.get("epoch") == epoch
    if done and epochs > epoch:
        return "extend", f"extending the finished run from epoch {epoch} to {epochs} (train.epochs was raised)"
    if done:
        return "start", (
            f"starting over: the run in {last} had finished (epoch {epoch}); a rerun retrains, "
            "raise train.epochs to extend a finished run instead"
        )
    return "resume", f"resuming after an interruption from {last}: epoch {epoch}, step {step}"


def set_aside(out_dir: Path) -> Path | None:
    """Move a replaced run's checkpoints and metrics to out_dir/previous (one generation kept).

    The new run then writes into an empty folder, and a kill before its first
    checkpoint cannot leave it continuing the old run's weights.
    """
    f = TrainFolder(str(out_dir))
    olds = [Path(p) for p in (f.checkpoints, f.metrics, f.curve, f.summary) if Path(p).exists()]
    if not Path(f.last).exists():
        for p in olds:  # nothing worth keeping: leftovers of a run killed before its first epoch
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return None
    previous = out_dir / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for p in olds:
        os.replace(p, previous / p.name)
    return previous


def truncate_jsonl(path: Path, step: int, epoch: int) -> None:
    """Drop lines after a checkpoint, so a resumed run does not log steps twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if row.get("step", 0) <= step and row.get("epoch", 0) <= epoch:
            keep.append(line + "\n")
    write_text(path, "".join(keep))


class RunFolder:
    """The files of one training run; `saved` is where the checkpoint on disk stands."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        f = TrainFolder(str(out_dir))
        self.checkpoints, self.last, self.finished = map(Path, (f.checkpoints, f.last, f.finished))
        self.metrics, self.curve, self.summary, self.attempt = map(Path, (f.metrics, f.curve, f.summary, f.attempt))
        self.saved: dict | None = None

    def read_last(self, fresh: bool) -> tuple[dict | None, dict | None]:
        """last.pt and its finished mark, unless starting over anyway."""
        ckpt = load_checkpoint(self.last) if self.last.exists() and not fresh else None
        finished = read_json(self.finished) if ckpt is not None and self.finished.exists() else None
        return ckpt, finished

    def prepare(self, attempt: dict, step: int, epoch: int, best_epoch: int | None) -> Path | None:
        """Make the folder ready for the attempt: a new run sets the old one aside (returned),
        a continued one drops what was logged after its checkpoint."""
        kept = set_aside(self.out_dir) if attempt["action"] == "start" else None
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if attempt["action"] != "start":
            truncate_jsonl(self.metrics, step, epoch)
            restore_best(self.checkpoints, best_epoch)
        write_json(self.attempt, attempt)
        return kept

    def save(self, checkpoint: dict, best: bool) -> None:
        """last.pt, and epoch-NNN.pt + best.pt when this epoch is the best so far."""
        save_checkpoint(self.last, checkpoint)
        if best:
            keep_best(self.checkpoints, checkpoint["epoch"])

    def finish(self, summary: dict, uid: str) -> None:
        write_json(self.summary, summary)
        # and this marks the checkpoint's run as finished: a later rerun starts over (or extends)
        write_json(self.finished, {"uid": uid, "epoch": summary["epochs"], "step": summary["steps"]})
