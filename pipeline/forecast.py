"""Forecast of the real ImageNet run from what a preflight measured on this machine.

    python -m pipeline.forecast --results results/preflight --cores 16 \
        --train-images 1281167 --val-images 50000 --epochs 90 --out-dir results/preflight/forecast

The preflight (workflow/presets/preflight.yaml) runs the ImageNet preset's
chain on generated ImageNet-shaped data: the same 1024 + 64 shards, the same
network, recipe and devices, fewer images and a capped training. Every job's
Snakemake benchmark file (wall and CPU seconds, peak memory) and the stages'
own reports give costs per image, per job and per run; this module scales
them to the real set's counts (ILSVRC-2012: 1,281,167 training and 50,000
validation images, 90 epochs) and writes forecast.json (docs/formats.md)
and forecast.md, a table per stage: time, peak memory, disk.

How each stage scales (bench/RESULTS-scale.md measures which costs grow
with the images and which are fixed):
- fetch: hashing the archives at the measured MB/s; the download itself
  depends on the network and is only sized;
- index: seconds per indexed image;
- resize shards: per job, a fixed start-up (the job's wall time minus the
  stage's own seconds) plus seconds per image; the jobs share the cores,
  so the stage's wall time is their sum over the cores; peak memory is one
  job's peak times the jobs that run at once;
- resize manifest, PCA, augment: fixed per shard count (the preflight has the
  real count), taken as measured;
- train: the steady images/s (log windows after the first) over the real
  epochs, plus one validation pass per epoch at the measured rate;
- evaluate: ten-crop images/s over the real validation set, plus its fixed
  start-up.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from pipeline import benchmarks
from pipeline.errors import PipelineError, run_cli
from pipeline.io import read_json, read_jsonl, write_json, write_text
from pipeline.layout import CHECKPOINTS, Results, TrainFolder, shard_name
from pipeline.sources import ILSVRC_TRAIN_IMAGES, ILSVRC_VAL_IMAGES
from pipeline.training.verdict import section as trainability_section

# ILSVRC-2012 (the official archives' counts and byte sizes)
IMAGENET = {
    "train_images": ILSVRC_TRAIN_IMAGES,
    "val_images": ILSVRC_VAL_IMAGES,
    "epochs": 90,
    "classes": 1000,
    "archive_bytes": {"train": 147_897_477_120, "val": 6_744_924_160, "devkit": 2_568_145},
}
GB = 1e9


class ForecastError(PipelineError, ValueError):
    """A preflight output the forecast needs is missing or unreadable."""


# ---------------------------------------------------------------- reading what was measured


def read_benchmark(path: Path) -> dict:
    try:
        return benchmarks.read_benchmark(path, "rerun the preflight")
    except benchmarks.BenchmarkError as exc:
        raise ForecastError(str(exc)) from exc


def _need(path: str | Path, stage: str) -> Path:
    if not Path(path).is_file():
        raise ForecastError(f"{path} does not exist; the preflight's {stage} stage must run first")
    return Path(path)


def measure(results: str | os.PathLike) -> dict:
    """What the preflight in `results` measured, per stage, from its reports and benchmark files.

    Every job the workflow ran is counted, the held-out slice's (resize.holdout_per_class) included."""
    res = Results(str(results))
    manifest = read_json(_need(res.manifest, "resize"))
    splits = [split for split in ("train", "val", "holdout") if split in manifest]
    m: dict = {"splits": splits, "classes": len(manifest.get("classes", [])) or None}
    for split in splits:
        m[f"{split}_images"] = manifest[split]["images"]
        m[f"{split}_shards"] = len(manifest[split]["shards"])

    fetch = read_json(_need(res.fetch_report, "fetch"))
    archives = {
        k: fetch[k] for k in ("train", "val", "devkit") if isinstance(fetch.get(k), dict) and fetch[k].get("bytes")
    }
    hashed = sum(v["bytes"] for v in archives.values())
    hash_s = sum(v.get("seconds", 0.0) for v in archives.values())
    m["fetch"] = {
        "job": read_benchmark(_need(res.benchmark("fetch"), "fetch")),
        "archive_bytes": hashed,
        "hash_mb_per_s": hashed / 1e6 / hash_s if hash_s > 0 else None,
    }

    m["index"] = {
        split: {
            "job": read_benchmark(_need(res.benchmark("index", split), "index")),
            "bytes": Path(res.index(split)).stat().st_size,
        }
        for split in ("train", "val")
    }
    if "holdout" in splits:  # the job that splits the training index into kept and held-out rows
        m["holdout"] = {
            "job": read_benchmark(_need(res.benchmark("holdout"), "holdout")),
            "bytes": sum(Path(res.index(name)).stat().st_size for name in ("train-kept", "holdout")),
        }

    shards = {}
    for split in splits:
        jobs = []
        for k in range(len(manifest[split]["shards"])):
            report = read_json(_need(res.shard(split, k, ".json"), "resize"))
            job = read_benchmark(_need(res.benchmark("resize", shard_name(split, k)), "resize"))
            stats = Path(res.shard(split, k, ".stats.npz"))
            jobs.append(
                {
                    "images": report["images"],
                    "inputs": report["inputs"],
                    "loop_s": report.get("loop_seconds", report["seconds"]),
                    "first_s": report.get("first_image_seconds", 0.0),
                    "bytes": report["bytes"],
                    "stats_bytes": stats.stat().st_size if stats.exists() else 0,
                    **job,
                }
            )
        shards[split] = jobs
    m["resize"] = shards
    # from the first shard's start to the last one's end, inside the jobs: with the jobs' own wall
    # times it gives Snakemake's scheduling gap per job
    m["resize_elapsed_s"] = manifest["totals"]["wall_seconds"]
    m["resize_manifest"] = {"job": read_benchmark(_need(res.benchmark("resize"), "resize"))}
    m["pca"] = {
        "job": read_benchmark(_need(res.benchmark("pca"), "pca")),
        "bytes": sum(Path(p).stat().st_size for p in (res.pca, res.mean_image, res.pca_plot) if Path(p).is_file()),
    }
    augment = read_json(_need(res.augment, "augment"))
    m["augment"] = {
        "job": read_benchmark(_need(res.benchmark("augment"), "augment")),
        "train_images_per_s": augment.get("train_images_per_s"),
        "threads": augment.get("threads"),
        "device": augment.get("device"),
    }
    m["train"] = measure_train(Path(res.train().dir), read_benchmark(_need(res.benchmark("train"), "train")))
    ev = read_json(_need(res.evaluate().metrics, "evaluate"))
    m["evaluate"] = {
        "job": read_benchmark(_need(res.benchmark("evaluate"), "evaluate")),
        "images": ev["val_images"],
        "images_per_s": ev["eval_images_per_s"],
        "seconds": ev["eval_seconds"],
        "devices": ev.get("devices"),
    }
    return m


