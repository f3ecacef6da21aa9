#!/usr/bin/env bash
# The preflight at two sizes on this machine, each in its own folder, then how
# well the small one forecasts the big one (bench/forecast_accuracy.py), and
# the per-stage costs of both (bench/RESULTS-scale.md holds the figures).
#   bash bench/preflight_scale.sh [SMALL_PER_CLASS [BIG_PER_CLASS [WORK_DIR]]]
# Defaults: 10 and 40 training images per class (1 and 4 validation images),
# in bench/work/ (ignored by git). Each run is the README's preflight command
# with only demo.train_per_class / demo.val_per_class changed.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${1:-10}
BIG=${2:-40}
WORK=${3:-bench/work}
CORES=${CORES:-$(nproc)}
REPO=$(pwd)
mkdir -p "$WORK"

run() {  # per_class val_per_class folder
    local dir="$WORK/$3"
    mkdir -p "$dir"
    local t0=$(date +%s.%N)
    snakemake -s "$REPO/Snakefile" -d "$dir" --cores "$CORES" \
        --configfile "$REPO/workflow/presets/imagenet.yaml" "$REPO/workflow/presets/preflight.yaml" \
        --config "demo={\"train_per_class\": $1, \"val_per_class\": $2}" > "$dir/snakemake.log" 2>&1
    local t1=$(date +%s.%N)
    python - "$t0" "$t1" > "$dir/wall_s" <<'PY'
import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")
PY
    echo "preflight $1+$2 per class: $(cat "$dir/wall_s") s, $(grep -c 'Finished jobid' "$dir/snakemake.log") jobs" >&2
}

run "$SMALL" 1 "pf$SMALL"
run "$BIG" 4 "pf$BIG"
python bench/forecast_accuracy.py "$WORK/pf$SMALL/results/preflight" "$WORK/pf$BIG/results/preflight" \
    --cores "$CORES" --wall-s "$(cat "$WORK/pf$BIG/wall_s")"
for n in "$SMALL" "$BIG"; do
    echo; echo "## preflight, $n per class: forecast of the real run"; echo
    cat "$WORK/pf$n/results/preflight/forecast/forecast.md"
done
