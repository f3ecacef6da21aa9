"""What the test files share: the repository's paths and a runner for its workflow, subprocess
environments and servers, comparisons of runs, and the small generated inputs several stages'
tests read (training shards, ILSVRC-shaped archives, a trained run's files).

Plain functions and constants; the fixtures built from them are in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.fingerprint import file_digest, input_fingerprints
from pipeline.io import write_json, write_tsv
from pipeline.shards import ShardWriter

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


# ---------------------------------------------------------------- subprocesses, servers, the workflow


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, so rules find its python."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], ready_url: str, log: Path, timeout: float, stop_timeout: float = 30, **popen):
    """Start a server (its own process group, output to `log`), wait for `ready_url` to answer 200,
    yield the process; stop the whole group afterwards (a server's workers share it)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2:5]} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {ready_url} in {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def snakemake(workdir: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def job_stats(output: str) -> dict[str, int]:
    """Jobs per rule from a dry run's output (Snakemake's "Job stats" table), without `all` and `total`."""
    if "Nothing to be done" in output:
        return {}
    assert "Job stats:" in output, output[-4000:]
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    return {rule: n for rule, n in counts.items() if rule not in {"total", "all"}}


def torchrun(module: str, nproc: int = 2) -> list[str]:
    """The command that starts `python -m module` as `nproc` local ranks (gloo on the CPU), its arguments to follow."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] + [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        "-m",
        module,
    ]


def git(repo, *args):
    # an identity of its own: the machine running the tests may have none configured
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def env_pins(path) -> set[str]:
    """The requirements an envs/ file pins, with those of the files it includes (`-r`)."""
    out = set()
    for line in (REPO / "envs" / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= env_pins(line[3:].strip())
        elif line:
            out.add(line)
    return out


# ---------------------------------------------------------------- pipeline.track run


def run_tracked(tmp_path, *args, env=None) -> subprocess.CompletedProcess:
    """`python -m pipeline.track run` in `tmp_path`, tracking to experiment "t" of tmp_path/m.db."""
    cmd = [sys.executable, "-m", "pipeline.track", "run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    cmd += ["--experiment", "t", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=tool_env(**(env or {})), capture_output=True, text=True)


def tracked_runs(tmp_path):
    """run_tracked's store: the client and experiment "t"'s runs by name."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("t")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def python_stage(code: str, *args) -> list[str]:
    """A stage command for pipeline.track run, from its `--` on: this interpreter running `code`."""
    return ["--", sys.executable, "-c", code, *map(str, args)]


def register_flags(files: dict, name: str, record, fingerprints) -> list[str]:
    """The train rule's flags to pipeline.track run that log trained_run_files' checkpoint as the run's
    model and register it as `name`: `record` the registered_model.json, `fingerprints` the train.json.
    Written by the flags' one definition (pipeline/tracking/flags.py), as the rules write theirs."""
    from pipeline.tracking.flags import command_args

    return command_args(
        model=files["checkpoint"],
        mean_image=files["mean"],
        classes=files["classes"],
        register=name,
        registered_file=record,
        fingerprints=fingerprints,
    )[1:]


# ---------------------------------------------------------------- comparing runs and tensors

# What a run's figures owe to the machine and its load, not to the computation: wall-clock fields
# (seconds, images per second, input wait) and the warning and flag that the input wait raises.
# A busy CI machine made one of two identical demo runs input-bound (37% of a window waiting).
LOAD_DEPENDENT_WARNINGS = frozenset({"input_bound"})
LOAD_DEPENDENT_KEYS = frozenset({"input_bound", "run_uid"})  # run_uid: drawn anew for every training


def is_load_dependent_key(key: str) -> bool:
    return key in LOAD_DEPENDENT_KEYS or key.endswith(("seconds", "_s")) or "per_s" in key or "wait" in key


def load_independent_warnings(warnings: list[dict]) -> list[dict]:
    """The warnings a rerun of the same computation must repeat: all but the input-bound one."""
    return [w for w in warnings if w.get("kind", w.get("warning")) not in LOAD_DEPENDENT_WARNINGS]


def load_independent(obj):
    """A run's JSON (train.json, metrics.json, the manifest) minus what depends on the machine's load
    and the clock, so that two runs of the same computation compare equal."""
    if isinstance(obj, dict):
        return {
            k: load_independent(load_independent_warnings(v) if k == "warnings" else v)
            for k, v in obj.items()
            if not is_load_dependent_key(k)
        }
    if isinstance(obj, list):
        return [load_independent(v) for v in obj]
    return obj


def assert_close_to_scale(actual, expected, rel: float, msg: str = "") -> None:
    """Elementwise |actual - expected| <= rel * max|expected|, for float32 results.

    Two float32 computations of the same sum in different orders (another
    kernel, blocking or layout) differ by a few units in the last place of the
    *largest* partial sums, not of each element: an element that is small
    because of cancellation carries the big terms' rounding. A tolerance
    scaled to the tensor's magnitude bounds that and nothing looser; a fixed
    absolute one is either too tight for large tensors or meaningless for
    small ones, and which one depends on the machine's kernels.
    """
    import torch

    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rel * scale, msg=msg or None)