def measure_train(train_dir: Path, job: dict) -> dict:
    """Steady training images/s (log windows after the first, which holds start-up and compilation),
    validation images/s (each epoch's time minus its training windows), checkpoint writing per epoch,
    the job's fixed rest (start-up, the first window's warm-up, the model logged to MLflow), and the
    sizes of a checkpoint and a metrics line."""
    folder = TrainFolder(str(train_dir))
    summary = read_json(_need(folder.summary, "train"))
    rows = read_jsonl(_need(folder.metrics, "train"))
    windows = [r for r in rows if "images_per_s" in r and "train_loss" in r]
    epochs = [r for r in rows if "epoch_time_s" in r]
    if not windows or not epochs:
        raise ForecastError(f"{folder.metrics}: no training window or epoch line; rerun the train stage")
    batch = summary["batch_size"]
    prev = [0] + [w["step"] for w in windows[:-1]]
    images = [(w["step"] - p) * batch for w, p in zip(windows, prev)]
    secs = [n / w["images_per_s"] for n, w in zip(images, windows)]
    steady = slice(1, None) if len(windows) > 1 else slice(None)
    rate = sum(images[steady]) / sum(secs[steady])
    val_s = sum(e["epoch_time_s"] - sum(s for s, w in zip(secs, windows) if w["epoch"] == e["epoch"]) for e in epochs)
    save_s = summary.get("checkpoint_time_s", 0.0)
    warm_up = secs[0] - images[0] / rate
    fixed = max(0.0, job["wall_s"] - sum(secs) - val_s - save_s) + max(0.0, warm_up)
    ckpt_dir = train_dir / CHECKPOINTS
    return {
        "job": job,
        "steps": summary["steps"],
        "batch_size": batch,
        "devices": summary.get("devices"),
        "precision": summary.get("precision"),
        "world_size": summary.get("world_size"),
        "images_per_s": rate,
        "steady_windows": len(windows[steady]),
        "first_window_images_per_s": windows[0]["images_per_s"],
        "epochs": len(epochs),
        "val_s_per_epoch": max(val_s, 1e-9) / len(epochs),
        "save_s_per_epoch": save_s / len(epochs),
        "fixed_s": fixed,
        "peak_device_mem_mb": max((e.get("peak_mem_mb") or 0) for e in epochs),
        "checkpoint_bytes": max((p.stat().st_size for p in ckpt_dir.glob("*.pt")), default=0),
        "jsonl_bytes_per_window": Path(folder.metrics).stat().st_size / max(1, len(rows)),
        "log_every": (windows[1]["step"] - windows[0]["step"]) if len(windows) > 1 else windows[0]["step"],
        "num_classes": summary.get("num_classes"),
        "width": summary.get("width"),
    }


