"""Train AlexNet with the paper's recipe (section 5), on one device, two, or DDP replicas.

    python -m pipeline.train --manifest results/shards/manifest.json \
        --pca results/pca/pca.json --mean-image results/pca/mean_image.npy \
        --classes results/fetch/classes.tsv --out-dir results/train --epochs 90
    torchrun --nproc_per_node=2 -m pipeline.train ...   # DDP replicas, DALI sharded by rank

Recipe: SGD, global batch 128 (split over the DDP replicas), momentum 0.9,
weight decay 5e-4, lr 0.01 divided by 10 when the centre-crop validation
top-1 error stops improving (torch's ReduceLROnPlateau: `patience` epochs
without a strictly lower error are tolerated, the next one divides the lr;
counted once the error has first left chance, training.recipe.plateau_step).
The validation is on the held-out training slice when resize made one
(pipeline/holdout.py), else on val.

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
import sys
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.checkpoint import build_model, rng_state, set_rng_state
from pipeline.devices import Dist, all_sum, gather, launch_from_env, seed_everything
from pipeline.errors import PipelineError, run_cli
from pipeline.fingerprint import input_fingerprints
from pipeline.health import HealthMonitor, health_check
from pipeline.io import read_classes
from pipeline.loaders import DALI_THREADS, AugmentSettings, EvalLoader, TrainLoader, manifest_shards
from pipeline.metrics import true_class_rank
from pipeline.pca_files import load_pca
from pipeline.schema import AUGMENT_SETTINGS, defaults
from pipeline.shards import validation_split
from pipeline.training.curve import plot_curve
from pipeline.training.log import EpochResult, TrainingDiverged, TrainingLog, Window
from pipeline.training.placement import Placement
from pipeline.training.recipe import (
    make_optimizer,
    make_plateau,
    param_digest,
    plateau_step,
    set_lr,
    warmup,
    warmup_factor,
)
from pipeline.training.run_folder import RunFolder, plan_start
from pipeline.training.state import TrainState

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "TrainConfigError",
    "train",
    "fit",
    "main",
    # the recipe's parts, where the bench scripts and tests take them from
    "make_optimizer",
    "make_plateau",
    "warmup_factor",
    "param_digest",
]

# The model's settings, in every checkpoint's key: a run never continues a checkpoint of another network.
MODEL_KEYS = (
    "width",
    "lrn",
    "overlapping_pool",
    "init",
    "init_gain",
    "dropout",
    "dropout_style",
    "activation",
    "columns",
    "drop_conv",
)
RECIPE_KEYS = (
    "batch_size",
    "lr",
    "bias_lr_factor",
    "momentum",
    "weight_decay",
    "decay",
    "lr_factor",
    "patience",
    "seed",
    "warmup_steps",
    "steps_per_epoch",
)


class TrainConfigError(PipelineError, ValueError):
    """A training setting or input that cannot work."""


TRAIN, AUGMENT = defaults("train"), defaults("augment")  # the config schema is the one home of defaults


@dataclass
class TrainConfig:
    # model (model/alexnet.py)
    width: float = TRAIN["width"]  # channel multiplier; 1.0 is the paper's network
    lrn: bool = TRAIN["lrn"]  # section 3.3
    overlapping_pool: bool = TRAIN["overlapping_pool"]  # section 3.4: 3x3 pools with stride 2
    activation: str = TRAIN["activation"]  # section 3.1: relu | tanh
    columns: int = TRAIN["columns"]  # section 3.2: 2 | 1 (the one-GPU net of its footnote 2)
    drop_conv: int = TRAIN["drop_conv"]  # section 7: 0 | 3 | 4, a middle conv layer removed
    init: str = TRAIN["init"]  # paper (section 5) | caffe | cuda_convnet2 | width_scaled: model/alexnet.py INITS
    init_gain: str = TRAIN["init_gain"]  # source: the init's stds as printed | width: / sqrt(width) (narrow nets)
    dropout: float = TRAIN["dropout"]  # section 4.2: 0.5; 0 none
    dropout_style: str = TRAIN[
        "dropout_style"
    ]  # paper: x(1-p) at test (section 4.2) | inverted: torch's 1/(1-p) in training
    # recipe, section 5
    batch_size: int = TRAIN["batch_size"]  # global batch: divided over the DDP replicas
    lr: float = TRAIN["lr"]
    bias_lr_factor: float = TRAIN["bias_lr_factor"]  # biases' lr / weights' lr: 1 paper, 2 cuda-convnet2 and Caffe
    momentum: float = TRAIN["momentum"]
    weight_decay: float = TRAIN["weight_decay"]
    decay: str = TRAIN["decay"]  # weights: decay on weights only (paper, cuda-convnet, Caffe) | all: biases too
    lr_factor: float = TRAIN["lr_factor"]  # the lr is divided by 10 ...
    patience: int = TRAIN["patience"]  # ... after this many epochs without a lower val error, plus one
    epochs: int = TRAIN["epochs"]
    steps_per_epoch: int = TRAIN["steps_per_epoch"]  # 0: every full batch; N: at most N (the preflight's cap)
    seed: int = TRAIN["seed"]
    warmup_steps: int = TRAIN[
        "warmup_steps"
    ]  # not the paper's: lr ramps linearly from lr/K to lr over the first K steps
    # augmentation (pipeline/augment.py AugmentSettings)
    lighting: str = AUGMENT["lighting"]
    lighting_std: float = AUGMENT["lighting_std"]
    normalize: str = AUGMENT["normalize"]
    crops: bool = AUGMENT["crops"]  # section 4.1: random 224 patches | the centre one
    flips: bool = AUGMENT["flips"]  # section 4.1: horizontal reflections with p=0.5 | none
    # runtime: may change between a run and its resumption
    devices: str = TRAIN["devices"]  # auto | cpu | cuda:N | cuda:0,cuda:1
    precision: str = TRAIN["precision"]  # auto (bf16 on GPU) | fp32 | bf16
    channels_last: str = TRAIN["channels_last"]  # auto (on GPU) | true | false
    compile: bool = TRAIN["compile"]
    log_every: int = TRAIN["log_every"]  # steps between metrics.jsonl lines (and health figures)
    monitor: bool = TRAIN["monitor"]  # per-layer health figures each log line (pipeline/health.py)
    flat_after: int = TRAIN["flat_after"]  # steps after which a loss still at chance is warned about
    stall_after: int = TRAIN["stall_after"]  # steps after which a loss still at chance stops the run (0: never)
    dali_threads: int = DALI_THREADS  # DALI CPU threads per replica: a runtime knob (rule train's dali_threads)
    torch_threads: int = 0  # torch CPU threads per replica (0: torch's default)

    def key(self, num_classes: int) -> dict:
        """What a checkpoint must share with this run to be continued."""
        return {
            "model": self.model_config(num_classes),
            "recipe": {k: getattr(self, k) for k in RECIPE_KEYS},
            "augment": {k: getattr(self, k) for k in AUGMENT_SETTINGS},
        }

    def model_config(self, num_classes: int) -> dict:
        return {"num_classes": num_classes, **{k: getattr(self, k) for k in MODEL_KEYS}}


def make_loaders(cfg: TrainConfig, manifest, pca_json, mean_image, env: Dist, device: str, eval_split: str = "val"):
    pca = load_pca(str(pca_json), str(mean_image))
    settings = AugmentSettings(**{k: getattr(cfg, k) for k in AUGMENT_SETTINGS})
    per_rank = cfg.batch_size // env.world
    common = dict(settings=settings, device=device, shard_id=env.rank, num_shards=env.world, threads=cfg.dali_threads)
    train_loader = TrainLoader(manifest_shards(manifest, "train"), pca, per_rank, seed=cfg.seed, **common)
    eval_loader = EvalLoader(manifest_shards(manifest, eval_split), pca, per_rank, views="center", **common)
    return train_loader, eval_loader


@torch.no_grad()
def validate(model, eval_loader, place: Placement, env: Dist, topk: int) -> tuple[float, float]:
    """Centre-crop top-1/top-5 error (%) over every validation image, all ranks together.

    Runs the plain module (not the DDP wrapper): ranks may hold different numbers of images.
    """
    model.eval()
    hits = torch.zeros(3, dtype=torch.float64, device=place.output_device)
    for batch in eval_loader:
        images, labels = place.inputs(*batch[:2])
        with place.autocast():
            logits = model(images)
        rank = true_class_rank(logits.float(), labels)
        hits += torch.stack([(rank < 1).sum(), (rank < topk).sum(), torch.tensor(len(labels), device=rank.device)])
    hits = all_sum(hits, env).cpu()  # a rank without images adds zeros
    if hits[2] == 0:
        raise TrainConfigError("the validation loader yielded no images")
    model.train()
    return 100.0 * (1 - hits[0].item() / hits[2].item()), 100.0 * (1 - hits[1].item() / hits[2].item())


class Trainer:
    """The recipe's state (model, SGD, plateau, counters), the SGD step loop, and checkpoints."""

    def __init__(
        self,
        model,
        cfg: TrainConfig,
        out_dir,
        num_classes: int,
        env: Dist,
        devices: list[str],
        inputs: dict | None = None,
        validated_on: str = "val",
    ):
        self.model, self.cfg, self.env, self.num_classes, self.inputs = model, cfg, env, num_classes, inputs
        self.place = Placement(model, devices, env, cfg.precision, cfg.channels_last)
        self.folder = RunFolder(out_dir)
        self.state = TrainState()
        self.log = TrainingLog(
            self.folder,
            self.state,
            env,
            num_classes,
            cfg.epochs,
            cfg.flat_after,
            devices,
            validated_on,
            cfg.stall_after,
        )
        self.topk, self.key = min(5, num_classes), cfg.key(num_classes)
        self.optimizer = make_optimizer(model, cfg)
        self.plateau = make_plateau(self.optimizer, cfg.lr_factor, cfg.patience)
        # rank 0 watches its own replica (gradients are the same on every rank after DDP's all-reduce)
        self.monitor = HealthMonitor(model, activations=not cfg.compile) if cfg.monitor and env.main else None
        self.attempt: dict = {}
        self.train_model = model
        self.clock = (time.perf_counter(), 0.0)  # when this attempt started, wall seconds of earlier ones

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def start(self, fresh: bool) -> None:
        """Resume, extend or start over (`plan_start`), make the folder ready, wrap for DDP / compile."""
        ckpt, finished = self.folder.read_last(fresh)
        action, why = plan_start(ckpt, finished, self.key, self.inputs, self.cfg.epochs, self.folder.last, fresh)
        self.log.say(why)
        self.attempt = {"action": action, "why": why, "uid": uuid.uuid4().hex, "from_step": 0, "from_epoch": 0}
        if action != "start":
            self.attempt.update(uid=ckpt.get("uid"), from_step=ckpt["step"], from_epoch=ckpt["epoch"])
            self.load(ckpt)
        if self.env.world > 1:  # every rank has read last.pt before rank 0 tidies up
            dist.barrier()
        if self.env.main:
            kept = self.folder.prepare(self.attempt, self.state.step, self.state.epoch, self.state.best["epoch"])
            if kept:
                self.log.say(f"the replaced run's checkpoints and metrics are kept in {kept} until the next start-over")
        self.train_model = self.place.wrap(self.model, self.cfg.compile)
        self.clock = (time.perf_counter(), self.state.totals["wall_s"])

    def load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        if ckpt.get("layout") == len(self.place.devices):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        else:  # the two layouts list their parameters differently (model/alexnet.py)
            set_lr(self.optimizer, ckpt["optimizer"]["param_groups"][0]["lr"])
            self.log.say(
                f"{self.folder.last} was saved from a {ckpt.get('layout')}-device layout; "
                "momentum restarts from zero on this one"
            )
        self.plateau.load_state_dict(ckpt["plateau"])
        self.state = TrainState.from_checkpoint(ckpt)
        self.log.resumed(self.state)
        if len(ckpt["rng"]) == self.env.world:
            set_rng_state(ckpt["rng"][self.env.rank])
        else:  # another replica count: each rank needs its own stream
            seed_everything(self.cfg.seed + 1000 * self.state.epoch + self.env.rank)
        self.folder.saved = {"epoch": self.state.epoch, "step": self.state.step}

    def steps_per_epoch(self, loader) -> int:
        """The same count on every replica: the fewest full batches any rank has, at most the cap."""
        on_nccl = self.place.output_device.type == "cuda" and self.env.world > 1
        steps = torch.tensor([len(loader)], device=self.place.output_device if on_nccl else "cpu")
        if self.env.world > 1:
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        if steps.item() == 0:
            raise TrainConfigError(
                f"the training loader yields no batch of {self.cfg.batch_size // self.env.world} "
                "images; lower train.batch_size"
            )
        cap = self.cfg.steps_per_epoch
        return min(int(steps.item()), cap) if cap > 0 else int(steps.item())

    def train_epoch(self, loader, epoch: int, steps: int) -> list[float]:
        """SGD over the epoch's batches; a metrics line every log_every steps. Returns the step losses."""
        cfg, state, lr, losses = self.cfg, self.state, self.lr, []
        per_step = cfg.batch_size // self.env.world * self.env.world
        window = Window(state.step + 1, self.topk)
        self.model.train()
        for i, batch in enumerate(self.log.progress(loader.epoch(epoch), steps, per_step, epoch)):
            ends_window = (state.step + 1) % cfg.log_every == 0 or i == steps - 1
            # the health figures are collected inside the warm-up, at the lr the step used
            with (
                warmup(self.optimizer, lr, state.step, cfg.warmup_steps) as step_lr,
                health_check(self.monitor, self.optimizer, armed=ends_window) as health,
            ):
                images, labels = self.place.inputs(*batch)
                with self.place.autocast():
                    logits = self.train_model(images)
                loss = F.cross_entropy(logits.float(), labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            state.step += 1
            window.add(loss, logits, labels)
            if ends_window:
                losses += self.log.window_done(window, epoch, step_lr, health or None)
                window = Window(state.step + 1, self.topk)
        return losses

    def save(self, better: bool) -> None:
        """last.pt (and the best epoch's) with every rank's RNG streams; rank 0 writes."""
        t0 = time.perf_counter()
        totals = self.state.totals
        totals["wall_s"] = self.clock[1] + t0 - self.clock[0]
        rngs = gather(rng_state(), self.env)
        if self.env.main:
            config = {**self.key, "world_size": self.env.world, "inputs": self.inputs}
            self.folder.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "plateau": self.plateau.state_dict(),
                    "rng": rngs,
                    "config": config,
                    "layout": len(self.place.devices),
                    "uid": self.attempt["uid"],
                    "target_epochs": self.cfg.epochs,
                    **self.state.as_dict(),
                },
                better,
            )
        self.folder.saved = {"epoch": self.state.epoch, "step": self.state.step}
        totals["save_s"] += time.perf_counter() - t0

    def finish(self) -> dict:
        setup = {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "num_classes": self.num_classes,
            "width": self.cfg.width,
            "batch_size": self.cfg.batch_size,
            "steps_per_epoch_cap": self.cfg.steps_per_epoch,
            "world_size": self.env.world,
            "devices": self.place.devices,
            "precision": self.place.precision,
            "channels_last": self.place.channels_last,
            "validated_on": self.log.validated_on,
        }
        summary = self.log.summary(
            self.lr, setup, gather(param_digest(self.model), self.env), self.attempt, self.inputs
        )
        if self.env.main:
            if not self.folder.curve.exists():
                plot_curve(self.folder.metrics, self.folder.curve, self.num_classes)
            self.folder.finish(summary, self.attempt["uid"])
            self.log.say(
                f"trained {summary['epochs']} epochs: best {self.log.val_label} top-1 {summary['best_val_top1_err']:.2f}% "
                f"(epoch {summary['best_epoch']}), {summary['images_per_s']:.0f} images/s"
            )
        return summary