# ---------------------------------------------------------------- images


def encode(im: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """`im` as the bytes of a `fmt` file (`quality` for a JPEG)."""
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def smooth_image(rng, size=(256, 256)) -> np.ndarray:
    """Smooth random RGB (8x8 noise, bilinear) of `size` (w, h): the corner and centre views see different content."""
    small = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


# ---------------------------------------------------------------- a network and a trained run's files

AUGMENT = {"lighting": "paper", "lighting_std": 0.1, "normalize": "mean_image"}


def disagreeing_alexnet_state(num_classes: int, width: float = 0.0625, seed: int = 0) -> dict:
    """A random AlexNet state_dict whose ten views disagree: He-scaled weights, zero biases,
    fc8 shrunk so the softmax is not one-hot (the paper's init would score every view alike)."""
    import torch

    from model.alexnet import AlexNet

    torch.manual_seed(seed)
    sd = AlexNet(num_classes=num_classes, width=width).state_dict()
    for key, value in sd.items():
        if key.endswith("weight"):
            fan_in = value[0].numel()
            value.copy_(torch.randn(value.shape) * (2.0 / fan_in) ** 0.5 * (0.02 if key.startswith("fc8") else 1.0))
        else:
            value.zero_()
    return sd


def alexnet_checkpoint(
    num_classes: int, epoch: int, step: int, seed: int = 0, inputs: dict | None = None, dropout_style="paper"
) -> dict:
    """What the train stage saves for a 1/16-width AlexNet, with disagreeing_alexnet_state's weights:
    `inputs` the digests of the files it trained on (none: not recorded); dropout_style None: not
    recorded either, as in a checkpoint from before there was a choice (torch's inverted dropout)."""
    model = {"num_classes": num_classes, "width": 0.0625, "lrn": True, "overlapping_pool": True, "init": "paper"}
    model["dropout"] = 0.5
    if dropout_style is not None:
        model["dropout_style"] = dropout_style
    config = {"model": model, "augment": AUGMENT, "world_size": 1}
    if inputs is not None:
        config["inputs"] = inputs
    return {"model": disagreeing_alexnet_state(num_classes, seed=seed), "config": config, "epoch": epoch, "step": step}


def write_pca(
    path, mean=(120.0, 115.0, 100.0), std=(60.0, 58.0, 62.0), eigval=(3000.0, 300.0, 30.0), covariance=np.eye(3)
) -> None:
    """A pca.json of the pca stage's form: these figures, the identity for eigenvectors."""
    write_json(
        path,
        {
            "mean": list(mean),
            "std": list(std),
            "covariance": covariance.tolist(),
            "eigval": list(eigval),
            "eigvec": np.eye(3).tolist(),
            "pixels": 1,
            "images": 1,
            "imagenet_cosine": [1.0, 1.0, 1.0],
        },
    )


def write_classes(path, num_classes: int) -> list[list]:
    """A classes.tsv of `num_classes` classes, names with a comma in them as ImageNet's have; its rows."""
    rows = [[c, f"n{c:08d}", f"class {c}, thing"] for c in range(num_classes)]
    write_tsv(path, ["index", "wnid", "names"], rows)
    return rows


def trained_run_files(root, rng, num_classes: int = 6) -> dict:
    """What a finished training leaves: best.pt (alexnet_checkpoint, epoch 2), the PCA and fetch files it
    read, and train.json's input fingerprints (a random mean image; the shards' manifest lists no shards)."""
    from pipeline.checkpoint import save_checkpoint

    mean_npy, classes_tsv = root / "pca" / "mean_image.npy", root / "fetch" / "classes.tsv"
    mean_npy.parent.mkdir()
    np.save(mean_npy, rng.uniform(60, 200, (256, 256, 3)).astype(np.float32))
    write_classes(classes_tsv, num_classes)
    write_pca(root / "pca" / "pca.json")
    write_json(root / "shards" / "manifest.json", {"train": {"shards": []}, "val": {"shards": []}})
    ckpt = root / "train" / "checkpoints" / "best.pt"
    digests = {"mean_image": file_digest(mean_npy), "classes": file_digest(classes_tsv)}
    save_checkpoint(ckpt, alexnet_checkpoint(num_classes, epoch=2, step=8, inputs=digests))
    inputs = input_fingerprints(root / "shards" / "manifest.json", root / "pca" / "pca.json", mean_npy, classes_tsv)
    return {
        "checkpoint": ckpt,
        "mean": mean_npy,
        "classes": classes_tsv,
        "pca": root / "pca" / "pca.json",
        "inputs": inputs,
    }


# ---------------------------------------------------------------- tiny training data

# 4 classes of tinted noise, 48 train and 8 val images; the train stage's settings for them on the CPU
CLASSES = 4
TINTS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], dtype=np.float64)
# Caffe's init: with the paper's (biases 1) a 1/16-width net's loss swings over the
# first steps (lr * |fc7 output|^2 is large), which would hide the trend tested here.
SMALL = dict(
    width=0.0625, init="caffe", batch_size=4, lr=0.01, log_every=1, dali_threads=1, torch_threads=1, devices="cpu"
)


