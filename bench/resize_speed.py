"""Speed, memory and quality of the resize stage (pipeline/resize.py) on realistic JPEGs.

    python bench/resize_speed.py            # about 5 minutes on 2 cores; prints markdown

Inputs are generated: crops of scikit-learn's two bundled photos with sensor-like
noise, saved at quality 90 as 500x375 (the typical ILSVRC size) and 1600x1200,
packed in an ILSVRC-shaped nested train archive and indexed like the real one.

Measured, per core (one process, BLAS single-threaded, as Snakemake runs a job):
- the stage: `resize_shard` end to end (index rows, pread, decode, resize,
  statistics, encode, shard + index written), with and without statistics;
- (a) the naive baseline: full decode, LANCZOS to shorter side 256, centre
  crop, JPEG encode; (b) decode only (full decode, the floor);
- per-image split of our cost (decode+resize, statistics, encode), and the
  filters PIL offers for the resize;
- quality: our 256x256 pixels against the naive baseline's (MAD, PSNR);
- 1 vs 2 shard jobs in parallel; peak RSS of a job for 1x and 4x the images;
- the archive index at ImageNet size (1,281,167 rows): load time and memory;
- the PCA stage on 1,024 shard statistics files, against the resize time.
Timings are the best of several interleaved rounds, since the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ["OPENBLAS_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from pipeline import archive, images, resize  # noqa: E402
from pipeline.io import write_tsv  # noqa: E402
from pipeline.sources import ILSVRC_TRAIN_IMAGES  # noqa: E402

PY = sys.executable
WNIDS = [f"n0{1440764 + i}" for i in range(4)]


# ---------------------------------------------------------------- inputs


def photo_jpeg(rng, photos, size) -> bytes:
    src = photos[int(rng.integers(len(photos)))]
    h = int(rng.integers(240, 427))
    w = min(640, int(h * 4 / 3))
    y, x = rng.integers(0, 427 - h + 1), rng.integers(0, 640 - w + 1)
    im = Image.fromarray(src[y : y + h, x : x + w]).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 3, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_archive(work: Path, n_small: int, n_large: int) -> dict:
    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    kinds = ["small"] * n_small + ["large"] * n_large
    rng.shuffle(kinds)
    images = {}
    for i, kind in enumerate(kinds):
        size = (500, 375) if kind == "small" else (1600, 1200)
        images[f"{WNIDS[i % 4]}_{i}.JPEG"] = (kind, photo_jpeg(rng, photos, size))
    with tarfile.open(work / "train.tar", "w") as outer:
        for wnid in WNIDS:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for name, (_, data) in images.items():
                    if name.startswith(wnid):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    write_tsv(work / "classes.tsv", ["index", "wnid", "names"], [(i, w, w) for i, w in enumerate(WNIDS)])
    resize.build_index("train", work / "train.tar", work / "classes.tsv", None, work / "all.tsv")
    rows = archive.read_member_index(work / "all.tsv")
    subsets = {"small": [], "large": [], "mix": []}
    for i in range(len(rows)):
        kind = images[rows.name(i)][0]
        line = (rows.name(i), int(rows.offset[i]), int(rows.size[i]), int(rows.label[i]))
        subsets[kind].append(line)
        subsets["mix"].append(line)
    for name, lines in subsets.items():
        write_tsv(work / f"{name}.tsv", archive.INDEX_HEADER, lines)
    # 4x the mix (same bytes, other names) for the memory check
    write_tsv(
        work / "mix4.tsv",
        archive.INDEX_HEADER,
        [(m.replace(".JPEG", f"_{r}.JPEG"), o, s, lab) for r in range(4) for m, o, s, lab in subsets["mix"]],
    )
    return {k: [d for kind, d in images.values() if kind == k] for k in ("small", "large")}


# ---------------------------------------------------------------- per-image costs


def decode_only(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def naive(data, resample=Image.Resampling.LANCZOS, encode=True):
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    W, H = max(256, round(w * s)), max(256, round(h * s))
    left, top = (W - 256) // 2, (H - 256) // 2
    im = im.resize((W, H), resample).crop((left, top, left + 256, top + 256))
    if encode:
        resize.encode_jpeg(im, 90)
    return im


STATS = resize.RGBStats(256)


def ours_resize(data):
    return resize.downsample(data)


def ours_no_stats(data):
    return resize.encode_jpeg(resize.downsample(data), 90)


def ours(data):
    im = resize.downsample(data)
    STATS.add(np.asarray(im))
    return resize.encode_jpeg(im, 90)


def stats_only(pixels):
    STATS.add(pixels)


def encode_only(im):
    return resize.encode_jpeg(im, 90)


def best_ms(fns: dict, inputs: dict, rounds: int) -> dict:
    """Mean CPU ms per item for each fn: the best round; fns interleaved item by item.

    CPU time of this thread, not wall time: on a shared machine other
    processes delay us but do not add to it, and interleaving item by item
    exposes every variant to the same cache and memory-bandwidth contention.
    """
    best = {k: float("inf") for k in fns}
    n = len(next(iter(inputs.values())))
    for _ in range(rounds):
        spent = dict.fromkeys(fns, 0)
        for i in range(n):
            for key, fn in fns.items():
                t0 = time.thread_time_ns()
                fn(inputs[key][i])
                spent[key] += time.thread_time_ns() - t0
        for key in fns:
            best[key] = min(best[key], spent[key] / n / 1e6)
    return best


def psnr(mse):
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


def compare(a_imgs, b_imgs):
    diffs = [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(a_imgs, b_imgs)]
    mse = float(np.mean([np.mean(d**2) for d in diffs]))
    return float(np.mean([np.mean(np.abs(d)) for d in diffs])), psnr(mse)


# ---------------------------------------------------------------- stage runs


def stage(work, index, out, stats, shards=1):
    """Run one shard job in process; returns (report, CPU seconds)."""
    t0 = time.process_time()
    report = resize.resize_shard(work / index, work / "train.tar", out, 0, shards, stats=stats)
    return report, time.process_time() - t0


def cli_job(work, index, out):
    return [
        PY,
        "-m",
        "pipeline.resize",
        "shard",
        "--split",
        "train",
        "--index",
        str(work / index),
        "--source",
        str(work / "train.tar"),
        "--shard",
        "0",
        "--shards",
        "1",
        "--stats",
        "--out",
        str(out),
    ]


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb(cmd) -> float:
    """Peak RSS of one child process, started from a small runner process.

    The runner's ru_maxrss carries this (large) process's RSS, but its child's
    does not exceed the runner's own small RSS at fork, so RUSAGE_CHILDREN
    there is the job's peak.
    """
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([PY, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


# ---------------------------------------------------------------- report


def _render_steps(r: dict) -> list[str]:
    """Per-image costs of the steps, and their ratios."""
    out = [
        f"Images: {r['images']}; mean file size (kB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["mean_kB"].items()),
        "",
    ]
    out += [
        "Per image, CPU ms of one thread (best of interleaved rounds, bytes in memory):",
        "",
        "| step | 500x375 | 1600x1200 |",
        "| --- | ---: | ---: |",
    ]
    small, large = r["per_image_ms"]["small"], r["per_image_ms"]["large"]
    for key in small:
        out.append(f"| {key} | {small[key]:.2f} | {large[key]:.2f} |")
    out += ["", "Ratios:", "", "| ratio | 500x375 | 1600x1200 |", "| --- | ---: | ---: |"]
    for name, num, den in (
        ("naive LANCZOS / ours (speed-up)", "naive LANCZOS", "ours: + encode + stats"),
        ("naive BILINEAR / ours", "naive BILINEAR", "ours: + encode + stats"),
        ("ours / decode only", "ours: + encode + stats", "decode only"),
        ("stats / ours without stats", "stats alone", "ours: + encode"),
    ):
        out.append(f"| {name} | {small[num] / small[den]:.2f} | {large[num] / large[den]:.2f} |")
    ns, nl = r["images"]["small (500x375)"], r["images"]["large (1600x1200)"]

    def mix(key):
        return (ns * small[key] + nl * large[key]) / (ns + nl)

    out += [
        "",
        f"On the mix ({ns} + {nl} images): ours {mix('ours: + encode + stats'):.2f} ms/image, "
        f"decode only {mix('decode only'):.2f}, naive LANCZOS {mix('naive LANCZOS'):.2f}; ours / decode only "
        f"{mix('ours: + encode + stats') / mix('decode only'):.2f}, naive LANCZOS / ours "
        f"{mix('naive LANCZOS') / mix('ours: + encode + stats'):.2f}.",
    ]
    return out


def _render_stage_and_filters(r: dict) -> list[str]:
    """The stage end to end, and the resize filters' cost and fidelity."""
    out = [
        "",
        "The stage end to end (`resize_shard` in process, CPU time: index rows, pread, decode, resize, "
        "encode, shard + .idx; best of rounds):",
        "",
        "| input | images/CPU-s, no stats | images/CPU-s, with stats | stats overhead |",
        "| --- | ---: | ---: | ---: |",
    ]
    st = r["stage"]
    for kind in ("small", "large", "mix"):
        a, b = st[f"{kind} stats=False"], st[f"{kind} stats=True"]
        out.append(
            f"| {kind} | {a['images_per_s']:.0f} | {b['images_per_s']:.0f} | {b['seconds'] / a['seconds'] - 1:+.1%} |"
        )
    out += [
        "",
        "Resize filter (ours = DCT-scaled decode + resize of the kept box) against the naive "
        "LANCZOS baseline's pixels (before JPEG):",
        "",
        "| image | filter | ms/image (decode+resize) | MAD (levels) | PSNR (dB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, v in r["filters"].items():
        if "ms" in v:
            kind, name = key.split()
            out.append(
                f"| {kind} | {name} | {v['ms']:.2f} | {v['mad_vs_naive_lanczos']:.2f} | "
                f"{v['psnr_vs_naive_lanczos']:.1f} |"
            )
    for kind in ("small", "large"):
        sc, rt = r["filters"][f"{kind} shortcut"], r["filters"][f"{kind} jpeg q90 round trip"]
        out.append(
            f"\n{kind}: ours vs resize-then-crop with the same filter: MAD {sc['mad_vs_naive_same_filter']:.3f}, "
            f"PSNR {sc['psnr_vs_naive_same_filter']:.1f} dB; the q90 JPEG round trip of our output: "
            f"MAD {rt['mad']:.2f}, PSNR {rt['psnr']:.1f} dB."
        )
    return out


def _render_outputs_and_scale(r: dict) -> list[str]:
    """JPEG quality, scaling over jobs, memory, the index and the PCA stage."""
    out = [
        "",
        "JPEG quality of the 256x256 output (all images): mean size and fidelity to the encoded uint8 pixels:",
        "",
        "| quality | kB/image | MAD | PSNR (dB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for q, v in r["jpeg_quality"].items():
        out.append(f"| {q} | {v['kB']:.1f} | {v['mad']:.2f} | {v['psnr']:.1f} |")
    sc = r["scaling"]
    out += [
        "",
        f"Scaling (CLI shard jobs on the mix, wall time incl. start-up): 1 job "
        f"{sc['1']['images_per_s']:.0f} images/s, 2 jobs in parallel {sc['2']['images_per_s']:.0f} images/s "
        f"(x{sc['speedup']:.2f}; load average {sc['load_average']:.1f} on 2 cores). CPU per image, process "
        f"start-up included: {sc['1']['cpu_ms_per_image']:.2f} ms alone, {sc['2']['cpu_ms_per_image']:.2f} ms "
        "with two jobs side by side.",
    ]
    out += ["", "Peak RSS: " + "; ".join(f"{k}: {v:.0f} MB" for k, v in r["peak_rss_mb"].items()) + "."]
    ix = r["index"]
    out += [
        "",
        f"Index of {ix['rows']:,} rows ({ix['tsv_mb']:.0f} MB TSV): full load {ix['all']['seconds']:.1f} CPU-s, "
        f"{ix['all']['arrays_mb']:.0f} MB of numpy columns, peak RSS +{ix['all']['peak_extra_rss_mb']:.0f} MB; "
        f"one shard's rows (1/1024) {ix['shard']['seconds']:.2f} CPU-s, peak RSS +{ix['shard']['peak_extra_rss_mb']:.0f} MB.",
    ]
    pc = r["pca"]
    out += [
        "",
        f"PCA stage (CLI, CPU time incl. start-up and plot) on {pc['shards']} shard statistics files: "
        f"{pc['seconds']:.1f} s ({pc['seconds_4_shards']:.1f} s on 4); the resize of 1,281,167 images at the "
        f"mix rate above is {pc['resize_cpu_s_for_1281167_images']:.0f} CPU-s, so PCA is "
        f"{pc['fraction_of_resize_cpu']:.3%} of it.",
    ]
    return out


def render(r: dict) -> str:
    """The figures as markdown tables (pasted into bench/RESULTS-resize.md)."""
    return "\n".join(_render_steps(r) + _render_stage_and_filters(r) + _render_outputs_and_scale(r))


# ---------------------------------------------------------------- measurements


def measure_per_image(data: dict, rounds: int) -> dict:
    """Per-image costs of each step, ms (bytes in memory, one core)."""
    per_image = {}
    for kind in ("small", "large"):
        items = data[kind]
        resized = [resize.downsample(d) for d in items]
        fns = {
            "decode only": decode_only,
            "naive LANCZOS": naive,
            "naive BILINEAR": lambda d: naive(d, Image.Resampling.BILINEAR),
            "ours: decode+resize": ours_resize,
            "ours: + encode": ours_no_stats,
            "ours: + encode + stats": ours,
            "stats alone": stats_only,
            "encode alone": encode_only,
        }
        inputs = {k: items for k in fns}
        inputs["stats alone"] = [np.asarray(im) for im in resized]
        inputs["encode alone"] = resized
        per_image[kind] = best_ms(fns, inputs, rounds)
        print(f"# per-image {kind}: {per_image[kind]}", file=sys.stderr)
    return per_image


def measure_filters(data: dict, rounds: int) -> dict:
    """Filters for the resize step: cost and distance to the naive LANCZOS baseline."""
    filters = {}
    for kind in ("small", "large"):
        items = data[kind]
        reference = [naive(d, encode=False) for d in items]
        same_filter = [naive(d, resize.RESAMPLE, encode=False) for d in items]
        for name in ("BILINEAR", "BICUBIC", "LANCZOS"):
            saved = images.RESAMPLE
            images.RESAMPLE = Image.Resampling[name]
            try:
                ms = best_ms({name: ours_resize}, {name: items}, rounds)[name]
                outs = [resize.downsample(d) for d in items]
            finally:
                images.RESAMPLE = saved
            mad, db = compare(outs, reference)
            filters[f"{kind} {name}"] = {"ms": ms, "mad_vs_naive_lanczos": mad, "psnr_vs_naive_lanczos": db}
        ours_imgs = [resize.downsample(d) for d in items]
        mad, db = compare(ours_imgs, same_filter)
        filters[f"{kind} shortcut"] = {"mad_vs_naive_same_filter": mad, "psnr_vs_naive_same_filter": db}
        decoded = [Image.open(io.BytesIO(resize.encode_jpeg(im, 90))).convert("RGB") for im in ours_imgs]
        mad, db = compare(decoded, ours_imgs)
        filters[f"{kind} jpeg q90 round trip"] = {"mad": mad, "psnr": db}
    return filters


def measure_jpeg_quality(data: dict) -> dict:
    """JPEG quality of the written shards: bytes and fidelity to the uint8 pixels encoded."""
    outs = [resize.downsample(d) for d in data["small"] + data["large"]]
    quality = {}
    for q in (75, 85, 90, 95, 100):
        encoded = [resize.encode_jpeg(im, q) for im in outs]
        decoded = [Image.open(io.BytesIO(e)).convert("RGB") for e in encoded]
        mad, db = compare(decoded, outs)
        quality[str(q)] = {"kB": float(np.mean([len(e) for e in encoded]) / 1e3), "mad": mad, "psnr": db}
    return quality


def measure_stage(work: Path, data: dict, rounds: int) -> dict:
    """The stage end to end, in process (best of rounds), with and without statistics."""
    stage_runs = {}
    for kind in ("small", "large", "mix"):
        best = {False: float("inf"), True: float("inf")}
        for r in range(rounds + 2):  # with and without statistics alternate
            for stats in (False, True):
                out = work / "stage" / f"{kind}-{stats}-{r}" / "train-00000.tar"
                _, cpu = stage(work, f"{kind}.tsv", out, stats)
                best[stats] = min(best[stats], cpu)
                shutil.rmtree(out.parent)
        n = len(data[kind])
        for stats, cpu in best.items():
            stage_runs[f"{kind} stats={stats}"] = {
                "seconds": cpu,
                "images_per_s": n / cpu,
                "ms_per_image": cpu / n * 1e3,
            }
    return stage_runs


def measure_scaling(work: Path, data: dict) -> dict:
    """One CLI job vs two in parallel, each on the whole mix.

    Wall time needs idle cores; CPU time per image shows whether jobs slow each other."""
    scaling = {}
    for jobs in (1, 2):
        best, best_cpu = None, None
        for r in range(2):
            outs = [work / "scale" / f"{jobs}-{r}-{j}" / "train-00000.tar" for j in range(jobs)]
            t0, c0 = time.perf_counter(), child_cpu()
            procs = [subprocess.Popen(cli_job(work, "mix.tsv", o), stderr=subprocess.DEVNULL) for o in outs]
            assert all(p.wait() == 0 for p in procs)
            wall, cpu = time.perf_counter() - t0, child_cpu() - c0
            best = wall if best is None else min(best, wall)
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
            for o in outs:
                shutil.rmtree(o.parent)
        n = jobs * len(data["mix"])
        scaling[str(jobs)] = {"wall_s": best, "images_per_s": n / best, "cpu_ms_per_image": best_cpu / n * 1e3}
    scaling["speedup"] = scaling["2"]["images_per_s"] / scaling["1"]["images_per_s"]
    scaling["load_average"] = os.getloadavg()[0]
    return scaling


def measure_peak_rss(work: Path, data: dict) -> dict:
    """Peak memory of one job, 1x and 4x the images."""
    return {
        "python + imports": peak_rss_mb([PY, "-c", "import numpy, PIL.Image, tqdm, pipeline.resize"]),
        f"job, {len(data['mix'])} images": peak_rss_mb(cli_job(work, "mix.tsv", work / "m1" / "train-00000.tar")),
        f"job, {4 * len(data['mix'])} images": peak_rss_mb(cli_job(work, "mix4.tsv", work / "m4" / "train-00000.tar")),
    }


def measure_index(work: Path, rows: int) -> dict:
    """Loading an archive index of ImageNet's size: all rows, and one shard's."""
    big = work / "imagenet_index.tsv"
    rng = np.random.default_rng(1)
    sizes_ = rng.integers(20_000, 300_000, rows)
    offsets = np.cumsum(sizes_ + 1024) - sizes_
    with open(big, "w") as f:
        f.write("member\toffset\tsize\tlabel\n")
        for i in range(rows):
            f.write(f"n{1440764 + i % 1000:08d}_{i}.JPEG\t{offsets[i]}\t{sizes_[i]}\t{i % 1000}\n")
    # VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork into a child's ru_maxrss
    code = (
        "import sys, time; from pipeline import archive, resize; "
        "hwm = lambda: int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024; "
        "base = hwm(); t = time.process_time(); "
        "ix = archive.read_member_index(sys.argv[1]) if sys.argv[2] == 'all' else "
        "archive.read_member_index(sys.argv[1], lambda n: resize.shard_rows(n, 0, 1024, 0)); "
        "dt = time.process_time() - t; "
        "nbytes = sum(a.nbytes for a in (ix.member, ix.offset, ix.size, ix.label)); "
        "print(dt, nbytes, hwm() - base)"
    )
    index = {"rows": rows, "tsv_mb": big.stat().st_size / 1e6}
    for mode in ("all", "shard"):
        out = subprocess.run([PY, "-c", code, str(big), mode], check=True, capture_output=True, text=True).stdout
        dt, nbytes, peak = out.split()
        index[mode] = {"seconds": float(dt), "arrays_mb": int(nbytes) / 1e6, "peak_extra_rss_mb": float(peak)}
    big.unlink()
    return index


def measure_pca(work: Path, pca_shards: int, mix_ms: float) -> dict:
    """The PCA stage on ImageNet-many shard statistics, against the resize CPU time it follows."""
    one = work / "stage" / "one" / "train-00000.tar"
    stage(work, "small.tsv", one, True)
    stats_dir = work / "pca_stats"
    stats_dir.mkdir()
    src = one.with_name("train-00000.stats.npz")
    paths = []
    for k in range(pca_shards):
        p = stats_dir / f"train-{k:05d}.stats.npz"
        shutil.copyfile(src, p)
        paths.append(str(p))
    t0 = child_cpu()
    subprocess.run(
        [PY, "-m", "pipeline.pca", "--stats", *paths, "--out-dir", str(work / "pca")],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    pca_s = child_cpu() - t0
    t0 = child_cpu()
    subprocess.run(
        [PY, "-m", "pipeline.pca", "--stats", *paths[:4], "--out-dir", str(work / "pca4")],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    pca4_s = child_cpu() - t0
    shutil.rmtree(stats_dir)
    return {
        "shards": pca_shards,
        "seconds": pca_s,
        "seconds_4_shards": pca4_s,
        "resize_cpu_s_for_1281167_images": ILSVRC_TRAIN_IMAGES * mix_ms / 1e3,
        "fraction_of_resize_cpu": pca_s / (ILSVRC_TRAIN_IMAGES * mix_ms / 1e3),
    }


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=240, help="500x375 images")
    parser.add_argument("--large", type=int, default=40, help="1600x1200 images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index-rows", type=int, default=ILSVRC_TRAIN_IMAGES)
    parser.add_argument("--pca-shards", type=int, default=1024)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="resize_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"images": {"small (500x375)": args.small, "large (1600x1200)": args.large}}
    print(f"# work dir {work}", file=sys.stderr)

    data = make_archive(work, args.small, args.large)
    data["mix"] = data["small"] + data["large"]
    results["mean_kB"] = {k: float(np.mean([len(d) for d in v]) / 1e3) for k, v in data.items()}
    results["per_image_ms"] = measure_per_image(data, args.rounds)
    results["filters"] = measure_filters(data, args.rounds)
    results["jpeg_quality"] = measure_jpeg_quality(data)
    print(f"# filters: {results['filters']}", file=sys.stderr)
    results["stage"] = measure_stage(work, data, args.rounds)
    print(f"# stage: {results['stage']}", file=sys.stderr)
    results["scaling"] = measure_scaling(work, data)
    results["peak_rss_mb"] = measure_peak_rss(work, data)
    results["index"] = measure_index(work, args.index_rows)
    results["pca"] = measure_pca(work, args.pca_shards, results["stage"]["mix stats=True"]["ms_per_image"])

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))
    if not args.work:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
