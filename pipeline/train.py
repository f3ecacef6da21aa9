"""Train AlexNet with the paper's recipe (section 5), on one device, two, or DDP replicas.

    python -m pipeline.train --manifest results/shards/manifest.json \
        --pca results/pca/pca.json --mean-image results/pca/mean_image.npy \
        --classes results/fetch/classes.tsv --out-dir results/train --epochs 90
    torchrun --nproc_per_node=2 -m pipeline.train ...   # DDP replicas, DALI sharded by rank

Recipe: SGD, global batch 128 (split over the DDP replicas), momentum 0.9,
weight decay 5e-4, lr 0.01 divided by 10 when the centre-crop validation
top-1 error stops improving (torch's ReduceLROnPlateau: `patience` epochs
without a strictly lower error are tolerated, the next one divides the lr).

The paper's update (section 5) is
    v <- 0.9 v - 0.0005 eps w - eps grad;   w <- w + v
and torch.optim.SGD (dampening 0, coupled weight decay) does
    b <- 0.9 b + (grad + 0.0005 w);          w <- w - lr b.
With v = -lr b the two are the same sequence of weights while lr is constant
(the first step agrees too: torch starts b at grad, the paper v at 0).
They differ only when lr changes: torch's velocity -lr b is rescaled at once
(divided by 10 with the lr), the paper's v keeps its size and decays at 0.9
per step, so for a few tens of steps after a drop torch moves less.

Devices (train.devices): auto -> cuda:0 if available else cpu; "cpu";
"cuda:N"; or two devices for the paper's two-column split. Under torchrun
(LOCAL_RANK set) a replica uses cuda:LOCAL_RANK, or cuda:2*LOCAL_RANK and
cuda:2*LOCAL_RANK+1 for a two-device replica. bf16 autocast and channels_last
on GPUs by default. Only rank 0 writes files.

Outputs (docs/formats.md): checkpoints/last.pt every epoch, best.pt (by
centre-crop validation top-1 error), metrics.jsonl, curve.png, train.json.
A rerun continues from last.pt only after an interruption (reproducing the
uninterrupted run's losses step for step on the CPU) or to extend a finished
run whose epochs were raised; changed inputs (content fingerprints in the
checkpoint), changed settings, or a rerun of a finished run start over
(`plan_start`; the replaced run is moved to previous/). --fresh starts over.

Evidence (bench/RESULTS-train.md): on 2 CPU cores the demo (width 0.25,
batch 128) trains at about 200 images/s, 5 s per epoch, compute-bound.
With the paper's N(0, 0.01) init (or Caffe's) a width-0.25 network stays at
chance on the demo for 50 epochs; giving it the paper network's per-layer
gain (std 0.01/sqrt(width) where the fan-in scales with the width) makes it
learn to 47-96% top-1 accuracy in 12-20 epochs (10% chance).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pipeline.checkpoint import (build_model, keep_best, load_checkpoint, restore_best, rng_state, save_checkpoint,
                                 set_rng_state)
from pipeline.devices import Dist, all_sum, launch_from_env, peak_memory_mb, seed_everything
from pipeline.errors import PipelineError, run_cli
from pipeline.fingerprint import LABELS, changed_inputs, input_fingerprints
from pipeline.health import HealthMonitor, LossWatch
from pipeline.io import atomic_path, read_classes, read_json, write_json
from pipeline.loaders import AugmentSettings, EvalLoader, TrainLoader, manifest_shards
from pipeline.pca_files import load_pca
from pipeline.metrics import true_class_rank
from pipeline.schema import defaults

__all__ = ["TrainConfig", "TrainingDiverged", "TrainConfigError", "train", "fit", "main"]

MODEL_KEYS = ("width", "lrn", "overlapping_pool", "init", "dropout", "dropout_style")
RECIPE_KEYS = ("batch_size", "lr", "momentum", "weight_decay", "decay", "lr_factor", "patience", "seed",
               "warmup_steps", "steps_per_epoch")
AUGMENT_KEYS = ("lighting", "lighting_std", "normalize")


class TrainingDiverged(PipelineError, RuntimeError):
    """The training loss became inf or nan."""


class TrainConfigError(PipelineError, ValueError):
    """A training setting or input that cannot work."""


TRAIN, AUGMENT = defaults("train"), defaults("augment")  # the config schema is the one home of defaults


@dataclass
class TrainConfig:
    # model (model/alexnet.py)
    width: float = TRAIN["width"]              # channel multiplier; 1.0 is the paper's network
    lrn: bool = True                # section 3.3
    overlapping_pool: bool = True   # section 3.4: 3x3 pools with stride 2
    init: str = TRAIN["init"]       # paper: biases 1 in conv2,4,5, fc6,7 | caffe: 0.1 (section 5)
    dropout: float = 0.5            # section 4.2
    dropout_style: str = TRAIN["dropout_style"]  # paper: x(1-p) at test (section 4.2) | inverted: torch's 1/(1-p) in training
    # recipe, section 5
    batch_size: int = TRAIN["batch_size"]  # global batch: divided over the DDP replicas
    lr: float = TRAIN["lr"]
    momentum: float = TRAIN["momentum"]
    weight_decay: float = TRAIN["weight_decay"]
    decay: str = TRAIN["decay"]     # weights: decay on weights only (paper, cuda-convnet, Caffe) | all: biases too
    lr_factor: float = TRAIN["lr_factor"]  # the lr is divided by 10 ...
    patience: int = TRAIN["patience"]  # ... after this many epochs without a lower val error, plus one
    epochs: int = TRAIN["epochs"]
    steps_per_epoch: int = TRAIN["steps_per_epoch"]  # 0: every full batch; N: at most N (the preflight's cap)
    seed: int = TRAIN["seed"]
    warmup_steps: int = TRAIN["warmup_steps"]  # not the paper's: lr ramps linearly from lr/K to lr over the first K steps
    # augmentation (pipeline/augment.py AugmentSettings)
    lighting: str = AUGMENT["lighting"]
    lighting_std: float = AUGMENT["lighting_std"]
    normalize: str = AUGMENT["normalize"]
    # runtime: may change between a run and its resumption
    devices: str = TRAIN["devices"]  # auto | cpu | cuda:N | cuda:0,cuda:1
    precision: str = TRAIN["precision"]  # auto (bf16 on GPU) | fp32 | bf16
    channels_last: str = "auto"     # auto (on GPU) | true | false
    compile: bool = TRAIN["compile"]
    log_every: int = TRAIN["log_every"]  # steps between metrics.jsonl lines (and health figures)
    monitor: bool = TRAIN["monitor"]  # per-layer health figures each log line (pipeline/health.py)
    flat_after: int = TRAIN["flat_after"]  # steps after which a loss still at ln(classes) is warned about
    workers: int = 2                # DALI threads per replica: a runtime knob (rule train's dali_threads)
    threads: int = 0                # torch CPU threads per replica (0: torch's default)

    def key(self, num_classes: int) -> dict:
        """What a checkpoint must share with this run to be continued."""
        return {"model": self.model_config(num_classes),
                "recipe": {k: getattr(self, k) for k in RECIPE_KEYS},
                "augment": {k: getattr(self, k) for k in AUGMENT_KEYS}}

    def model_config(self, num_classes: int) -> dict:
        return {"num_classes": num_classes, **{k: getattr(self, k) for k in MODEL_KEYS}}


# ---------------------------------------------------------------- inputs

def make_loaders(cfg: TrainConfig, manifest, pca_json, mean_image, env: Dist, device: str):
    pca = load_pca(str(pca_json), str(mean_image))
    settings = AugmentSettings(lighting=cfg.lighting, lighting_std=cfg.lighting_std, normalize=cfg.normalize)
    per_rank = cfg.batch_size // env.world
    common = dict(settings=settings, device=device, shard_id=env.rank, num_shards=env.world, threads=cfg.workers)
    train_loader = TrainLoader(manifest_shards(manifest, "train"), pca, per_rank, seed=cfg.seed, **common)
    eval_loader = EvalLoader(manifest_shards(manifest, "val"), pca, per_rank, views="center", **common)
    return train_loader, eval_loader


# ---------------------------------------------------------------- metrics files

def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


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
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def plot_curve(jsonl: Path, png: Path, num_classes: int | None = None) -> None:
    """Train loss and validation error against epoch, lr drops marked; with `num_classes`, the
    chance levels: ln(classes) for the loss, (1 - 1/classes) for the top-1 error."""
    rows = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "train_loss" in r]
    epochs = [r for r in rows if "val_top1_err" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if steps and epochs:  # steps -> fractional epochs, from each epoch's last step
        ends = [(0, 0)] + [(r["step"], r["epoch"]) for r in epochs]
        xs = np.interp([r["step"] for r in steps], [s for s, _ in ends], [e for _, e in ends])
        ax.plot(xs, [r["train_loss"] for r in steps], color="tab:blue", lw=0.8, label="train loss")
    if num_classes:
        ax.axhline(math.log(num_classes), color="tab:blue", ls="--", lw=0.7, alpha=0.6,
                   label=f"chance loss, ln({num_classes})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (cross-entropy)")
    ax2 = ax.twinx()
    if num_classes:
        ax2.axhline(100.0 * (1 - 1 / num_classes), color="tab:red", ls="--", lw=0.7, alpha=0.6,
                    label="chance top-1 error")
    ex = [r["epoch"] for r in epochs]
    ax2.plot(ex, [r["val_top1_err"] for r in epochs], "o-", color="tab:red", label="val top-1 error")
    ax2.plot(ex, [r["val_top5_err"] for r in epochs], "s--", color="tab:orange", label="val top-5 error")
    ax2.set_ylabel("validation error, centre crop (%)")
    for prev, cur in zip(epochs, epochs[1:]):
        if cur.get("lr", 0) < prev.get("lr", 0):
            ax.axvline(prev["epoch"], color="gray", ls=":", lw=1)
            ax.text(prev["epoch"], ax.get_ylim()[1], f" lr {cur['lr']:g}", va="top", fontsize=8, color="gray")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize=8)
    ax.set_title("AlexNet training (lr drops dotted)")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ---------------------------------------------------------------- the loop

class Window:
    """Per-step losses and top-k hits between two log lines, kept on the device (no sync per step)."""

    def __init__(self, first_step: int):
        self.first_step, self.losses, self.hits, self.images = first_step, [], [], 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, topk: int) -> None:
        rank = true_class_rank(logits.detach().float(), labels)
        self.losses.append(loss.detach().float())
        self.hits.append(torch.stack([(rank < 1).sum(), (rank < topk).sum()]))
        self.images += len(labels)

    def reduce(self, env: Dist) -> tuple[list[float], float, float, int, float]:
        """Per-step mean losses over ranks, top-1/top-5 error (%), images, seconds."""
        k = len(self.losses)
        packed = torch.cat([torch.stack(self.losses), torch.stack(self.hits).sum(0).float(),
                            torch.tensor([float(self.images)], device=self.losses[0].device)])
        packed = all_sum(packed, env).double().cpu()
        losses = (packed[:k] / env.world).tolist()
        n = packed[k + 2].item()
        errs = [100.0 * (1 - packed[k + i].item() / n) for i in (0, 1)]
        return losses, errs[0], errs[1], int(n), time.perf_counter() - self.t0


@torch.no_grad()
def validate(model, eval_loader, env: Dist, to_inputs, autocast, topk: int) -> tuple[float, float]:
    """Centre-crop top-1/top-5 error (%) over every validation image, all ranks together.

    Runs the plain module (not the DDP wrapper): ranks may hold different numbers of images.
    """
    model.eval()
    hits = None
    for batch in eval_loader:
        images, labels = to_inputs(*batch[:2])
        with autocast():
            logits = model(images)
        if hits is None:
            hits = torch.zeros(3, dtype=torch.float64, device=logits.device)
        rank = true_class_rank(logits.float(), labels)
        hits += torch.stack([(rank < 1).sum(), (rank < topk).sum(), torch.tensor(len(labels), device=rank.device)])
    if hits is None:  # this rank has no images; the others may
        hits = torch.zeros(3, dtype=torch.float64, device=getattr(model, "output_device", "cpu"))
    hits = all_sum(hits, env).cpu()
    if hits[2] == 0:
        raise TrainConfigError("the validation loader yielded no images")
    model.train()
    return 100.0 * (1 - hits[0].item() / hits[2].item()), 100.0 * (1 - hits[1].item() / hits[2].item())


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Share of the lr used at 0-based `step`: (step + 1) / K over the first K steps, then 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on the weights only (decay: weights), or on every parameter (all).

    The paper's update rule decays "the weight w"; cuda-convnet2's layer
    parameters set the decay (wc) on weights only, and Caffe's bvlc_alexnet
    gives biases decay_mult 0. Biases start at 1 in five layers (section 5),
    so decaying them would pull those units toward inactivity.
    """
    if cfg.decay not in ("weights", "all"):
        raise TrainConfigError(f"train.decay {cfg.decay!r}: expected weights or all")
    params = list(model.named_parameters())
    decayed = [p for n, p in params if cfg.decay == "all" or n.endswith("weight")]
    kept = [p for n, p in params if not (cfg.decay == "all" or n.endswith("weight"))]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}]
    if kept:
        groups.append({"params": kept, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_plateau(optimizer, factor: float, patience: int):
    """lr *= factor after `patience` epochs in a row without a strictly lower error, plus one.

    ReduceLROnPlateau counts the epochs without improvement and acts when the
    count exceeds `patience`; its state_dict holds the best error and the count.
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, threshold=0.0, threshold_mode="abs")


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Trainer:
    """The recipe's state (model, SGD, plateau, counters) and one method per phase of an epoch."""

    def __init__(self, model, cfg: TrainConfig, out_dir, num_classes: int, env: Dist, devices: list[str],
                 inputs: dict | None = None):
        self.model, self.cfg, self.env, self.devices, self.num_classes = model, cfg, env, devices, num_classes
        self.out_dir = Path(out_dir)
        self.ckpt_dir, self.jsonl = self.out_dir / "checkpoints", self.out_dir / "metrics.jsonl"
        self.last, self.finished = self.ckpt_dir / "last.pt", self.ckpt_dir / FINISHED_FILE
        self.inputs = inputs
        self.attempt: dict = {}
        on_gpu = devices[0].startswith("cuda")
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)
        self.channels_last = cfg.channels_last == "true" or (cfg.channels_last == "auto" and on_gpu)
        self.input_device = torch.device(getattr(model, "input_device", devices[0]))
        self.output_device = torch.device(getattr(model, "output_device", devices[-1]))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.topk = min(5, num_classes)
        self.key = cfg.key(num_classes)
        self.optimizer = make_optimizer(model, cfg)
        self.plateau = make_plateau(self.optimizer, cfg.lr_factor, cfg.patience)
        self.state = {"epoch": 0, "step": 0, "best": {"epoch": None, "val_top1_err": None, "val_top5_err": None},
                      "totals": {"train_images": 0, "train_s": 0.0, "wall_s": 0.0}, "history": [], "warnings": []}
        self.watch = LossWatch(num_classes, flat_after=cfg.flat_after)
        # rank 0 watches its own replica (gradients are the same on every rank after DDP's all-reduce)
        self.monitor = HealthMonitor(model, activations=not cfg.compile) if cfg.monitor and env.main else None
        self.saved = None  # epoch and step of the checkpoint on disk
        self.train_model = model

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.input_device.type, dtype=torch.bfloat16)
        return nullcontext()

    def to_inputs(self, images, labels):
        images = images.to(self.input_device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.output_device, non_blocking=True).view(-1).long()

    def say(self, text: str) -> None:
        if self.env.main:
            print(text, file=sys.stderr)

    @property
    def chance_top1_err(self) -> float:
        return 100.0 * (1 - 1 / self.num_classes)

    # -- start: resume or start over, then wrap for DDP / compile

    def resume(self, fresh: bool) -> str:
        """Decide how this attempt starts (see `plan_start`) and load last.pt when it continues."""
        ckpt = load_checkpoint(self.last) if self.last.exists() and not fresh else None
        finished = read_json(self.finished) if ckpt is not None and self.finished.exists() else None
        action, why = plan_start(ckpt, finished, self.key, self.inputs, self.cfg.epochs, self.last, fresh)
        self.say(why)
        self.attempt = {"action": action, "why": why, "uid": uuid.uuid4().hex, "from_step": 0, "from_epoch": 0}
        if action == "start":
            return action
        self.attempt.update(uid=ckpt.get("uid"), from_step=ckpt["step"], from_epoch=ckpt["epoch"])
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("layout") == len(self.devices):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        else:  # the two layouts list their parameters differently (model/alexnet.py)
            for group in self.optimizer.param_groups:
                group["lr"] = ckpt["optimizer"]["param_groups"][0]["lr"]
            self.say(f"{self.last} was saved from a {ckpt.get('layout')}-device layout; "
                     "momentum restarts from zero on this one")
        self.plateau.load_state_dict(ckpt["plateau"])
        for k in self.state:
            self.state[k] = ckpt.get(k, self.state[k])
        self.watch.given = {w["kind"] for w in self.state["warnings"]}
        rngs = ckpt["rng"]
        if len(rngs) == self.env.world:
            set_rng_state(rngs[self.env.rank])
        else:  # another replica count: each rank needs its own stream
            seed_everything(self.cfg.seed + 1000 * self.state["epoch"] + self.env.rank)
        self.saved = {"epoch": self.state["epoch"], "step": self.state["step"]}
        return action

    def start(self, fresh: bool) -> None:
        action = self.resume(fresh)
        if self.env.world > 1:  # every rank has read last.pt before rank 0 tidies up
            dist.barrier()
        if self.env.main:
            if action == "start":
                kept = set_aside(self.out_dir)
                if kept:
                    self.say(f"the replaced run's checkpoints and metrics are kept in {kept} "
                             "until the next start-over")
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if action != "start":
                truncate_jsonl(self.jsonl, self.state["step"], self.state["epoch"])
                restore_best(self.ckpt_dir, self.state["best"]["epoch"])
            write_json(self.out_dir / ATTEMPT_FILE, self.attempt)
        if self.env.world > 1:
            one_gpu = self.input_device.type == "cuda" and len(self.devices) == 1
            self.train_model = DDP(self.model, device_ids=[self.input_device] if one_gpu else None)
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def steps_per_epoch(self, loader) -> int:
        """The same count on every replica: the fewest full batches any rank has."""
        on_nccl = self.output_device.type == "cuda" and self.env.world > 1
        steps = torch.tensor([len(loader)], device=self.output_device if on_nccl else "cpu")
        if self.env.world > 1:
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        if steps.item() == 0:
            raise TrainConfigError(f"the training loader yields no batch of {self.cfg.batch_size // self.env.world} "
                                   "images; lower train.batch_size")
        cap = self.cfg.steps_per_epoch
        return min(int(steps.item()), cap) if cap > 0 else int(steps.item())

    # -- one epoch

    def begin_epoch(self) -> tuple[float, float]:
        """(start time, the epoch's lr); resets the GPUs' peak-memory counters."""
        for d in self.devices:
            if d.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(d)
        return time.perf_counter(), self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, loader, epoch: int, steps: int) -> list[float]:
        """SGD over the epoch's batches; a metrics line every log_every steps. Returns the step losses."""
        cfg, state = self.cfg, self.state
        per_step = cfg.batch_size // self.env.world * self.env.world
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(total=steps * per_step, unit="img", unit_scale=True, desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=None if self.env.main else True, file=sys.stderr, leave=False)
        window, losses = Window(state["step"] + 1), []
        self.model.train()
        for i, batch in enumerate(loader.epoch(epoch)):
            if i == steps:
                break
            ends_window = (state["step"] + 1) % cfg.log_every == 0 or i == steps - 1
            if self.monitor and ends_window:
                self.monitor.arm()
            images, labels = self.to_inputs(*batch)
            with self.autocast():
                logits = self.train_model(images)
            loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            warm = warmup_factor(state["step"], cfg.warmup_steps)
            if warm < 1.0:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * warm
            self.optimizer.step()
            if warm < 1.0:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            state["step"] += 1
            window.add(loss, logits, labels, self.topk)
            bar.update(per_step)
            if ends_window:
                health = self.monitor.collect(self.optimizer) if self.monitor else None
                row, step_losses = self.log_window(window, epoch, lr * warm, health)
                losses += step_losses
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr * warm:g}")
                window = Window(state["step"] + 1)
        bar.close()
        return losses

    def log_window(self, window: "Window", epoch: int, lr: float, health: dict | None = None) -> tuple[dict, list[float]]:
        """The window's metrics line (written by rank 0), its health warnings, and its per-step losses."""
        losses, e1, e5, n, secs = window.reduce(self.env)
        bad = [j for j, v in enumerate(losses) if not np.isfinite(v)]
        if bad:
            raise diverged(window.first_step + bad[0], epoch, losses[bad[0]], self.last, self.saved)
        self.state["totals"]["train_images"] += n
        self.state["totals"]["train_s"] += secs
        row = {"step": self.state["step"], "epoch": epoch, "train_loss": sum(losses) / len(losses),
               "train_top1_err": e1, "train_top5_err": e5, "lr": lr, "images_per_s": n / secs}
        if health:
            row["health"] = health
        if self.env.main:
            append_jsonl(self.jsonl, row)
        for kind, message in self.watch.check_loss(self.state["step"], row["train_loss"]):
            self.warn(kind, message, epoch)
        return row, losses

    def warn(self, kind: str, message: str, epoch: int) -> None:
        """A health warning: the log, metrics.jsonl (an MLflow tag), train.json."""
        if any(w["kind"] == kind for w in self.state["warnings"]):
            return
        self.state["warnings"].append({"kind": kind, "step": self.state["step"], "epoch": epoch, "message": message})
        self.say(f"warning: {message}")
        if self.env.main:
            append_jsonl(self.jsonl, {"step": self.state["step"], "epoch": epoch, "warning": kind, "message": message})

    # -- the end of an epoch, in the paper's order: schedule, then save and report

    def step_schedule(self, epoch: int, lr: float, val1: float, val5: float) -> bool:
        """Section 5: divide the lr when the validation error stops improving. True if this epoch is the best."""
        state = self.state
        self.plateau.step(val1)
        better = state["best"]["epoch"] is None or val1 < state["best"]["val_top1_err"]
        if better:
            state["best"] = {"epoch": epoch, "val_top1_err": val1, "val_top5_err": val5}
        state["history"].append({"epoch": epoch, "lr": lr, "val_top1_err": val1, "val_top5_err": val5})
        state["epoch"] = epoch
        return better

    def log_epoch(self, epoch: int, lr: float, losses: list[float], val1: float, val5: float, epoch_s: float) -> None:
        if self.env.main:
            append_jsonl(self.jsonl, {"step": self.state["step"], "epoch": epoch, "val_top1_err": val1,
                                      "val_top5_err": val5, "epoch_train_loss": sum(losses) / len(losses),
                                      "lr": lr, "epoch_time_s": epoch_s, "peak_mem_mb": peak_memory_mb(self.devices)})

    def save(self, epoch: int, better: bool, wall_s: float) -> None:
        """last.pt (atomically), and epoch-NNN.pt + best.pt when this epoch is the best; rank 0 writes."""
        state = self.state
        state["totals"]["wall_s"] = wall_s
        rngs = [rng_state()]
        if self.env.world > 1:  # rank 0 writes every rank's streams
            rngs = [None] * self.env.world
            dist.all_gather_object(rngs, rng_state())
        if self.env.main:
            config = {**self.key, "world_size": self.env.world, "inputs": self.inputs}
            save_checkpoint(self.last, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                        "plateau": self.plateau.state_dict(), "rng": rngs, "config": config,
                                        "layout": len(self.devices), "uid": self.attempt["uid"],
                                        "target_epochs": self.cfg.epochs, **state})
            if better:
                keep_best(self.ckpt_dir, epoch)
        self.saved = {"epoch": epoch, "step": state["step"]}

    def report_epoch(self, epoch: int, lr: float, losses: list[float], val1: float, val5: float,
                     epoch_s: float) -> None:
        """The curve, the epoch's log line, and the collapse warning."""
        state, new_lr = self.state, self.optimizer.param_groups[0]["lr"]
        if self.env.main:
            plot_curve(self.jsonl, self.out_dir / "curve.png", self.num_classes)
        self.say(f"epoch {epoch}/{self.cfg.epochs}: train loss {sum(losses) / len(losses):.4f}, "
                 f"val top-1 {val1:.2f}% top-5 {val5:.2f}% (centre crop), {epoch_s:.1f} s"
                 + (f"; lr {lr:g} -> {new_lr:g}" if new_lr < lr else ""))
        chance = self.chance_top1_err
        if collapse_epoch(state["history"], chance) == epoch:
            self.warn("collapse", f"epoch {epoch}: validation top-1 error is back at chance ({val1:.2f}%, chance "
                      f"{chance:.2f}%) after {state['best']['val_top1_err']:.2f}% at epoch {state['best']['epoch']}: "
                      "the network has collapsed and rarely recovers. best.pt keeps the best epoch (evaluation "
                      "uses it); train.warmup_steps, another train.seed or a lower train.lr may train further.", epoch)

    def finish(self) -> dict:
        digests = [param_digest(self.model)]
        if self.env.world > 1:
            digests = [None] * self.env.world
            dist.all_gather_object(digests, param_digest(self.model))
        summary = summarize(self, digests)
        if self.env.main:
            if not (self.out_dir / "curve.png").exists():
                plot_curve(self.jsonl, self.out_dir / "curve.png", self.num_classes)
            write_json(self.out_dir / "train.json", summary)  # its presence means the stage finished
            # and this marks the checkpoint's run as finished: a later rerun starts over (or extends)
            write_json(self.finished, {"uid": self.attempt["uid"], "epoch": self.state["epoch"],
                                       "step": self.state["step"]})
            self.say(f"trained {summary['epochs']} epochs: best val top-1 {summary['best_val_top1_err']:.2f}% "
                     f"(epoch {summary['best_epoch']}), {summary['images_per_s']:.0f} images/s")
        return summary


