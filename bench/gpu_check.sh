#!/usr/bin/env bash
# Every GPU benchmark of the project in one call, for a GPU host that has
# torch, numpy and pillow but neither Snakemake nor MLflow. DALI comes as
# wheels (pack them with a pip download of nvidia-dali-cuda130==2.4.0 and its
# nvimgcodec/nvjpeg/nvcomp/nvtiff dependencies for the host's Python) in
# DALI_WHEELS, installed into a private site folder. Figures go to $OUT
# (default ./gpu-results) as JSON, and the tables to stdout.
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
run() { echo "== $*"; timeout 900 "$@" || { echo "FAILED ($?): $*"; status=1; }; }
run python3 bench/model_speed.py --device cuda --iters 30 --compile --json "$OUT/model.json"
run python3 bench/augment_speed.py --make-shards 16384 --device cuda:0 --batch 256 --threads 8 \
    --batches 50 --no-torch --json "$OUT/augment.json"
run python3 bench/train_speed.py --device cuda:0 --widths 1.0 --batch 128 --steps 200 --input synthetic dali \
    --json "$OUT/train.json"
run python3 bench/eval_speed.py --images 4096 --widths 1.0 --device cuda:0 --batch 128 --threads 8 \
    --json "$OUT/eval.json"
exit $status
