"""Speed of the DALI input pipelines (pipeline/augment.py) against a torch DataLoader.

Images/s, each over --batches batches after --warmup batches, on the same
256x256 webdataset shards:
    dali_train       TrainLoader: decode, random 224 crop, flip, PCA lighting,
                     mean-image normalisation (the training pipeline)
    dali_decode      reader + decoder only (same device): what decoding alone allows
    dali_center      EvalLoader, centre view
    dali_ten         EvalLoader, ten views (images/s, not views/s)
    torch_loader     torch DataLoader (--torch-workers processes) doing the same crop,
                     flip, lighting and normalisation with PIL and numpy (CPU only)
    epoch_start_s    seconds from TrainLoader.epoch(e) to its first batch: the
                     per-epoch pipeline rebuild that makes epochs reproducible

Targets: DALI on the CPU at least 3x the DataLoader on the same cores; on one
H100/H200 at batch 256, at least 15,000 images/s. Figures: bench/RESULTS-augment.md.

    python bench/augment_speed.py --make-shards 4096 --device cpu --batch 128 --dali-threads 2 --cores 2
    python bench/augment_speed.py --make-shards 16384 --device cuda:0 --batch 256 --dali-threads 8 \
        --batches 50 --no-torch --json gpu.json

Needs torch, nvidia-dali, numpy and pillow (no snakemake, no mlflow). Without
--shards it writes synthetic shards (smooth random scenes with grain, JPEG
quality 90 like the resize stage, about the size of resized ImageNet images)
to a temporary folder.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import mmap
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from synthetic import IMAGENET_PCA, make_shards  # noqa: E402  (bench/ is on sys.path when run as a script)

from pipeline import dali_pipes  # noqa: E402
from pipeline.loaders import AugmentSettings, EvalLoader, TrainLoader, index_path, lighting_matrix_for  # noqa: E402
from pipeline.pca_files import as_pca, load_pca  # noqa: E402
from pipeline.shards import decode_label, shard_sample_count  # noqa: E402

# ---------------------------------------------------------------- the DataLoader baseline


class ShardDataset(torch.utils.data.Dataset):
    """(jpeg bytes, label) by offset through the .idx files; the same augmentation in PIL + numpy."""

    def __init__(self, shards, pca, settings, seed=0):
        self.items = []
        for s in shards:
            lines = index_path(s).read_text().splitlines()[1:]
            for line in lines:
                t = line.split()
                parts = {t[i]: (int(t[i + 1]), int(t[i + 2])) for i in range(0, len(t), 4)}
                self.items.append((s, parts["jpg"], parts["cls"]))
        self.pca, self.settings, self.seed = pca, settings, seed
        self.light = lighting_matrix_for(settings, pca).astype(np.float32)
        self.maps = {}

    def __len__(self):
        return len(self.items)

    def _bytes(self, shard, span):
        if shard not in self.maps:  # one map per worker process
            with open(shard, "rb") as f:
                self.maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        offset, size = span
        return self.maps[shard][offset : offset + size]

    def __getitem__(self, i):
        shard, jpg, cls = self.items[i]
        rng = np.random.default_rng(
            [self.seed, i, torch.utils.data.get_worker_info().seed % 2**32 if torch.utils.data.get_worker_info() else 0]
        )
        x = np.asarray(Image.open(io.BytesIO(self._bytes(shard, jpg))).convert("RGB"), np.float32)
        ox, oy = rng.integers(0, 33, 2)
        if self.settings.normalize == "mean_image":
            x = x[oy : oy + 224, ox : ox + 224] - self.pca.mean_image[oy : oy + 224, ox : ox + 224]
            mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
        else:
            x = x[oy : oy + 224, ox : ox + 224]
            mean, std = self.pca.mean.astype(np.float32), self.pca.std.astype(np.float32)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        offset = self.light @ rng.normal(0, self.settings.lighting_std, 3).astype(np.float32)
        x = (x + (offset - mean)) / std
        label = decode_label(bytes(self._bytes(shard, cls)))
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label


# ---------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its live children (DataLoader workers)."""
    total = time.process_time()
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(batches, warmup, count, cuda):
    """(seconds to the first batch, images/s and images per CPU-second over `count` batches after `warmup`).

    Images per CPU-second does not depend on what else runs on the machine; on
    N otherwise idle cores a pipeline that keeps them busy reaches about N times it.
    """
    t0 = time.perf_counter()
    n = 0
    for i, batch in enumerate(batches):
        if i == 0:
            first = time.perf_counter() - t0
        if i + 1 == warmup:
            if cuda:
                torch.cuda.synchronize()
            t1, c1 = time.perf_counter(), cpu_seconds()
        elif i + 1 > warmup:
            n += len(batch[1])
            if i + 1 == warmup + count:
                break
    if cuda:
        torch.cuda.synchronize()
    return first, n / (time.perf_counter() - t1), n / (cpu_seconds() - c1)


