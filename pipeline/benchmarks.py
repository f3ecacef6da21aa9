"""Snakemake's per-job benchmark files (`benchmark:` in workflow/rules/*.smk), read by the
stages that report on the workflow itself (pipeline/forecast.py, pipeline/resources.py).

Header: s h:m:s max_rss max_vms max_uss max_pss io_in io_out mean_load cpu_time (seconds, MB);
NA where Snakemake could not sample a job that short.
"""

from __future__ import annotations

import csv
import os

from pipeline.errors import PipelineError


class BenchmarkError(PipelineError, ValueError):
    """A benchmark file that cannot be read."""


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # NA: a job too short to sample
        return None


def read_benchmark(path: str | os.PathLike, remedy: str) -> dict:
    """One job's figures, from the last repeat: wall, CPU seconds, peak RSS, MB read and written.
    `remedy` ends the error message: what the caller's user should do."""
    try:
        with open(path, newline="") as f:
            row = list(csv.DictReader(f, delimiter="\t"))[-1]
        return {
            "wall_s": float(row["s"]),
            "cpu_s": _number(row.get("cpu_time")),
            "max_rss_mb": _number(row.get("max_rss")),
            "read_mb": _number(row.get("io_in")),
            "written_mb": _number(row.get("io_out")),
        }
    except (OSError, IndexError, KeyError, ValueError) as exc:
        raise BenchmarkError(f"{path}: not a Snakemake benchmark file ({exc}); {remedy}") from exc
