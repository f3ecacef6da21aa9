"""The results tree: every path that one stage writes and another reads, defined once.

The rules, the forecast, predict's defaults, the training's checkpoints and
the tests all take their paths from here, so the tree cannot drift apart
between a writer and a reader.

    <results>/
      fetch/      classes.tsv  val_labels.tsv  fetch.json  the archives (links)
      index/      train.tsv  val.tsv  (+ train-kept.tsv, holdout.tsv with a held-out slice)
      shards/     manifest.json  <split>/<split>-NNNNN.{tar,idx,json,stats.npz}
      pca/        pca.json  mean_image.npy  pca.png
      augment/    augment.json  grid.png
      train/      train.json  curve.png  metrics.jsonl  attempt.json  registered_model.json
                  checkpoints/{last.pt, best.pt, epoch-NNN.pt, finished.json}  previous/
      evaluate/   metrics.json  per_class.csv  per_class.png  confusions.csv  comparison.md
      ablations/<variant>/{train,evaluate}/   one folder pair per variant of the sweep
      ablations/comparison.{md,json,png}      the sweep's table
      trainability/  forecast/  resources/
      logs/<stage>.log  benchmarks/<stage>.tsv  .tracking/parent_run_id

Light on purpose (standard library and pipeline.sources only): the workflow
reads it while parsing, on every node of a cluster run.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.sources import ARCHIVES

# The splits the resize stage shards. The held-out slice is cut from the training archive.
SOURCE_SPLIT = {"train": "train", "val": "val", "holdout": "train"}
SHARD_NUMBER = r"\d{5}"  # the {shard} wildcard: shard k is <split>-<k:05d>

# Inside the train stage's folder
TRAIN_SUMMARY = "train.json"  # written last: its presence marks a finished training
METRICS_FILE = "metrics.jsonl"
ATTEMPT_FILE = "attempt.json"  # how the latest attempt started; the tracking reads it
REGISTERED_FILE = "registered_model.json"  # the registered model version the training made
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # rewritten every epoch; not a declared output (workflow/rules/train.smk says why)
BEST = "best.pt"  # a hard link to the best epoch's epoch-NNN.pt
FINISHED_FILE = "finished.json"  # in checkpoints/: the run of last.pt reached its end
EPOCH_CHECKPOINTS = "epoch-*.pt"  # the best epoch's kept checkpoint: one at a time


def shard_name(split: str, k: int | str) -> str:
    """The stem of shard k of a split: train-00003. A str k (a wildcard such as "{shard}") goes in as it is."""
    return f"{split}-{k}" if isinstance(k, str) else f"{split}-{k:05d}"


def shard_rule(split: str) -> str:
    """The workflow rule that makes a split's shards: the training shards' also gather RGB statistics."""
    return "resize_train_shard" if split == "train" else "resize_shard"


def variant_run(variant: str, seed: int) -> str:
    """The folder name of one variant's run with one seed in the ablation sweep: no_lrn-s0."""
    return f"{variant}-s{seed}"


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch-{epoch:03d}.pt"


def checkpoint_kind(name: str) -> str:
    """What a checkpoint file is, by its name: last, best (best.pt or the epoch-NNN.pt behind it) or given."""
    if name == LAST:
        return "last"
    stem, dot, ext = name.partition(".")
    return "best" if name == BEST or (stem.startswith("epoch-") and stem[6:].isdigit() and ext == "pt") else "given"


@dataclass(frozen=True)
class TrainFolder:
    """One training's folder: the base run's <results>/train, or a variant's."""

    dir: str

    @property
    def summary(self) -> str:
        return f"{self.dir}/{TRAIN_SUMMARY}"

    @property
    def curve(self) -> str:
        return f"{self.dir}/curve.png"

    @property
    def metrics(self) -> str:
        return f"{self.dir}/{METRICS_FILE}"

    @property
    def attempt(self) -> str:
        return f"{self.dir}/{ATTEMPT_FILE}"

    @property
    def registered(self) -> str:
        return f"{self.dir}/{REGISTERED_FILE}"

    @property
    def checkpoints(self) -> str:
        return f"{self.dir}/{CHECKPOINTS}"

    @property
    def previous(self) -> TrainFolder:
        """The replaced run, one generation kept: its checkpoints, metrics and curve."""
        return TrainFolder(f"{self.dir}/previous")

    @property
    def best(self) -> str:
        return f"{self.checkpoints}/{BEST}"

    @property
    def last(self) -> str:
        return f"{self.checkpoints}/{LAST}"

    @property
    def finished(self) -> str:
        return f"{self.checkpoints}/{FINISHED_FILE}"