# ---------------------------------------------------------------- scaling to the real set


def scheduling_gap(m: dict, cores: int) -> float:
    """Seconds per resize job that the cores sat idle between jobs (Snakemake's scheduling and
    bookkeeping): the resize phase's elapsed time on its cores, minus the jobs' own wall times."""
    jobs = [job for split in m["resize"] for job in m["resize"][split]]
    busy = sum(j["wall_s"] for j in jobs)
    return max(0.0, (m.get("resize_elapsed_s", 0.0) * max(1, min(cores, len(jobs))) - busy) / len(jobs))


def _stage(name: str, seconds: float, peak_mb: float | None, disk_bytes: float, how: str, **extra) -> tuple[str, dict]:
    return name, {
        "seconds": seconds,
        "hours": seconds / 3600,
        "peak_memory_gb": None if peak_mb is None else peak_mb / 1024,
        "disk_gb": disk_bytes / GB,
        "how": how,
        **extra,
    }


def _fit_jobs(jobs: list[dict]) -> tuple[float, float, float]:
    """(fixed seconds per job, seconds per input image, peak MB of a job) of the resize shard jobs:
    the image loop after the first image is per image; the rest of the job's wall time is per job
    (interpreter and imports, the index rows, the statistics file, and the first image, which also
    sets up the decoders: about 4x a later one). A preflight has about 10 images per shard, the real
    set 1,251, so a per-job cost counted per image would be counted 125 times over."""
    first = [j.get("first_s", 0.0) if j["inputs"] > 1 else 0.0 for j in jobs]
    startup = sum(max(0.0, j["wall_s"] - j["loop_s"] + f) for j, f in zip(jobs, first)) / len(jobs)
    per_image = (sum(j["loop_s"] for j in jobs) - sum(first)) / max(
        1, sum(j["inputs"] - (f > 0) for j, f in zip(jobs, first))
    )
    peaks = [j["max_rss_mb"] for j in jobs if j["max_rss_mb"] is not None]
    return startup, per_image, max(peaks) if peaks else None


def _fetch_stage(m: dict, archive_bytes: int) -> tuple[str, dict]:
    f = m["fetch"]
    verify_s = archive_bytes / 1e6 / f["hash_mb_per_s"] if f.get("hash_mb_per_s") else f["job"]["wall_s"]
    return _stage(
        "fetch",
        verify_s + f["job"]["wall_s"],
        f["job"]["max_rss_mb"],
        archive_bytes,
        "MD5 of the archives at the measured rate; the download (its size under disk) "
        "depends on your network and is not included",
        download_gb=archive_bytes / GB,
    )


