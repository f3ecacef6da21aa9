"""Training throughput (images/s) of pipeline.train's loop, on the CPU or one GPU.

Runs `pipeline.train.fit` (the stage's own loop: SGD step, top-k tallies,
metrics lines) for one short epoch per case and reports the median of its
per-window images/s, the first window (warm-up, compilation, DALI start)
left out. Two inputs:

    synthetic  one batch made once on the device and fed again every step:
               what model + optimizer sustain (compute bound)
    dali       pipeline.loaders.TrainLoader over shards: decode, random crop,
               flip, PCA lighting, then the step (end to end)

If synthetic >> dali the input pipeline bounds training; if they are close,
compute does. Each case also reports the loop's median data_wait_fraction
(the share of a window spent waiting for the next batch), and with
--input-wait nosync a second run of each case without the synchronisations
that make that figure honest on a GPU: the difference in images/s is what
measuring the wait costs. Needs torch, numpy, pillow, and nvidia-dali for the dali case;
shards are generated (bench/synthetic.py: photo-like 256x256 JPEGs, as in the
augmentation benchmark) when --shards is not given; PCA: ImageNet's published
statistics unless --pca names the pca stage's files.

    python bench/train_speed.py --device cpu --widths 0.25 1.0 --batch 32 --steps 6
    python bench/train_speed.py --device cuda:0 --widths 1.0 --batch 128 --steps 200 --input synthetic dali

Target (issue): 15,000 images/s end to end on one H100/H200 at width 1.0.
Results: bench/RESULTS-train.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare checkout

from synthetic import IMAGENET_PCA, make_shards  # noqa: E402  (bench/ is on sys.path when run as a script)

import pipeline.devices  # noqa: E402
from pipeline.devices import Dist  # noqa: E402
from pipeline.train import TrainConfig, fit  # noqa: E402


class SyntheticLoader:
    """The same (images, labels) batch every step, resident on the device."""

    def __init__(self, batch: int, steps: int, classes: int, device: str):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, 224, 224, generator=g).to(device)
        self.labels = torch.randint(0, classes, (batch,), generator=g).to(device)
        self.steps = steps

    def __len__(self):
        return self.steps

    def epoch(self, e):
        for _ in range(self.steps):
            yield self.images, self.labels


class OneBatchEval:
    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        yield self.loader.images, self.loader.labels, []


class Take:
    """The first `steps` batches of a loader's epoch."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, min(steps, len(loader))

    def __len__(self):
        return self.steps

    def epoch(self, e):
        for i, batch in enumerate(self.loader.epoch(e)):
            if i == self.steps:
                return
            yield batch


@contextlib.contextmanager
def input_sync(mode: str):
    """mode nosync: InputWait without its device synchronisations, to measure what they cost."""
    kept = pipeline.devices.synchronize
    if mode == "nosync":
        pipeline.devices.synchronize = lambda devices: None
    try:
        yield
    finally:
        pipeline.devices.synchronize = kept


def run_case(
    width,
    batch,
    steps,
    device,
    source,
    shards,
    pca,
    precision,
    channels_last,
    compile_,
    classes,
    dali_threads,
    torch_threads,
    log_every,
    wait_mode="sync",
) -> dict:
    from pipeline.checkpoint import build_model

    cfg = TrainConfig(
        width=width,
        batch_size=batch,
        epochs=1,
        log_every=log_every,
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        dali_threads=dali_threads,
        torch_threads=torch_threads,
    )
    torch.manual_seed(0)
    model = build_model(cfg.model_config(classes), [device])
    if source == "synthetic":
        train_loader = SyntheticLoader(batch, steps, classes, device)
        eval_loader = OneBatchEval(train_loader)
    else:
        from pipeline.loaders import AugmentSettings, TrainLoader

        settings = AugmentSettings(lighting=cfg.lighting, lighting_std=cfg.lighting_std, normalize=cfg.normalize)
        full = TrainLoader(shards, pca, batch, settings=settings, device=device, seed=0, threads=dali_threads)
        train_loader = Take(full, steps)
        eval_loader = OneBatchEval(SyntheticLoader(batch, 1, classes, device))
    with tempfile.TemporaryDirectory() as out, input_sync(wait_mode):
        summary = fit(model, train_loader, eval_loader, cfg, out, classes, Dist(), [device], fresh=True)
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if "images_per_s" in r]
    steady = windows[1:] or windows
    return {
        "input": source,
        "device": device,
        "width": width,
        "batch": batch,
        "steps": summary["steps"],
        "precision": summary["precision"],
        "channels_last": summary["channels_last"],
        "compile": compile_,
        "input_wait": wait_mode,
        "images_per_s": statistics.median(r["images_per_s"] for r in steady),
        "data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in steady),
        "parameters": summary["parameters"],
        "peak_mem_mb": rows[-1]["peak_mem_mb"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--log-every", type=int, default=0, help="steps per timing window (default: steps/5)")
    p.add_argument("--input", nargs="+", default=["synthetic"], choices=["synthetic", "dali"])
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dali-threads", type=int, default=4, help="DALI CPU threads")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--shards", nargs="*", help="train shards (.tar with .idx); generated when absent")
    p.add_argument("--pca", nargs=2, metavar=("PCA_JSON", "MEAN_IMAGE"))
    p.add_argument(
        "--input-wait",
        nargs="+",
        default=["sync"],
        choices=["sync", "nosync"],
        help="nosync: also without InputWait's device synchronisations (their cost)",
    )
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    log_every = args.log_every or max(1, args.steps // 5)

    shards, pca, tmp = args.shards, None, None
    if "dali" in args.input:
        from pipeline.pca_files import as_pca, load_pca

        pca = (
            load_pca(*args.pca)
            if args.pca
            else as_pca(IMAGENET_PCA, np.full((256, 256, 3), IMAGENET_PCA["mean"], np.float32))
        )
    if "dali" in args.input and not shards:
        tmp = tempfile.TemporaryDirectory()
        t0 = time.perf_counter()
        images = args.batch * (args.steps + 2)
        shards, _ = make_shards(tmp.name, images, "train", classes=args.classes, per_shard=512)
        print(f"generated {images} images in {len(shards)} shards ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    results = []
    for width in args.widths:
        for precision in args.precision:
            for source in args.input:
                for mode in args.input_wait:
                    r = run_case(
                        width,
                        args.batch,
                        args.steps,
                        args.device,
                        source,
                        shards,
                        pca,
                        precision,
                        args.channels_last,
                        args.compile,
                        args.classes,
                        args.dali_threads,
                        args.torch_threads,
                        log_every,
                        mode,
                    )
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        "| input | width | batch | precision | channels_last | compile | input wait | images/s | data wait | peak MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['input']} | {r['width']} | {r['batch']} | {r['precision']} | {r['channels_last']} | "
            f"{r['compile']} | {r['input_wait']} | {r['images_per_s']:.0f} | {r['data_wait_fraction']:.1%} | "
            f"{r['peak_mem_mb']:.0f} |"
        )
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