def fit(model, train_loader, eval_loader, cfg: TrainConfig, out_dir, num_classes: int,
        env: Dist | None = None, devices: list[str] | None = None, fresh: bool = False,
        inputs: dict | None = None) -> dict:
    """Train `model` (already built, on its devices) with the recipe; returns the train.json summary.

    Loaders: `train_loader.epoch(e)` yields (images, labels) for epoch e;
    iterating `eval_loader` yields (images, labels, keys) once over this rank's
    validation share. `inputs`: the fingerprints of the data (pipeline/fingerprint.py),
    stored in the checkpoints. Continues from out_dir/checkpoints/last.pt only
    after an interruption, or to extend a finished run (`plan_start`).
    """
    t = Trainer(model, cfg, out_dir, num_classes, env or Dist(), devices or ["cpu"], inputs)
    t.start(fresh)
    steps = t.steps_per_epoch(train_loader)
    t_start, wall0 = time.perf_counter(), t.state["totals"]["wall_s"]
    for epoch in range(t.state["epoch"] + 1, cfg.epochs + 1):
        t_epoch, lr = t.begin_epoch()
        losses = t.train_epoch(train_loader, epoch, steps)
        val1, val5 = validate(t.model, eval_loader, t.env, t.to_inputs, t.autocast, t.topk)
        better = t.step_schedule(epoch, lr, val1, val5)
        epoch_s = time.perf_counter() - t_epoch
        t.log_epoch(epoch, lr, losses, val1, val5, epoch_s)
        t_save = time.perf_counter()
        t.save(epoch, better, wall0 + time.perf_counter() - t_start)
        totals = t.state["totals"]  # checkpoints written before this counter existed lack it
        totals["save_s"] = totals.get("save_s", 0.0) + time.perf_counter() - t_save
        t.report_epoch(epoch, lr, losses, val1, val5, epoch_s)
    return t.finish()


