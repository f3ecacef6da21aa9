"""Training checkpoints: atomic writes, RNG capture, rebuilding the model.

A checkpoint is one `torch.save`d dict of plain types and tensors, so it loads
with `torch.load(weights_only=True)` (no pickled code runs on load):

    model      the AlexNet state_dict (keys identical in the one- and two-device layouts)
    optimizer  SGD state (the momentum buffers) and its lr
    plateau    ReduceLROnPlateau state (best error, bad epochs)
    epoch      epochs completed (1-based count); step: SGD updates so far
    rng        one entry per DDP rank: torch, cuda, numpy, python `random` states
    config     what rebuilds the model and tells whether a run may continue from it:
               model (num_classes, width, lrn, overlapping_pool, init, dropout),
               recipe (batch, lr, momentum, ...), augment (AugmentSettings), world_size
    best       {"epoch", "val_top1_err", "val_top5_err"} so far (percent)
    totals     cumulative train images, train seconds, wall seconds (for resumed runs)

`last.pt` is rewritten every epoch. The best epoch's checkpoint is kept as
`epoch-NNN.pt` and `best.pt` is a hard link to it (no second copy on disk);
see workflow/rules/train.smk for why the two names exist.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from model.alexnet import AlexNet
from pipeline.errors import PipelineError
from pipeline.io import atomic_path
from pipeline.layout import BEST, EPOCH_CHECKPOINTS, LAST, epoch_checkpoint


class CheckpointError(PipelineError, ValueError):
    """A checkpoint is missing, unreadable or not a training checkpoint of this project."""


REQUIRED = ("model", "config", "epoch", "step")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write a checkpoint atomically; a full disk is named (pipeline.io.DiskFull), not torch's zip error."""
    with atomic_path(path, need=state_bytes(state)) as tmp:
        torch.save(state, tmp)


def state_bytes(obj) -> int:
    """The bytes of the tensors in a (nested) checkpoint: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; run the train stage first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from exc
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {', '.join(missing)})")
    return state


def rng_state() -> dict:
    """All random states of this process, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src`, atomically (a copy where links fail)."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)


def keep_best(ckpt_dir: str | os.PathLike, epoch: int) -> Path:
    """Keep last.pt (just written at `epoch`) as epoch-NNN.pt and point best.pt at it."""
    ckpt_dir = Path(ckpt_dir)
    kept = ckpt_dir / epoch_checkpoint(epoch)
    _link_or_copy(ckpt_dir / LAST, kept)
    _link_or_copy(kept, ckpt_dir / BEST)
    for old in ckpt_dir.glob(EPOCH_CHECKPOINTS):
        if old != kept:
            old.unlink()
    return kept


def restore_best(ckpt_dir: str | os.PathLike, epoch: int | None) -> None:
    """Recreate best.pt (which Snakemake deletes before a rerun) from epoch-NNN.pt."""
    ckpt_dir = Path(ckpt_dir)
    if epoch is None or (ckpt_dir / BEST).exists():
        return
    kept = ckpt_dir / epoch_checkpoint(epoch)
    if not kept.exists():
        raise CheckpointError(
            f"{kept} (the best epoch's checkpoint) is missing; delete {ckpt_dir} to train from scratch"
        )
    _link_or_copy(kept, ckpt_dir / BEST)


def build_model(model_config: dict, devices: list[str] | None = None) -> torch.nn.Module:
    """AlexNet from a checkpoint's model config, on one device or split over two."""
    # checkpoints from before dropout_style existed were trained with torch's inverted dropout
    model_config = {"dropout_style": "inverted", **model_config}
    return AlexNet(**model_config, devices=list(devices) if devices else ["cpu"])


def model_from_checkpoint(path: str | os.PathLike, devices: list[str] | None = None):
    """(model, meta): the AlexNet of a checkpoint with its weights, in eval mode.

    devices: None or one device (e.g. ["cpu"], ["cuda:0"]) or two for the
    paper's two-column split. meta is the checkpoint without the weights,
    optimizer and RNG states (config, epoch, step, best, val errors).
    """
    return model_from_state(load_checkpoint(path), path, devices)


def model_from_state(state: dict, path: str | os.PathLike, devices: list[str] | None = None):
    """`model_from_checkpoint` for a checkpoint already loaded (`path`, where it came from, names it in errors)."""
    model = build_model(state["config"]["model"], devices)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({exc})") from exc
    model.eval()
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng", "plateau")}
    return model, meta
