"""A tiny DDP job for the launcher's tests: do the replicas start, meet and stay in sync?

    python -m pipeline.launch --nproc-per-node 2 -- python tests/slurm/ddp_probe.py OUT_DIR

Each rank joins the gloo process group from torchrun's environment, trains a
small linear model for a few SGD steps on its own data (seeded by rank) under
DistributedDataParallel, and writes OUT_DIR/rank-<RANK>.json with what it saw
(RANK, WORLD_SIZE, LOCAL_RANK, node) and a checksum of its final weights.
Replicas in sync end with identical weights although their data differ.
Without torchrun's variables it runs as one process (rank 0 of 1).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

STEPS = 5


def main(out_dir: str) -> int:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Linear(8, 2)
    initial = [p.detach().clone() for p in model.parameters()]
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    for _ in range(STEPS):
        x = torch.randn(16, 8, generator=data)
        y = torch.randint(0, 2, (16,), generator=data)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = sum(float((p.detach() - q).abs().sum()) for p, q in zip(model.parameters(), initial))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    record = {
        "rank": rank,
        "world_size": world,
        "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
        "group_rank": int(os.environ.get("GROUP_RANK", 0)),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "weights": [round(v, 6) for v in flat.tolist()],
        "moved": moved,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