def tinted_jpeg(rng, label) -> bytes:
    """A 256x256 JPEG of class `label`: its tint plus noise."""
    pixels = TINTS[label] + rng.normal(0, 40, (256, 256, 3))
    return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def make_data(root: Path) -> dict:
    """Shards, manifest (resize layout), pca.json, mean_image.npy and classes.tsv."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, shards, per_shard in (("train", 2, 24), ("val", 1, 8)):
        entries = []
        for k in range(shards):
            tar = root / "shards" / split / f"{split}-{k:05d}.tar"
            with ShardWriter(tar) as w:
                for i in range(per_shard):
                    label = int(rng.integers(CLASSES)) if split == "train" else i % CLASSES
                    w.add(f"{split}_{k}_{i:04d}", tinted_jpeg(rng, label), label)
            # the sha256 the resize stage records, hashed by the same writer: the stages verify them
            entries.append(
                {
                    "tar": f"{split}/{tar.name}",
                    "idx": f"{split}/{tar.stem}.idx",
                    "images": per_shard,
                    "bytes": tar.stat().st_size,
                    **w.checksums,
                }
            )
        splits[split] = {"images": shards * per_shard, "shards": entries}
    write_json(root / "shards" / "manifest.json", splits)
    eigval = [1500.0, 900.0, 600.0]
    write_pca(root / "pca.json", TINTS.mean(0).tolist(), [70.0] * 3, eigval, np.diag(eigval))
    np.save(root / "mean_image.npy", np.full((256, 256, 3), TINTS.mean(0), np.float32))
    write_tsv(
        root / "classes.tsv", ["index", "wnid", "names"], [[i, f"n{i:08d}", f"class {i}"] for i in range(CLASSES)]
    )
    return {
        "manifest": root / "shards" / "manifest.json",
        "pca": root / "pca.json",
        "mean_image": root / "mean_image.npy",
        "classes": root / "classes.tsv",
    }


def train_cli(data, out, **overrides) -> list[str]:
    """`python -m pipeline.train` on make_data's files into `out`, with SMALL's settings and `overrides`."""
    args = [sys.executable, "-m", "pipeline.train", "--manifest", str(data["manifest"]), "--pca", str(data["pca"])]
    args += ["--mean-image", str(data["mean_image"]), "--classes", str(data["classes"]), "--out-dir", str(out)]
    for key, value in {**SMALL, **overrides}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def metrics_rows(out) -> list[dict]:
    """A training's metrics.jsonl, one dict a line."""
    import json

    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- ILSVRC-shaped archives