# ---------------------------------------------------------------- resume or start over

ATTEMPT_FILE = "attempt.json"    # how the latest attempt started (read by pipeline/track.py)
FINISHED_FILE = "finished.json"  # in checkpoints/: the run of last.pt reached its end
SECTIONS = {"model": "the model", "recipe": "the recipe", "augment": "the augmentation"}
# settings that joined a checkpoint's key later, with the value older checkpoints were trained with,
# so an interrupted run from before still resumes
ADDED_KEYS = {"recipe": {"steps_per_epoch": 0}}


def plan_start(ckpt: dict | None, finished: dict | None, key: dict, inputs: dict | None, epochs: int,
               last: Path, fresh: bool = False) -> tuple[str, str]:
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
        return "start", (f"starting over: the run in {last} had finished (epoch {epoch}); a rerun retrains, "
                         "raise train.epochs to extend a finished run instead")
    return "resume", f"resuming after an interruption from {last}: epoch {epoch}, step {step}"


def set_aside(out_dir: Path) -> Path | None:
    """Move a replaced run's checkpoints and metrics to out_dir/previous (one generation kept).

    The new run then writes into an empty folder, and a kill before its first
    checkpoint cannot leave it continuing the old run's weights.
    """
    olds = [out_dir / n for n in ("checkpoints", "metrics.jsonl", "curve.png", "train.json")]
    olds = [p for p in olds if p.exists()]
    if not (out_dir / "checkpoints" / "last.pt").exists():
        for p in olds:  # nothing worth keeping: leftovers of a run killed before its first epoch
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return None
    previous = out_dir / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for p in olds:
        os.replace(p, previous / p.name)
    return previous