def fit(
    model,
    train_loader,
    eval_loader,
    cfg: TrainConfig,
    out_dir,
    num_classes: int,
    env: Dist | None = None,
    devices: list[str] | None = None,
    fresh: bool = False,
    inputs: dict | None = None,
    validated_on: str = "val",
) -> dict:
    """Train `model` (already built, on its devices) with the recipe; returns the train.json summary.

    Loaders: `train_loader.epoch(e)` yields (images, labels) for epoch e;
    iterating `eval_loader` yields (images, labels, keys) once over this rank's
    validation share (`validated_on`: "val", or "holdout" for the held-out
    training slice). `inputs`: the fingerprints of the data (pipeline/fingerprint.py),
    stored in the checkpoints. Continues from out_dir/checkpoints/last.pt only
    after an interruption, or to extend a finished run (`plan_start`).
    """
    t = Trainer(model, cfg, out_dir, num_classes, env or Dist(), devices or ["cpu"], inputs, validated_on)
    t.start(fresh)
    steps = t.steps_per_epoch(train_loader)
    for epoch in range(t.state.epoch + 1, cfg.epochs + 1):
        t0, lr = time.perf_counter(), t.lr
        t.place.reset_peak_memory()
        losses = t.train_epoch(train_loader, epoch, steps)
        val1, val5 = validate(t.model, eval_loader, t.place, t.env, t.topk)
        better = t.state.end_epoch(epoch, lr, val1, val5)
        # section 5: divide the lr when the validation error stops improving (once it has left chance)
        plateau_step(t.plateau, t.state.history, t.log.chance_top1_err)
        result = EpochResult(
            epoch, lr, sum(losses) / len(losses), val1, val5, time.perf_counter() - t0, t.place.peak_memory_mb()
        )
        t.log.epoch_row(result)
        t.save(better)
        t.log.epoch_report(result, t.lr)
    return t.finish()