def _index_stages(m: dict, scale: dict) -> list[tuple[str, dict]]:
    # a job's start-up (interpreter, imports, Snakemake's wrapper), as the resize shard jobs measured it,
    # does not grow with the images; the rest of a one-job stage does
    startup = _fit_jobs(m["resize"]["train"])[0]
    jobs = {f"index {split}": (m["index"][split], scale[f"index {split}"]) for split in ("train", "val")}
    if "holdout" in m:  # reads the whole training index, writes it again as kept and held-out rows
        jobs["holdout"] = (m["holdout"], scale["index train"])
    out = []
    for name, (ix, factor) in jobs.items():
        work = max(0.0, ix["job"]["wall_s"] - startup)
        out.append(
            _stage(
                name,
                startup + work * factor,
                ix["job"]["max_rss_mb"],
                ix["bytes"] * factor,
                f"{startup:.1f} s start-up + the rest x images",
            )
        )
    return out


def _resize_stages(m: dict, n: dict, cores: int) -> list[tuple[str, dict]]:
    gap = scheduling_gap(m, cores)
    out = []
    for split, jobs in m["resize"].items():
        startup, per_image, job_mb = _fit_jobs(jobs)
        count = len(jobs)
        job_s = startup + per_image * n[split] / count
        wall = count * (job_s + gap) / max(1, min(cores, count))
        shard_bytes = sum(j["bytes"] for j in jobs) / max(1, sum(j["images"] for j in jobs)) * n[split]
        stats_bytes = sum(j["stats_bytes"] for j in jobs)
        peak = None if job_mb is None else job_mb * min(cores, count)
        out.append(
            _stage(
                f"resize {split}",
                wall,
                peak,
                shard_bytes + stats_bytes,
                f"{count} jobs on {min(cores, count)} cores: {startup:.2f} s per job + "
                f"{per_image * 1000:.2f} ms per image, {gap:.2f} s scheduling per job",
                jobs=count,
                job_seconds=job_s,
                startup_s_per_job=startup,
                scheduling_s_per_job=gap,
                seconds_per_image=per_image,
                startup_share=startup / job_s if job_s else 0.0,
            )
        )
    return out


def _fixed_stages(m: dict) -> list[tuple[str, dict]]:
    out = []
    for key, name in (("resize_manifest", "resize manifest"), ("pca", "pca"), ("augment", "augment")):
        job = m[key]["job"]
        out.append(
            _stage(name, job["wall_s"], job["max_rss_mb"], m[key].get("bytes", 0), "fixed per shard count: as measured")
        )
    return out


def _train_stage(m: dict, train_images: int, val_images: int, epochs: int, steps_per_epoch: int) -> tuple[str, dict]:
    t = m["train"]
    per_epoch = math.floor(train_images / t["batch_size"])
    steps = (min(per_epoch, steps_per_epoch) if steps_per_epoch else per_epoch) * epochs
    train_s = steps * t["batch_size"] / t["images_per_s"]
    val_rate = m["val_images"] / t["val_s_per_epoch"]
    val_s = epochs * (val_images / val_rate + t["save_s_per_epoch"]) + t["fixed_s"]
    lines = steps / t["log_every"] + epochs
    # last.pt, the best epoch's file (best.pt is a hard link), and one replaced run kept in previous/
    train_disk = 4 * t["checkpoint_bytes"] + lines * t["jsonl_bytes_per_window"]
    return _stage(
        "train",
        train_s + val_s,
        t["job"]["max_rss_mb"],
        train_disk,
        f"{steps} steps at {t['images_per_s']:.1f} images/s (steady) + per epoch a validation "
        f"pass at {val_rate:.1f} images/s and {t['save_s_per_epoch']:.1f} s of checkpoint + "
        f"{t['fixed_s']:.0f} s start-up",
        steps=steps,
        images_per_s=t["images_per_s"],
        validation_images_per_s=val_rate,
        peak_device_memory_gb=t["peak_device_mem_mb"] / 1024,
    )


def _evaluate_stage(m: dict, val_images: int, eval_images: int | None) -> tuple[str, dict]:
    e = m["evaluate"]
    fixed = max(0.0, e["job"]["wall_s"] - e["images"] / e["images_per_s"])
    scored = val_images if eval_images is None else min(val_images, eval_images)
    return _stage(
        "evaluate",
        fixed + scored / e["images_per_s"],
        e["job"]["max_rss_mb"],
        0,
        f"ten-crop at {e['images_per_s']:.1f} images/s + {fixed:.0f} s start-up",
    )


