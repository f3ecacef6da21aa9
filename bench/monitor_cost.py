"""Cost of the training health monitor (pipeline/health.py) per SGD step.

    python bench/monitor_cost.py --steps 6 --width 1.0 --batch 128            # CPU
    python bench/monitor_cost.py --steps 50 --device cuda --bf16               # a GPU

Times full training steps (forward, loss, backward, SGD) of the same model on
the same synthetic batch, alternating three kinds: no monitor attached,
monitor attached but not armed (what 9 of 10 steps cost at log_every 10), and
armed (the window's last step: activation sums, norms, one host copy). The
target (issue: "under 2% of step time at width 1.0") is the amortised cost
at log_every 10: (armed + 9 x unarmed) / 10 against no monitor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.alexnet import AlexNet  # noqa: E402
from pipeline.health import HealthMonitor  # noqa: E402
from pipeline.train import TrainConfig, make_optimizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = AlexNet(num_classes=1000, width=args.width, devices=[str(dev)])
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randn(args.batch, 3, 224, 224, device=dev) * 60
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    monitor = HealthMonitor(model)

    def step(kind: str) -> tuple[float, float]:
        model.observer = None if kind == "none" else monitor.observe
        if kind == "armed":
            monitor.arm()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kind == "armed":
            monitor.collect(opt)
        else:
            loss.item()  # the training loop syncs no more than this on an unarmed step
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    for kind in ("none", "armed", "unarmed"):  # warm-up (allocator, momentum buffers)
        step(kind)
    times = {"none": [], "unarmed": [], "armed": []}
    for _ in range(args.steps):
        for kind in times:
            times[kind].append(step(kind))
    print(
        f"device {dev}{' bf16' if args.bf16 else ''}, width {args.width}, batch {args.batch}, "
        f"{args.steps} steps of each kind, interleaved (median per step)"
    )
    # CPU seconds of this process are what the monitor adds on a CPU; wall seconds
    # matter on a GPU, and on a shared CPU they carry the other jobs' noise
    for i, clock in enumerate(("wall", "cpu")):
        med = {k: statistics.median(t[i] for t in v) for k, v in times.items()}
        amortised = (med["armed"] + (args.log_every - 1) * med["unarmed"]) / args.log_every
        print(
            f"  {clock} s: "
            + ", ".join(f"{k} {v:.4f} ({100 * (v / med['none'] - 1):+.2f}%)" for k, v in med.items())
            + f"; amortised at log_every {args.log_every}: {100 * (amortised / med['none'] - 1):+.2f}%"
        )


if __name__ == "__main__":
    main()