@dataclass(frozen=True)
class EvaluateFolder:
    """One evaluation's folder: the base run's <results>/evaluate, or a variant's."""

    dir: str

    @property
    def metrics(self) -> str:
        return f"{self.dir}/metrics.json"

    @property
    def per_class(self) -> str:
        return f"{self.dir}/per_class.csv"

    @property
    def per_class_plot(self) -> str:
        return f"{self.dir}/per_class.png"

    @property
    def confusions(self) -> str:
        return f"{self.dir}/confusions.csv"

    @property
    def comparison(self) -> str:
        return f"{self.dir}/comparison.md"


@dataclass(frozen=True)
class Results:
    """Paths under one results root (config paths.results). Strings, so that a rule can put a
    wildcard such as "{split}" or "{variant}" where a name goes."""

    root: str = "results"

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # fetch
    @property
    def classes(self) -> str:
        return self.path("fetch", "classes.tsv")

    @property
    def val_labels(self) -> str:
        return self.path("fetch", "val_labels.tsv")

    @property
    def fetch_report(self) -> str:
        return self.path("fetch", "fetch.json")

    def archive(self, key: str) -> str:
        """The fetched archive of dataset.archives.<key> (train, val, devkit), under its official name."""
        return self.path("fetch", ARCHIVES[key])

    # index and resize
    def index(self, name: str) -> str:
        """An index: train, val, or with a held-out slice train-kept and holdout."""
        return self.path("index", f"{name}.tsv")

    def shard_index(self, split: str, holdout: bool) -> str:
        """The index a split's shards are cut from: with a held-out slice, the training shards take the rest."""
        return self.index("train-kept" if split == "train" and holdout else split)

    def shard(self, split: str, k: int | str, suffix: str) -> str:
        return self.path("shards", split, shard_name(split, k) + suffix)

    @property
    def manifest(self) -> str:
        return self.path("shards", "manifest.json")

    @property
    def shards_dir(self) -> str:
        return self.path("shards")

    # pca and augment
    @property
    def pca(self) -> str:
        return self.path("pca", "pca.json")

    @property
    def mean_image(self) -> str:
        return self.path("pca", "mean_image.npy")

    @property
    def pca_plot(self) -> str:
        return self.path("pca", "pca.png")

    @property
    def augment(self) -> str:
        return self.path("augment", "augment.json")

    @property
    def augment_grid(self) -> str:
        return self.path("augment", "grid.png")

    # train and evaluate: the base run, or a variant of the ablation sweep
    def train(self, variant: str | None = None) -> TrainFolder:
        return TrainFolder(self.path("train") if variant is None else self.path("ablations", variant, "train"))

    def evaluate(self, variant: str | None = None) -> EvaluateFolder:
        return EvaluateFolder(self.path("evaluate") if variant is None else self.path("ablations", variant, "evaluate"))

    def ablations(self, name: str) -> str:
        """The sweep's own files: comparison.md, comparison.json, comparison.png."""
        return self.path("ablations", name)

    # the preflight's and the run's reports
    def report(self, stage: str, name: str) -> str:
        """A report of the trainability, forecast or resources stage: <results>/<stage>/<name>."""
        return self.path(stage, name)

    # every job's log and benchmark
    def log(self, *name: str) -> str:
        return self.path("logs", *name[:-1], f"{name[-1]}.log")

    def benchmark(self, *name: str) -> str:
        return self.path("benchmarks", *name[:-1], f"{name[-1]}.tsv")

    @property
    def benchmarks(self) -> str:
        return self.path("benchmarks")

    @property
    def parent_run_file(self) -> str:
        return self.path(".tracking", "parent_run_id")
