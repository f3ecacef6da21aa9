#!/usr/bin/env bash
# The paper's ablations on the demo (docs/ablations.md): the sweep preset on top of the demo
# default, in a folder of its own; then the comparison and every job's cost copied to
# bench/ablations_demo/. Run from the repository root:  bash bench/ablations_demo.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/alexnet-ablations-demo}"
mkdir -p "$work"
start=$(date +%s)
snakemake -s Snakefile -d "$work" --cores all --configfile workflow/presets/ablations.yaml
echo "sweep wall time: $(( $(date +%s) - start )) s" | tee "$work/wall.txt"
out=bench/ablations_demo
mkdir -p "$out"
cp "$work"/results/ablations/comparison.{md,json,png} "$work/wall.txt" "$out/"
python -m pipeline.resources --benchmarks "$work/results/benchmarks" --out-dir "$out/resources"
