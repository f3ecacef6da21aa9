"""Training-step speed of the two-column AlexNet against an ungrouped baseline.

Forward + backward images/s (cross-entropy on random data, no optimizer step)
at batch 128 for:
    grouped     model.alexnet.AlexNet on one device (grouped convs, per-column LRN)
    baseline    the same channel counts 96/256/384/384/256 with no groups and
                no LRN (torchvision's alexnet shape, built here), so the ratio
                isolates what groups + LRN cost
    two-device  AlexNet(devices=[d, d]): the paper's two-GPU split placed on
                one device (and on cuda:0/cuda:1 when two GPUs are visible)
On CUDA each runs in fp32 and in bf16 autocast + channels_last, and the peak
memory per device of the two-device layout at fp32 is reported
(torch.cuda.max_memory_allocated). --compile adds torch.compile (inductor)
runs of the grouped model and the baseline.

Targets: the faithful model costs at most 1.3x the baseline per image; on a GPU,
bf16 + channels_last is at least 2x fp32. Figures: bench/RESULTS-model.md.

    python bench/model_speed.py --device cpu --iters 3 --warmup 1
    python bench/model_speed.py --device cuda --iters 30 --compile --json speed.json

Needs only torch.
"""

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model.alexnet import AlexNet, count_parameters  # noqa: E402


