"""Run a command and write a Snakemake-format benchmark file for it, for hosts without Snakemake.

    python3 bench/timed.py results/benchmarks/pca.tsv -- python3 -m pipeline.pca ...

Writes the columns pipeline/forecast.py reads (s, h:m:s, max_rss in MB,
cpu_time) in Snakemake's benchmark table layout, the others as NA, so
bench/gpu_preflight.sh can forecast from a run of the stage commands alone.
Peak memory is the largest child's (getrusage), as close to Snakemake's
sampled max_rss as a host without psutil can get. Exits with the command's status.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: timed.py OUT.tsv -- COMMAND ...")
    out, command = Path(argv[0]), argv[2:]
    t0 = time.perf_counter()
    rc = subprocess.call(command)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        hms = time.strftime("%H:%M:%S", time.gmtime(wall))
        row = [
            f"{wall:.4f}",
            hms,
            f"{usage.ru_maxrss / 1024:.2f}",
            "NA",
            "NA",
            "NA",
            "NA",
            "NA",
            "NA",
            f"{usage.ru_utime + usage.ru_stime:.2f}",
        ]
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(HEADER + "\t".join(row) + "\n")
        os.replace(tmp, out)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