def train(manifest, pca_json, mean_image, classes_tsv, out_dir, cfg: TrainConfig, fresh: bool = False) -> dict:
    """The stage: build the model and DALI loaders, run `fit`; under torchrun, as one DDP replica."""
    env, devices = launch_from_env(cfg.devices)
    try:
        if cfg.batch_size % env.world:
            raise TrainConfigError(f"train.batch_size {cfg.batch_size} does not divide over {env.world} replicas")
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        num_classes = len(read_classes(classes_tsv))
        seed_everything(cfg.seed)  # the same initial weights on every replica
        model = build_model(cfg.model_config(num_classes), devices)
        if env.world > 1:  # then each replica its own dropout stream
            seed_everything(cfg.seed + env.rank)
        device = str(getattr(model, "input_device", devices[0]))
        # the held-out training slice, when resize made one, so the official validation set is left to evaluate
        validated_on = validation_split(manifest)
        from pipeline.shards import verify_shards

        for split in ("train", validated_on):  # the recorded sha256, before the first step; a share per replica
            verify_shards(manifest, split, env.rank, env.world)
        train_loader, eval_loader = make_loaders(cfg, manifest, pca_json, mean_image, env, device, validated_on)
        inputs = input_fingerprints(manifest, pca_json, mean_image, classes_tsv)
        return fit(
            model, train_loader, eval_loader, cfg, out_dir, num_classes, env, devices, fresh, inputs, validated_on
        )
    finally:
        if env.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    return run_cli(train, args.manifest, args.pca, args.mean_image, args.classes, args.out_dir, cfg, fresh=args.fresh)


if __name__ == "__main__":
    sys.exit(main())