def _input_bound(m: dict) -> dict:
    input_rate, train_rate = m["augment"]["train_images_per_s"], m["train"]["images_per_s"]
    return {
        "dali_images_per_s": input_rate,
        "dali_threads": m["augment"]["threads"],
        "train_images_per_s": train_rate,
        "verdict": (
            "input-bound: the DALI pipeline delivers fewer images/s than the training consumes; "
            "give the train job more cores (resource dali_threads)"
        )
        if input_rate and input_rate < train_rate
        else "compute-bound: the DALI pipeline delivers more images/s than the training consumes",
    }


def forecast(
    m: dict,
    train_images: int = IMAGENET["train_images"],
    val_images: int = IMAGENET["val_images"],
    epochs: int = IMAGENET["epochs"],
    cores: int = 1,
    archive_bytes: int | None = None,
    steps_per_epoch: int = 0,
    eval_images: int | None = None,
    classes: int = IMAGENET["classes"],
) -> dict:
    """Per-stage time, peak memory and disk for `train_images` + `val_images` images over
    `epochs` epochs, from the measurements `m` (see `measure`), on `cores` cores.

    steps_per_epoch and eval_images cap the training and the evaluation as a preflight
    does, so that one preflight can forecast another (bench/forecast_accuracy.py). With a held-out
    slice, the preflight's held-out images per class are held out of the `classes` classes of the
    real set, and the training shards take the rest of `train_images`."""
    held_out = m.get("holdout_images", 0)
    n = {"train": train_images, "val": val_images}
    if held_out:
        n["holdout"] = round(held_out / max(1, m["classes"] or 1) * classes)
        n["train"] = train_images - n["holdout"]
    scale = {s: n[s] / max(1, m[f"{s}_images"]) for s in n}
    # the index reads every training image, held-out ones included
    scale["index train"] = train_images / max(1, m["train_images"] + held_out)
    scale["index val"] = scale["val"]
    archive_bytes = sum(IMAGENET["archive_bytes"].values()) if archive_bytes is None else archive_bytes
    stages = dict(
        [
            _fetch_stage(m, archive_bytes),
            *_index_stages(m, scale),
            *_resize_stages(m, n, cores),
            *_fixed_stages(m),
            _train_stage(m, n["train"], val_images, epochs, steps_per_epoch),
            _evaluate_stage(m, val_images, eval_images),
        ]
    )
    total_s = sum(s["seconds"] for s in stages.values())
    t = m["train"]
    return {
        "target": {
            "train_images": train_images,
            "val_images": val_images,
            "epochs": epochs,
            "archive_gb": archive_bytes / GB,
        },
        "assumed": {
            "cores": cores,
            "train_devices": t["devices"],
            "precision": t["precision"],
            "replicas": t["world_size"],
            "width": t["width"],
        },
        "stages": stages,
        "total": {
            "seconds": total_s,
            "hours": total_s / 3600,
            "days": total_s / 86400,
            "disk_gb": sum(s["disk_gb"] for s in stages.values()),
            "peak_memory_gb": max(
                (s["peak_memory_gb"] for s in stages.values() if s["peak_memory_gb"] is not None), default=None
            ),
        },
        "input_bound": _input_bound(m),
    }


# ---------------------------------------------------------------- reporting


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _gb(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1f} GB"


