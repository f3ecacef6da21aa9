"""Devices and DDP ranks for the stages that run a network (train, evaluate).

A job picks its devices itself: Snakemake's `resources: gpu=N` is only a
counter and sets no CUDA_VISIBLE_DEVICES. Under torchrun (LOCAL_RANK set)
each replica takes its own GPU, or its own pair for the paper's two-column
split.
"""

from __future__ import annotations

import os
import random
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import PipelineError


class DeviceError(PipelineError, ValueError):
    """A device setting that this machine cannot serve."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    torchrun: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_devices(spec: str, env: Dist) -> list[str]:
    """One device or two, chosen inside the job (Snakemake sets no CUDA_VISIBLE_DEVICES)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if parts == ["auto"]:
        parts = ["cuda"] if torch.cuda.is_available() else ["cpu"]
    if len(parts) not in (1, 2) or any(not (p == "cpu" or p.startswith("cuda")) for p in parts):
        raise DeviceError(f"train.devices {spec!r}: expected auto, cpu, cuda:N or two devices 'cuda:0,cuda:1'")
    if any(p.startswith("cuda") for p in parts) and not torch.cuda.is_available():
        raise DeviceError(f"train.devices {spec!r} asks for a GPU but torch sees none; use cpu or auto")
    if env.torchrun:  # one replica per LOCAL_RANK: its own GPU, or its own pair
        n = len(parts)
        parts = [p if p == "cpu" else f"cuda:{n * env.local_rank + i}" for i, p in enumerate(parts)]
    parts = ["cuda:0" if p == "cuda" else p for p in parts]
    if torch.cuda.is_available():
        for p in parts:
            if p.startswith("cuda") and torch.device(p).index >= torch.cuda.device_count():
                raise DeviceError(f"device {p} does not exist (torch sees {torch.cuda.device_count()} GPUs)")
    return parts


def launch_from_env(devices: str = "auto") -> tuple[Dist, list[str]]:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun), pick devices, join the process group."""
    env = Dist(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        torchrun="LOCAL_RANK" in os.environ,
    )
    devs = resolve_devices(devices, env)
    if env.world > 1 and not dist.is_initialized():
        on_gpu = devs[0].startswith("cuda")
        if on_gpu:
            torch.cuda.set_device(devs[0])
        dist.init_process_group(
            backend="nccl" if on_gpu else "gloo", device_id=torch.device(devs[0]) if on_gpu else None
        )
    return env, devs


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def peak_memory_mb(devices: list[str]) -> float:
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        return max(torch.cuda.max_memory_allocated(d) for d in cuda) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux: the process peak


def all_sum(t: torch.Tensor, env: Dist) -> torch.Tensor:
    if env.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather(obj, env: Dist) -> list:
    """Every rank's `obj`, in rank order (a list of one outside DDP)."""
    if env.world == 1:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def synchronize(devices: list[str] | list[torch.device]) -> None:
    """Wait for every stream on the GPUs among `devices` (DALI's too); nothing on the CPU."""
    for d in devices:
        if torch.device(d).type == "cuda":
            torch.cuda.synchronize(d)


class InputWait:
    """The seconds a loop spends waiting for its next batch.

    On a GPU both ends are synchronised: before asking for the batch, so the
    previous step's queued kernels do not count as waiting (the device was
    busy), and after, because DALI hands over GPU batches before its decoding
    stream has finished them (the wait would otherwise hide in the next step).
    Each synchronisation costs the overlap of one step's kernel launches with
    the previous step's compute (bench/gpu_check.sh measures it on a GPU).
    """

    def __init__(self, devices: list[str] | list[torch.device]):
        self.devices, self.seconds = list(devices), 0.0

    def batches(self, iterable):
        it = iter(iterable)
        while True:
            synchronize(self.devices)
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            synchronize(self.devices)
            self.seconds += time.perf_counter() - start
            yield batch

    def take(self) -> float:
        """Seconds waited since the last call."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds
