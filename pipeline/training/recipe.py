"""The paper's optimisation recipe (section 5): SGD with momentum and weight decay,
the lr divided by 10 when the validation error stops improving, and the
optional linear warm-up (not the paper's) in front of it."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch

from pipeline.errors import PipelineError


class RecipeError(PipelineError, ValueError):
    """A recipe setting that is not one of its choices."""


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.SGD:
    """SGD with momentum; weight decay on the weights only (decay: weights), or on every parameter (all);
    the biases' lr `cfg.bias_lr_factor` times the weights'.

    The paper's update rule decays "the weight w"; cuda-convnet2's layer
    parameters set the decay (wc) on weights only, and Caffe's bvlc_alexnet
    gives biases decay_mult 0. Biases start at 1 in five layers (section 5),
    so decaying them would pull those units toward inactivity.

    Section 5 uses "an equal learning rate for all layers" (factor 1). Both
    released reproductions give biases twice the weights' rate (factor 2):
    akrizhevsky/cuda-convnet2 layers/layer-params-imagenet-2gpu-model.cfg lines 2-3,
    epsW base 0.02 and epsB base 0.04, in every layer; BVLC/caffe
    models/bvlc_alexnet/train_val.prototxt, lr_mult 1 on weights and 2 on biases.
    Each group keeps its share of the lr as "lr_scale", so the warm-up and the
    plateau's divisions keep the ratio.
    """
    if cfg.decay not in ("weights", "all"):
        raise RecipeError(f"train.decay {cfg.decay!r}: expected weights or all")
    factor = getattr(cfg, "bias_lr_factor", 1.0)
    params = list(model.named_parameters())
    weights = [p for n, p in params if n.endswith("weight")]
    biases = [p for n, p in params if not n.endswith("weight")]
    bias_decay = cfg.weight_decay if cfg.decay == "all" else 0.0
    if bias_decay == cfg.weight_decay and factor == 1.0:  # nothing sets the biases apart: one group
        weights, biases = [p for _, p in params], []
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "lr_scale": 1.0}]
    if biases:
        groups.append({"params": biases, "weight_decay": bias_decay, "lr": cfg.lr * factor, "lr_scale": factor})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


# The biases' lr over the weights' as each init's source trains them (train.bias_lr_factor): the
# paper's section 5 gives every parameter the same lr; cuda-convnet2 (epsB = 2 x epsW) and Caffe
# (bias lr_mult 2) double it. width_scaled is this project's variant of the paper's init.
SOURCE_BIAS_LR_FACTOR = {"paper": 1.0, "width_scaled": 1.0, "caffe": 2.0, "cuda_convnet2": 2.0}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the weights' lr to `lr` and every other group's to its share of it (lr_scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_plateau(optimizer, factor: float, patience: int):
    """lr *= factor after `patience` epochs in a row without a strictly lower error, plus one.

    ReduceLROnPlateau counts the epochs without improvement and acts when the
    count exceeds `patience`; its state_dict holds the best error and the count.
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, threshold=0.0, threshold_mode="abs"
    )


# How far below chance (points of top-1 error) the validation error must first fall before the
# plateau schedule counts epochs. Section 5 divides the lr "when the validation error rate stopped
# improving"; while a network still sits at chance there is no improvement to stop, and counting
# those epochs cut the lr of a slow start (the demo at lr 0.005 sat at chance for 7 epochs and its
# lr was divided at epoch 7, leaving it at 79% error after 40 epochs; bench/RESULTS-train.md).
LEFT_CHANCE_POINTS = 10.0


def plateau_step(plateau, history: list[dict], chance: float) -> bool:
    """Step the plateau schedule with the latest epoch's error once any epoch has left chance; True if stepped."""
    if not any(h["val_top1_err"] <= chance - LEFT_CHANCE_POINTS for h in history):
        return False
    plateau.step(history[-1]["val_top1_err"])
    return True


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Share of the lr used at 0-based `step`: (step + 1) / K over the first K steps, then 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


@contextmanager
def warmup(optimizer: torch.optim.Optimizer, lr: float, step: int, warmup_steps: int):
    """Scale the lr for the SGD update of 0-based `step` inside the block; yields the weights' lr used."""
    warm = warmup_factor(step, warmup_steps)
    if warm < 1.0:
        set_lr(optimizer, lr * warm)
    try:
        yield lr * warm
    finally:
        if warm < 1.0:
            set_lr(optimizer, lr)


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