def table(fc: dict) -> str:
    """forecast.md: the total first (the MLflow UI shows a markdown file in a box of fixed height),
    then one short row per stage, then how each stage was scaled."""
    tg, a, t = fc["target"], fc["assumed"], fc["total"]
    devices = ", ".join(map(str, a["train_devices"] or []))
    lines = [
        "# Forecast of the real run on this machine",
        "",
        f"**{_duration(t['seconds'])} in all, {t['disk_gb']:.0f} GB of disk, {_gb(t['peak_memory_gb'])} of memory "
        f"at most**, for {tg['train_images']:,} training + {tg['val_images']:,} validation images and "
        f"{tg['epochs']} epochs, with {a['cores']} jobs at once and training on {devices} "
        f"({a['precision']}, {a['replicas']} replica(s), width {a['width']}).",
        "",
        f"Input pipeline: {fc['input_bound']['verdict']} ({fc['input_bound']['dali_images_per_s']:.0f} against "
        f"{fc['input_bound']['train_images_per_s']:.0f} images/s, {fc['input_bound']['dali_threads']} DALI threads).",
        "",
        "| stage | time | peak memory | disk |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s in fc["stages"].items():
        lines.append(f"| {name} | {_duration(s['seconds'])} | {_gb(s['peak_memory_gb'])} | {s['disk_gb']:.1f} GB |")
    lines += [
        f"| **total** | **{_duration(t['seconds'])}** | {_gb(t['peak_memory_gb'])} | {t['disk_gb']:.1f} GB |",
        "",
        "How each stage was scaled (stages run one after another; memory is the stage's peak):",
        "",
    ]
    lines += [f"- {name}: {s['how']}" for name, s in fc["stages"].items()]
    if fc.get("rehearsal"):
        lines += ["", "What the preflight changed from the ImageNet preset: " + "; ".join(fc["rehearsal"]) + "."]
    if fc.get("trainability"):
        lines += ["", *trainability_section(fc["trainability"])]
    return "\n".join(lines) + "\n"


def flat_metrics(fc: dict) -> dict[str, float]:
    """The headline figures under names that read well in MLflow's parent run (forecast.<stage>.hours)."""
    out = {
        f"forecast.{name.replace(' ', '_')}.{key}": s[key]
        for name, s in fc["stages"].items()
        for key in ("hours", "peak_memory_gb", "disk_gb")
        if s[key] is not None
    }
    out.update(
        {
            f"forecast.total.{key}": fc["total"][key]
            for key in ("hours", "days", "disk_gb", "peak_memory_gb")
            if fc["total"][key] is not None
        }
    )
    out["forecast.train.images_per_s"] = fc["stages"]["train"]["images_per_s"]
    return out


def write_forecast(
    results,
    out_dir,
    cores: int,
    train_images: int,
    val_images: int,
    epochs: int,
    rehearsal: list[str] = (),
    trainability: str | None = None,
) -> dict:
    """The stage: measure the preflight in `results`, forecast the real run, write forecast.json and .md;
    with `trainability` (pipeline/trainability.py's trainability.json), whether the run will learn."""
    m = measure(results)
    fc = forecast(m, train_images, val_images, epochs, cores)
    fc["measured_on"] = {k: m[k] for k in ("train_images", "val_images", "train_shards", "val_shards")}
    fc["rehearsal"] = list(rehearsal)
    if trainability:
        fc["trainability"] = read_json(_need(Path(trainability), "trainability"))
    out = Path(out_dir)
    text = table(fc)
    write_text(out / "forecast.md", text)
    write_json(out / "metrics.json", flat_metrics(fc))
    write_json(out / "forecast.json", fc)  # last: its presence marks a finished forecast
    print(text, file=sys.stderr)
    return fc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.forecast",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--results", required=True, help="the preflight's results folder (paths.results)")
    p.add_argument("--out-dir", required=True, help="where forecast.json and forecast.md go")
    p.add_argument("--cores", type=int, required=True, help="cores the real run will have (snakemake --cores)")
    p.add_argument("--train-images", type=int, default=IMAGENET["train_images"])
    p.add_argument("--val-images", type=int, default=IMAGENET["val_images"])
    p.add_argument("--epochs", type=int, default=IMAGENET["epochs"])
    p.add_argument("--rehearsal", action="append", default=[], help="a change the preflight made (repeatable)")
    p.add_argument("--trainability", help="the trainability stage's trainability.json: whether the run will learn")
    a = p.parse_args(argv)
    return run_cli(
        write_forecast,
        a.results,
        a.out_dir,
        a.cores,
        a.train_images,
        a.val_images,
        a.epochs,
        a.rehearsal,
        a.trainability,
    )


if __name__ == "__main__":
    sys.exit(main())
