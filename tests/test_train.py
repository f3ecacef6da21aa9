"""Training stage: learning, checkpoints, kill-and-resume, plateau lr drops, divergence, DDP.

Everything runs on the CPU on tiny generated shards (4 classes of tinted
noise, 48 train and 8 val images, width 1/16, batch 4, one torch thread):
helpers.make_data's, built once as conftest.py's train_data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.devices import DeviceError, Dist, resolve_devices
from pipeline.io import write_json
from pipeline.train import TrainConfig, TrainingDiverged, fit, make_loaders, param_digest
from pipeline.training.state import collapse_epoch

from helpers import CLASSES, REPO, SMALL, metrics_rows, torchrun, train_cli


def losses(out):
    return {r["step"]: r["train_loss"] for r in metrics_rows(out) if "train_loss" in r}


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


@pytest.mark.integration
def test_training_lowers_loss_and_writes_outputs(reference_training):
    out, summary = reference_training
    by_epoch = {}
    for r in metrics_rows(out):
        if "train_loss" in r:
            by_epoch.setdefault(r["epoch"], []).append(r["train_loss"])
    assert sorted(by_epoch) == [1, 2, 3] and all(len(v) == 12 for v in by_epoch.values())
    means = [np.mean(by_epoch[e]) for e in (1, 2, 3)]
    assert means[0] > means[1] > means[2] and means[2] < means[0] - 0.02, means
    epochs = [r for r in metrics_rows(out) if "val_top1_err" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert {"step", "epoch", "val_top1_err", "val_top5_err", "epoch_time_s", "peak_mem_mb"} <= set(epochs[0])
    first = metrics_rows(out)[0]
    assert {"step", "epoch", "train_loss", "train_top1_err", "train_top5_err", "lr", "images_per_s"} <= set(first)
    for name in ("train.json", "curve.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "train.json").read_text())
    assert saved["epochs"] == 3 and saved["steps"] == 36 and saved["num_classes"] == CLASSES
    assert saved["collapsed_epoch"] == collapse_epoch(epochs, saved["chance_top1_err"])
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == saved["best_epoch"]
    assert best["best"]["val_top1_err"] == min(r["val_top1_err"] for r in epochs)
    assert (out / "checkpoints" / f"epoch-{best['epoch']:03d}.pt").samefile(out / "checkpoints" / "best.pt")
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["step"] == 36
    assert {"model", "optimizer", "plateau", "rng", "config"} <= set(last)
    assert {"torch", "numpy", "python"} <= set(last["rng"][0])
    assert last["config"]["model"] == {
        "num_classes": CLASSES,
        "width": 0.0625,
        "lrn": True,
        "overlapping_pool": True,
        "init": "caffe",
        "init_gain": "source",
        "dropout": 0.5,
        "dropout_style": "paper",
        "activation": "relu",
        "columns": 2,
        "drop_conv": 0,
    }
    assert last["config"]["augment"] == {
        "lighting": "paper",
        "lighting_std": 0.1,
        "normalize": "mean_image",
        "crops": True,
        "flips": True,
    }


@pytest.mark.integration
def test_model_from_checkpoint_rebuilds_the_network(reference_training):
    out, _ = reference_training
    model, meta = model_from_checkpoint(out / "checkpoints" / "last.pt", devices=["cpu"])
    assert not model.training and meta["epoch"] == 3 and "optimizer" not in meta
    assert param_digest(model) == json.loads((out / "train.json").read_text())["replica_digests"][0]
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, CLASSES)


@pytest.mark.integration
def test_killed_run_resumes_and_reproduces_the_losses(train_data, reference_training, tmp_path):
    ref_out, _ = reference_training
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cli(train_data, out, epochs=3), env=env(), stderr=subprocess.PIPE, text=True)
    jsonl = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jsonl.exists() and any(r.get("epoch") == 2 for r in map(json.loads, jsonl.read_text().splitlines()[:-1])):
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "train.json").exists()
    killed_at = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]

    done = subprocess.run(train_cli(train_data, out, epochs=3), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after an interruption from {out / 'checkpoints' / 'last.pt'}: epoch {killed_at}" in done.stderr
    steps = [r["step"] for r in metrics_rows(out) if "train_loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 37))  # no step logged twice
    assert losses(out) == losses(ref_out)  # the same trajectory, bit for bit
    val = lambda o: [(r["epoch"], r["val_top1_err"]) for r in metrics_rows(o) if "val_top1_err" in r]  # noqa: E731
    assert val(out) == val(ref_out)


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _attempt(out: Path) -> dict:
    return json.loads((out / "attempt.json").read_text())


@pytest.mark.integration
def test_rerun_of_a_finished_run_trains_again_and_keeps_the_old_one(train_data, reference_training, tmp_path):
    ref_out, _ = reference_training
    out = _copy_run(ref_out, tmp_path / "run")
    old_last = load_checkpoint(out / "checkpoints" / "last.pt")
    done = subprocess.run(train_cli(train_data, out, epochs=3), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting over: the run in" in done.stderr and "had finished (epoch 3)" in done.stderr
    assert _attempt(out)["action"] == "start" and _attempt(out)["uid"] != old_last["uid"]
    assert [r["step"] for r in metrics_rows(out) if "train_loss" in r] == list(range(1, 37))  # it trained, from step 1
    assert losses(out) == losses(ref_out)  # same seed, same train_data: the same run again
    new_last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert new_last["uid"] == _attempt(out)["uid"] != old_last["uid"]
    # the replaced run is set aside, not destroyed
    kept = load_checkpoint(out / "previous" / "checkpoints" / "last.pt")
    assert kept["uid"] == old_last["uid"] and (out / "previous" / "metrics.jsonl").exists()


@pytest.mark.integration
def test_raising_epochs_extends_a_finished_run(train_data, reference_training, tmp_path):
    ref_out, _ = reference_training
    out = _copy_run(ref_out, tmp_path / "run")
    done = subprocess.run(train_cli(train_data, out, epochs=4), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "extending the finished run from epoch 3 to 4 (train.epochs was raised)" in done.stderr
    ext = losses(out)
    assert sorted(ext) == list(range(1, 49)) and {k: ext[k] for k in range(1, 37)} == losses(ref_out)
    assert json.loads((out / "train.json").read_text())["start"] == "extend"
    assert not (out / "previous").exists()


@pytest.mark.integration
def test_changed_input_starts_over(train_data, reference_training, tmp_path):
    ref_out, _ = reference_training
    out = _copy_run(ref_out, tmp_path / "run")
    changed = dict(train_data, pca=tmp_path / "pca.json")
    pca = json.loads(Path(train_data["pca"]).read_text())
    pca["eigval"] = [1600.0, 900.0, 600.0]
    write_json(changed["pca"], pca)
    done = subprocess.run(train_cli(changed, out, epochs=4), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # epochs was raised too, but on other train_data the old weights are not worth extending
    assert "starting over: the PCA differs from the checkpoint's" in done.stderr
    assert sorted(losses(out)) == list(range(1, 49))
    assert (
        load_checkpoint(out / "checkpoints" / "last.pt")["config"]["inputs"]["pca"]
        != load_checkpoint(out / "previous" / "checkpoints" / "last.pt")["config"]["inputs"]["pca"]
    )


class Poisoned:
    """A loader whose epoch `bad` turns into inf pixels from its third batch on."""

    def __init__(self, loader, bad):
        self.loader, self.bad = loader, bad

    def __len__(self):
        return len(self.loader)

    def epoch(self, e):
        for i, (images, labels) in enumerate(self.loader.epoch(e)):
            yield (images * float("inf") if e == self.bad and i >= 2 else images), labels


@pytest.mark.integration
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(train_data, tmp_path):
    from pipeline.checkpoint import build_model

    cfg = TrainConfig(epochs=3, **SMALL)
    torch.manual_seed(0)
    model = build_model(cfg.model_config(CLASSES), ["cpu"])
    train_loader, eval_loader = make_loaders(
        cfg, train_data["manifest"], train_data["pca"], train_data["mean_image"], Dist(), "cpu"
    )
    with pytest.raises(TrainingDiverged) as err:
        fit(model, Poisoned(train_loader, bad=2), eval_loader, cfg, tmp_path, CLASSES)
    msg = str(err.value)
    assert (
        "loss nan at step 15 (epoch 2)" in msg and f"{tmp_path / 'checkpoints' / 'last.pt'} (epoch 1, step 12)" in msg
    )
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(t).all() for t in kept["model"].values())
    assert not (tmp_path / "train.json").exists()


@pytest.mark.integration
def test_cli_reports_divergence_without_traceback(train_data, tmp_path):
    run = subprocess.run(
        train_cli(train_data, tmp_path, epochs=1, lr=1e6), env=env(), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "error: training diverged: loss" in run.stderr and "Traceback" not in run.stderr
    assert "no checkpoint was written" in run.stderr


@pytest.mark.unit
def test_cli_names_a_missing_shard_without_traceback(train_data, tmp_path, capsys):
    from pipeline.train import main

    manifest = json.loads(train_data["manifest"].read_text())
    manifest["val"]["shards"].append({"tar": "val/val-00009.tar"})
    bad = train_data["manifest"].with_name("manifest-missing-shard.json")  # beside the real one: same relative paths
    write_json(bad, manifest)
    args = train_cli(train_data, tmp_path, epochs=1)[3:]
    args[args.index("--manifest") + 1] = str(bad)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: shard {bad.parent / 'val' / 'val-00009.tar'} listed for val does not exist" in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.integration
def test_two_ddp_replicas_stay_in_sync(train_data, tmp_path):
    args = train_cli(train_data, tmp_path, epochs=1, batch_size=8)
    run = subprocess.run(torchrun("pipeline.train") + args[3:], env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"]
    a, b = summary["replica_digests"]
    assert a == b
    model, _ = model_from_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert param_digest(model) == a
    steps = [r["step"] for r in metrics_rows(tmp_path) if "train_loss" in r]
    assert steps == list(range(1, 7))  # 48 images / global batch 8, one writer


@pytest.mark.unit
def test_devices_and_bad_settings():
    assert resolve_devices("cpu", Dist()) == ["cpu"]
    assert resolve_devices("auto", Dist()) == (["cuda:0"] if torch.cuda.is_available() else ["cpu"])
    with pytest.raises(DeviceError, match="train.devices 'gpu'"):
        resolve_devices("gpu", Dist())
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees none"):
            resolve_devices("cuda:0,cuda:1", Dist())


class InMemory:
    """Batches held in memory, each handed over after `delay` seconds (a slow input pipeline)."""

    def __init__(self, batches, delay=0.0):
        self.batches, self.delay = batches, delay

    def __len__(self):
        return len(self.batches)

    def epoch(self, e):
        for images, labels in self.batches:
            time.sleep(self.delay)
            yield images, labels

    def __iter__(self):  # the validation pass: (images, labels, keys)
        for images, labels in self.batches[:1]:
            yield images, labels, [""] * len(labels)


@pytest.mark.integration
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_input_wait_is_measured_and_a_slow_input_is_flagged(tmp_path, delay):
    from pipeline.checkpoint import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, **{**SMALL, "log_every": 2})
    batches = [(torch.randn(4, 3, 224, 224), torch.randint(0, CLASSES, (4,))) for _ in range(6)]
    model = build_model(cfg.model_config(CLASSES))
    summary = fit(model, InMemory(batches, delay), InMemory(batches), cfg, tmp_path, CLASSES)
    windows = [r for r in metrics_rows(tmp_path) if "train_loss" in r]
    assert len(windows) == 6 and all(0 <= r["data_wait_fraction"] <= 1 for r in windows)
    assert summary["data_wait_s"] == pytest.approx(sum(r["data_wait_s"] for r in windows))
    warned = [w["kind"] for w in summary["warnings"]]
    if delay:  # at least 0.6 s of waiting per window of two steps of a 1/16-wide network
        assert min(r["data_wait_s"] for r in windows) >= 2 * delay
        assert summary["data_wait_fraction"] > 0.5 and summary["input_bound"] and "input_bound" in warned
        warning = next(r for r in metrics_rows(tmp_path) if r.get("warning") == "input_bound")
        assert "dali_threads" in warning["message"] and warning["step"] == 4  # an epoch's first window is not judged
    else:
        # in memory the wait is the loop's own overhead: far below the warning's 25%, even on a busy machine
        assert summary["data_wait_fraction"] < 0.25 and not summary["input_bound"] and "input_bound" not in warned
        assert all(r["data_wait_fraction"] < 0.25 for r in windows)
