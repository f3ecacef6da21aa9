"""What each job of the workflow used: Snakemake's benchmark files, gathered per rule.

    python -m pipeline.resources --benchmarks results/benchmarks --out-dir results/resources

Every rule writes a benchmark file per job (`benchmark:` in workflow/rules/*.smk:
wall time, CPU time, peak memory, bytes read and written). This stage reads
them all and writes, per rule: jobs, total and longest wall time, CPU time,
largest peak memory (RSS), data read and written; as resources.json,
resources.md (in `snakemake --report` and the MLflow parent run) and
metrics.json (resources.<rule>.<figure>, logged on the parent run).

A file names its rule by where it lies: benchmarks/<rule>.tsv, or
benchmarks/<rule>/<job>.tsv; the resize stage's shard jobs lie in
benchmarks/resize/train-NNNNN.tsv, val-NNNNN.tsv and holdout-NNNNN.tsv (rule
resize_train_shard for the first, resize_shard for the others: pipeline/layout.py shard_rule). Each file holds the latest run of
its job, so after a partial rerun the table mixes this invocation's jobs and
earlier ones: it describes the results as they stand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.benchmarks import BenchmarkError, read_benchmark
from pipeline.errors import PipelineError, run_cli
from pipeline.io import write_json, write_text
from pipeline.layout import shard_rule

FIGURES = ("jobs", "total_s", "max_s", "cpu_s", "max_rss_mb", "read_mb", "written_mb")


class ResourcesError(PipelineError, ValueError):
    """Benchmark files that cannot be read."""


def rule_of(relative: Path) -> str:
    if len(relative.parts) == 1:
        return relative.stem
    folder = relative.parts[0]
    if folder == "resize":  # the two shard rules share the stage's folder
        return shard_rule(relative.stem.split("-")[0])
    return folder


def read_job(path: Path) -> dict:
    """One job's figures (the last repeat of its benchmark file)."""
    try:
        return read_benchmark(path, "delete it and rerun its rule")
    except BenchmarkError as exc:
        raise ResourcesError(str(exc)) from exc


def _total(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _peak(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def gather(benchmarks: Path) -> dict[str, dict]:
    """{rule: figures}, the rules in the order of their total time, longest first."""
    jobs: dict[str, list[dict]] = {}
    for path in sorted(benchmarks.rglob("*.tsv")):
        jobs.setdefault(rule_of(path.relative_to(benchmarks)), []).append(read_job(path))
    if not jobs:
        raise ResourcesError(f"no benchmark files under {benchmarks}; run the workflow first")
    table = {}
    for rule, runs in jobs.items():
        table[rule] = {
            "jobs": len(runs),
            "total_s": sum(j["wall_s"] for j in runs),
            "max_s": max(j["wall_s"] for j in runs),
            "cpu_s": _total(j["cpu_s"] for j in runs),
            "max_rss_mb": _peak(j["max_rss_mb"] for j in runs),
            "read_mb": _total(j["read_mb"] for j in runs),
            "written_mb": _total(j["written_mb"] for j in runs),
        }
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["total_s"]))


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(table: dict[str, dict]) -> str:
    total = sum(r["total_s"] for r in table.values())
    lines = [
        "# Resources per rule",
        "",
        "From the benchmark file of every job (Snakemake `benchmark:`), the latest run of each. "
        "Time is wall time; memory is the largest peak resident set of one job (n/a: too short to sample).",
        "",
        "| rule | jobs | total time | longest job | CPU time | peak memory | read | written |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule, r in table.items():
        lines.append(
            f"| {rule} | {r['jobs']} | {r['total_s']:.1f} s | {r['max_s']:.1f} s | "
            f"{_cell(r['cpu_s'], '.1f')} s | {_cell(r['max_rss_mb'], ',.0f')} MB | "
            f"{_cell(r['read_mb'], ',.1f')} MB | {_cell(r['written_mb'], ',.1f')} MB |"
        )
    lines.append(f"| all | {sum(r['jobs'] for r in table.values())} | {total:.1f} s | | | | | |")
    return "\n".join(lines) + "\n"


def resources(benchmarks, out_dir) -> dict:
    benchmarks, out_dir = Path(benchmarks), Path(out_dir)
    table = gather(benchmarks)
    write_json(out_dir / "resources.json", table)
    write_text(out_dir / "resources.md", markdown(table))
    metrics = {"resources": {rule: {k: v for k, v in r.items() if v is not None} for rule, r in table.items()}}
    write_json(out_dir / "metrics.json", metrics)  # last: its presence means the stage finished
    print(markdown(table), file=sys.stderr)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.resources", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks", required=True, help="results/benchmarks")
    p.add_argument("--out-dir", required=True, help="results/resources")
    a = p.parse_args(argv)
    return run_cli(resources, a.benchmarks, a.out_dir)


if __name__ == "__main__":
    sys.exit(main())