WNIDS = ["n01440764", "n01443537", "n01484850"]
SIZES = [(500, 375), (375, 500), (500, 333), (256, 256), (200, 150), (1600, 1200)]


@functools.cache
def _photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # two real 427x640 photos, bundled with scikit-learn


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A crop of a real photo, resized to `size` (w, h)."""
    rng = np.random.default_rng(seed)
    src = _photos()[seed % 2]
    h = int(rng.integers(200, 400))
    y, x = rng.integers(0, 427 - h + 1), rng.integers(0, 640 - h + 1)
    return Image.fromarray(src[y : y + h, x : x + h]).resize(size, Image.Resampling.BICUBIC)


def dirty_images() -> dict[str, bytes]:
    """The real set's odd files: CMYK and grayscale JPEGs, a palette image and a PNG named .JPEG."""
    base = photo(7, (400, 300))
    return {
        "cmyk": encode(base.convert("CMYK")),
        "gray": encode(base.convert("L")),
        "palette": encode(base.convert("P"), "PNG"),
        "png": encode(base, "PNG"),
    }


def truncated_jpeg() -> bytes:
    data = encode(photo(3, (500, 375)))
    return data[: len(data) * 6 // 10]


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_dataset(root):
    """ILSVRC-shaped archives: 3 classes x 6 photos (+ dirty files and a truncated JPEG), 6 val images."""
    images = {}
    for c, wnid in enumerate(WNIDS):
        for i, size in enumerate(SIZES):
            images[f"{wnid}_{i}.JPEG"] = (encode(photo(10 * c + i, size)), c)
    for kind, data in dirty_images().items():
        images[f"{WNIDS[1]}_{kind}.JPEG"] = (data, 1)
    images[f"{WNIDS[2]}_truncated.JPEG"] = (truncated_jpeg(), 2)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(WNIDS):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for name, (data, label) in images.items():
                    if label == c:
                        _add_bytes(inner, name, data)
            _add_bytes(outer, f"{wnid}.tar", buf.getvalue())
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": (encode(photo(100 + i, (500, 375))), i % 3) for i in range(1, 7)}
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for name, (data, _) in val.items():
            _add_bytes(tar, name, data)
    write_tsv(root / "classes.tsv", ["index", "wnid", "names"], [(i, w, f"class {i}") for i, w in enumerate(WNIDS)])
    write_tsv(root / "val_labels.tsv", ["file", "index"], [(n, label) for n, (_, label) in val.items()])
    return images, val


def index_archives(root):
    """results/index/{train,val}.tsv of make_dataset's archives, as the workflow's index jobs write them."""
    from pipeline import resize

    for split in ("train", "val"):
        resize.build_index(
            split,
            root / f"ILSVRC2012_img_{split}.tar",
            root / "classes.tsv",
            root / "val_labels.tsv",
            root / "index" / f"{split}.tsv",
        )