def baseline(num_classes=1000):
    """AlexNet's channel counts with no groups and no LRN (torchvision's layout; 62,378,344 parameters)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


def sync(devices):
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def time_steps(model, in_dev, out_dev, batch, iters, warmup, bf16, channels_last):
    """Images/s of forward+backward (wall clock, and per CPU-second of this process), peak MiB per CUDA device."""
    devices = sorted({p.device for p in model.parameters()}, key=str)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    x = torch.randn(batch, 3, 224, 224, device=in_dev).to(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=out_dev)
    autocast = torch.autocast(in_dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(devices)
    for d in devices:
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    sync(devices)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = {str(d): round(torch.cuda.max_memory_allocated(d) / 2**20) for d in devices if d.type == "cuda"}
    return batch * iters / seconds, batch * iters / cpu_seconds, peak


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times, interleaved, and summarise the best "
        "(for shared machines whose load changes)",
    )
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    return ap


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        # fp32 convolutions use TF32 tensor cores by default (cudnn.allow_tf32), fp32 matmuls do not
        return (
            f"{torch.cuda.get_device_name(dev)} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"float32_matmul_precision={torch.get_float32_matmul_precision()})"
        )
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def _cases(dev: torch.device) -> tuple[list, list]:
    """(variants: (name, bf16, channels_last)), (models: (label, build)) to time on `dev`."""
    variants = [("fp32", False, False)]
    if dev.type == "cuda":
        variants.append(("bf16+channels_last", True, True))
    models = [
        ("grouped", lambda: AlexNet().to(dev)),
        ("baseline", lambda: baseline().to(dev)),
        ("two-device on one", lambda: AlexNet(devices=[dev, dev])),
    ]
    if dev.type == "cuda" and torch.cuda.device_count() >= 2:
        models.append(("two-device on two", lambda: AlexNet(devices=["cuda:0", "cuda:1"])))
    return variants, models


class Rows:
    """The measured rows, written to --json after each one so a run cut short keeps what it measured."""

    def __init__(self, args: argparse.Namespace, dev: torch.device, name: str):
        self.args, self.dev, self.name = args, dev, name
        self.rows: list[dict] = []

    def measure(self, label, build, variant, bf16, cl, compiled=False, rnd=0) -> None:
        args, dev = self.args, self.dev
        model = build()
        in_dev = getattr(model, "input_device", dev)
        out_dev = getattr(model, "output_device", dev)
        params = count_parameters(model)
        if compiled:
            model = torch.compile(model)
        t0 = time.perf_counter()
        ips, ips_cpu, peak = time_steps(model, in_dev, out_dev, args.batch, args.iters, args.warmup, bf16, cl)
        row = {
            "model": label,
            "variant": variant,
            "compile": compiled,
            "round": rnd,
            "img_per_s": round(ips, 2),
            "img_per_cpu_s": round(ips_cpu, 2),
            "ms_per_batch": round(1000 * args.batch / ips, 2),
            "peak_MiB": peak,
            "params": params,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        self.rows.append(row)
        print(
            f"  {label:<20} {variant:<19} {'compiled' if compiled else 'eager':<9}"
            f"{ips:>9.1f} img/s {row['ms_per_batch']:>9.1f} ms/batch"
            + (f"  peak MiB {peak}" if peak else f"  {ips_cpu:>6.2f} img/CPU-s"),
            flush=True,
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "device": self.name,
                        "torch": torch.__version__,
                        "batch": args.batch,
                        "iters": args.iters,
                        "warmup": args.warmup,
                        "rows": self.rows,
                    },
                    f,
                    indent=1,
                )
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def best(self, model, variant, compiled=False, key="img_per_s") -> float:
        """The best of the rounds."""
        return max(
            r[key] for r in self.rows if r["model"] == model and r["variant"] == variant and r["compile"] == compiled
        )


def _print_summary(rows: Rows, variants: list, models: list, rounds: int, compiled: bool) -> None:
    ips, cpu = rows.best, rows.dev.type == "cpu"
    if rounds > 1:
        print(f"\nbest of {rounds} rounds, img/s:")
        for variant, _, _ in variants:
            for label, _ in models:
                print(
                    f"  {label:<20} {variant:<19} {ips(label, variant):>9.1f} img/s"
                    + (f" {ips(label, variant, key='img_per_cpu_s'):>7.2f} img/CPU-s" if cpu else "")
                )

    print("\nper-image cost of the faithful model relative to the baseline (target <= 1.3x):")
    for variant, _, _ in variants:
        for label, _ in models:
            if label != "baseline":
                ratio = f"{ips('baseline', variant) / ips(label, variant):.2f}x"
                if cpu:  # CPU time is steadier than wall time where others share the cores
                    cpu_ratio = ips("baseline", variant, key="img_per_cpu_s") / ips(label, variant, key="img_per_cpu_s")
                    ratio += f" wall, {cpu_ratio:.2f}x CPU time"
                print(f"  {label:<20} {variant:<19} {ratio}")
    if compiled:
        for variant, _, _ in variants:
            print(
                f"  grouped, compiled    {variant:<19} "
                f"{ips('baseline', variant, True) / ips('grouped', variant, True):.2f}x"
            )
    if len(variants) == 2:
        print("bf16+channels_last speed-up over fp32 (target >= 2x):")
        for label, _ in models:
            print(f"  {label:<20} {ips(label, variants[1][0]) / ips(label, 'fp32'):.2f}x")
        if compiled:
            for label, _ in models[:2]:
                print(
                    f"  {label + ', compiled':<20} {ips(label, variants[1][0], True) / ips(label, 'fp32', True):.2f}x"
                )


def main():
    args = _parser().parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    name = _device_name(dev)
    print(
        f"torch {torch.__version__} on {name}; batch {args.batch}, {args.iters} timed iters "
        f"after {args.warmup} warm-up; forward+backward"
    )
    variants, models = _cases(dev)
    rows = Rows(args, dev, name)
    for rnd in range(args.rounds):
        for variant, bf16, cl in variants:
            for label, build in models:
                rows.measure(label, build, variant, bf16, cl, rnd=rnd)
    if args.compile:  # last: compiling takes the longest
        for rnd in range(args.rounds):
            for variant, bf16, cl in variants:
                for label, build in models[:2]:
                    rows.measure(label, build, variant, bf16, cl, compiled=True, rnd=rnd)
    _print_summary(rows, variants, models, args.rounds, args.compile)


if __name__ == "__main__":
    main()