def diverged(step, epoch, value, last: Path, saved: dict | None) -> TrainingDiverged:
    kept = (f"the last good checkpoint is {last} (epoch {saved['epoch']}, step {saved['step']})" if saved
            else "no checkpoint was written (it diverged in the first epoch)")
    return TrainingDiverged(f"training diverged: loss {value} at step {step} (epoch {epoch}); stopped; "
                            f"{kept}. Lower the learning rate (train.lr) or check the inputs.")


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


def summarize(t: Trainer, digests: list[str]) -> dict:
    state, cfg = t.state, t.cfg
    hist, totals = state["history"], state["totals"]
    return {
        "epochs": state["epoch"], "steps": state["step"],
        "best_epoch": state["best"]["epoch"],
        "best_val_top1_err": state["best"]["val_top1_err"], "best_val_top5_err": state["best"]["val_top5_err"],
        "final_val_top1_err": hist[-1]["val_top1_err"] if hist else None,
        "final_val_top5_err": hist[-1]["val_top5_err"] if hist else None,
        "chance_top1_err": t.chance_top1_err,
        "collapsed_epoch": collapse_epoch(hist, t.chance_top1_err),
        "final_lr": t.optimizer.param_groups[0]["lr"],
        "lr_drops": [h["epoch"] for h, nxt in zip(hist, hist[1:]) if nxt["lr"] < h["lr"]],
        "images_per_s": totals["train_images"] / totals["train_s"] if totals["train_s"] else 0.0,
        "train_time_s": totals["train_s"], "wall_time_s": totals["wall_s"],
        "checkpoint_time_s": totals.get("save_s", 0.0),
        "parameters": sum(p.numel() for p in t.model.parameters()),
        "num_classes": t.num_classes, "width": cfg.width, "batch_size": cfg.batch_size,
        "steps_per_epoch_cap": cfg.steps_per_epoch,
        "world_size": t.env.world, "devices": t.devices, "precision": "bf16" if t.bf16 else "fp32",
        "channels_last": t.channels_last, "replica_digests": digests,
        "replicas_in_sync": len(set(digests)) == 1,
        "warnings": state["warnings"],
        "start": t.attempt.get("action"), "start_reason": t.attempt.get("why"), "run_uid": t.attempt.get("uid"),
        "inputs": t.inputs,
    }


