"""Where one training replica's tensors live and in which form.

The devices (one, or two for the paper's two-column split), bf16 autocast
and channels_last (both on by default on GPUs, where they pay; off on the
CPU, where bf16 is slow and the reference losses are fp32), and the DDP and
torch.compile wrappers. The model itself is always kept unwrapped: it is
what checkpoints save and what validation runs (ranks may hold different
numbers of validation images, which DDP's forward cannot handle).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.devices import Dist, peak_memory_mb


class Placement:
    def __init__(
        self,
        model: torch.nn.Module,
        devices: list[str],
        env: Dist,
        precision: str = "auto",
        channels_last: str = "auto",
    ):
        on_gpu = devices[0].startswith("cuda")
        self.devices, self.env = devices, env
        self.bf16 = precision == "bf16" or (precision == "auto" and on_gpu)
        self.channels_last = channels_last == "true" or (channels_last == "auto" and on_gpu)
        # the two-column model takes its input on one device and gives logits on the other
        self.input_device = torch.device(getattr(model, "input_device", devices[0]))
        self.output_device = torch.device(getattr(model, "output_device", devices[-1]))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.input_device.type, dtype=torch.bfloat16)
        return nullcontext()

    def inputs(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.input_device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.output_device, non_blocking=True).view(-1).long()

    def wrap(self, model: torch.nn.Module, compile: bool) -> torch.nn.Module:
        """The module the SGD steps run: DDP across replicas, then torch.compile if asked."""
        if self.env.world > 1:
            one_gpu = self.input_device.type == "cuda" and len(self.devices) == 1
            model = DDP(model, device_ids=[self.input_device] if one_gpu else None)
        return torch.compile(model) if compile else model

    def reset_peak_memory(self) -> None:
        for d in self.devices:
            if d.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(d)

    def peak_memory_mb(self) -> float:
        return peak_memory_mb(self.devices)