def forever(make):
    e = 0
    while True:
        yield from make(e)
        e += 1


def decode_batches(shards, batch, threads, device):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    gpu = device.startswith("cuda")
    pipe = dali_pipes.decode_pipe(
        shards=shards,
        index_paths=[str(index_path(s)) for s in shards],
        gpu=gpu,
        batch_size=batch,
        num_threads=threads,
        device_id=torch.device(device).index or 0 if gpu else None,
    )
    pipe.build()
    for b in DALIGenericIterator([pipe], ["images", "labels"], size=-1):
        yield b[0]["images"], b[0]["labels"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", nargs="*", help="training shard tars (glob patterns allowed); default: synthetic")
    p.add_argument("--make-shards", type=int, default=4096, help="synthetic images to write when --shards is absent")
    p.add_argument("--pca", help="pca.json (default: fb.resnet.torch's ImageNet statistics)")
    p.add_argument("--mean-image", help="mean_image.npy (default: the per-channel mean everywhere)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dali-threads", type=int, nargs="+", default=[2], help="DALI CPU threads (several: one run each)")
    p.add_argument("--cores", type=int, default=0, help="pin this process and its workers to the first N cores")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure everything this often, round robin, and keep the best (on a shared machine)",
    )
    p.add_argument("--torch-workers", type=int, default=2)
    p.add_argument("--no-torch", action="store_true", help="skip the DataLoader baseline")
    p.add_argument("--only", nargs="*", help="measure only these (dali_train, dali_decode, ...)")
    p.add_argument("--lighting", default="paper")
    p.add_argument("--normalize", default="mean_image")
    p.add_argument("--json", help="write the results here")
    return p


def _shards(a: argparse.Namespace, tmp_dir: str) -> tuple[list[str], float]:
    """The shards to read and their mean JPEG size: the given ones, or synthetic ones written to tmp_dir."""
    if not a.shards:
        return make_shards(tmp_dir, a.make_shards, "train")
    shards = sorted(f for pattern in a.shards for f in glob.glob(pattern))
    jpeg_bytes = float(np.mean([os.path.getsize(s) for s in shards])) / max(
        1, np.mean([shard_sample_count(s) for s in shards])
    )
    return shards, jpeg_bytes


def _pca(a: argparse.Namespace):
    pca = load_pca(a.pca, a.mean_image) if a.pca else as_pca(IMAGENET_PCA)
    if pca.mean_image is None:
        pca.mean_image = np.broadcast_to(pca.mean.astype(np.float32), (256, 256, 3)).copy()
    return pca


def _runs(a: argparse.Namespace, shards: list[str], pca, s: AugmentSettings) -> dict:
    """{(pipeline, threads or workers): a function returning an endless batch iterator}."""
    runs = {}
    for t in a.dali_threads:
        common = dict(settings=s, device=a.device, threads=t)
        train = TrainLoader(shards, pca, a.batch, seed=0, **common)
        runs["dali_train", t] = lambda train=train: forever(train.epoch)
        runs["dali_decode", t] = lambda t=t: forever(lambda e: decode_batches(shards, a.batch, t, a.device))
        runs["dali_center", t] = lambda c=common: forever(lambda e: EvalLoader(shards, pca, a.batch, "center", **c))
        runs["dali_ten", t] = lambda c=common: forever(lambda e: EvalLoader(shards, pca, a.batch, "ten", **c))
    if not a.no_torch:
        loader = torch.utils.data.DataLoader(
            ShardDataset(shards, pca, s),
            batch_size=a.batch,
            shuffle=True,
            drop_last=True,
            num_workers=a.torch_workers,
            persistent_workers=a.torch_workers > 0,
        )
        runs["torch_loader", a.torch_workers] = lambda: forever(lambda e: iter(loader))
    if a.only:
        runs = {k: v for k, v in runs.items() if k[0] in a.only}
    return runs