def train(manifest, pca_json, mean_image, classes_tsv, out_dir, cfg: TrainConfig, fresh: bool = False) -> dict:
    """The stage: build the model and DALI loaders, run `fit`; under torchrun, as one DDP replica."""
    env, devices = launch_from_env(cfg.devices)
    try:
        if cfg.batch_size % env.world:
            raise TrainConfigError(f"train.batch_size {cfg.batch_size} does not divide over {env.world} replicas")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        num_classes = len(read_classes(classes_tsv))
        seed_everything(cfg.seed)  # the same initial weights on every replica
        model = build_model(cfg.model_config(num_classes), devices)
        if env.world > 1:  # then each replica its own dropout stream
            seed_everything(cfg.seed + env.rank)
        device = str(getattr(model, "input_device", devices[0]))
        train_loader, eval_loader = make_loaders(cfg, manifest, pca_json, mean_image, env, device)
        inputs = input_fingerprints(manifest, pca_json, mean_image, classes_tsv)
        return fit(model, train_loader, eval_loader, cfg, out_dir, num_classes, env, devices, fresh, inputs)
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="results/shards/manifest.json")
    p.add_argument("--pca", required=True, help="results/pca/pca.json")
    p.add_argument("--mean-image", required=True, help="results/pca/mean_image.npy")
    p.add_argument("--classes", required=True, help="results/fetch/classes.tsv")
    p.add_argument("--out-dir", required=True, help="results/train")
    p.add_argument("--fresh", action="store_true", help="start over even after an interruption")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(str(f.type), str), default=f.default)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cfg.channels_last = str(cfg.channels_last).lower()
    return run_cli(train, args.manifest, args.pca, args.mean_image, args.classes, args.out_dir, cfg,
                   fresh=args.fresh)


if __name__ == "__main__":
    sys.exit(main())