def _measure(runs: dict, a: argparse.Namespace, cuda: bool) -> list[dict]:
    """The best of --repeats round-robin measurements of each run."""
    best = {}
    for _ in range(a.repeats):
        for key, make in runs.items():
            first, rate, per_cpu = timed(make(), a.warmup, a.batches, cuda)
            if rate > best.get(key, (0, 0, 0))[1]:
                best[key] = (first, rate, per_cpu)
            print(
                f"  {key[0]:12s} threads/workers {key[1]:2d}: {rate:9.1f} img/s, {per_cpu:7.1f} img/cpu-s",
                file=sys.stderr,
            )
    return [
        {
            "name": name,
            "threads": t,
            "images_per_s": round(rate, 1),
            "images_per_cpu_s": round(per_cpu, 1),
            "first_batch_s": round(first, 3),
            "batch_s": round(a.batch / rate, 4),
        }
        for (name, t), (first, rate, per_cpu) in best.items()
    ]


def _ratios(rows: list[dict], threads: list[int], torch_workers: int) -> dict:
    """DALI training over the DataLoader (per second and per CPU-second), and over decoding alone."""
    res = {}
    rates = {(r["name"], r["threads"]): r["images_per_s"] for r in rows}
    for t in threads:
        if ("dali_train", t) in rates and ("torch_loader", torch_workers) in rates:
            res[f"train_over_torch_{t}"] = round(rates["dali_train", t] / rates["torch_loader", torch_workers], 2)
            per_cpu = {(r["name"], r["threads"]): r["images_per_cpu_s"] for r in rows}
            res[f"train_over_torch_per_cpu_{t}"] = round(
                per_cpu["dali_train", t] / per_cpu["torch_loader", torch_workers], 2
            )
        if ("dali_train", t) in rates and ("dali_decode", t) in rates:
            res[f"train_over_decode_{t}"] = round(rates["dali_train", t] / rates["dali_decode", t], 3)
    return res


def _print_table(res: dict) -> None:
    print(
        f"{res['device']} ({res['device_arg']}), batch {res['batch']}, {res['cores']} cores, {res['images']} images "
        f"of {res['jpeg_bytes']} bytes, lighting {res['lighting']}, normalize {res['normalize']}"
    )
    print(f"| {'pipeline':12s} | threads | images/s | images/CPU-s | first batch s | batch s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in res["runs"]:
        print(
            f"| {r['name']:12s} | {r['threads']:7d} | {r['images_per_s']:8.0f} | {r['images_per_cpu_s']:12.0f} "
            f"| {r['first_batch_s']:13.3f} | {r['batch_s']:7.4f} |"
        )
    for k, v in res.items():
        if k.startswith(("train_over",)):
            print(f"{k}: {v}")


def main(argv=None):
    a = _parser().parse_args(argv)
    if a.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: a.cores])
    cuda = a.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="augment-speed-") as tmp:
        shards, jpeg_bytes = _shards(a, tmp)
        pca = _pca(a)
        s = AugmentSettings(lighting=a.lighting, normalize=a.normalize)
        res = {
            "device": torch.cuda.get_device_name(torch.device(a.device)) if cuda else platform.processor() or "cpu",
            "device_arg": a.device,
            "batch": a.batch,
            "cores": len(os.sched_getaffinity(0)),
            "images": TrainLoader(shards, pca, a.batch, settings=s).total,
            "jpeg_bytes": round(jpeg_bytes),
            "lighting": a.lighting,
            "normalize": a.normalize,
        }
        res["runs"] = _measure(_runs(a, shards, pca, s), a, cuda)
        res.update(_ratios(res["runs"], a.dali_threads, a.torch_workers))
    _print_table(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
