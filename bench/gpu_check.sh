#!/usr/bin/env bash
# Every GPU check of the project in one call, the most wanted first, within a
# time budget, for a GPU host that has torch, numpy and pillow but neither
# Snakemake nor MLflow. DALI comes as wheels in DALI_WHEELS (bench/gpu_env.sh).
# Figures go to $OUT (default ./gpu-results) as JSON and logs; each step's
# table is printed as it finishes, so a cut-off call still reports the steps
# before it.
#   DALI_WHEELS=/tmp BUDGET=540 bash bench/gpu_check.sh
# Order: the preflight at ImageNet's shape (bench/gpu_preflight.sh: 1000
# classes, 40 + 4 images per class, 1024 + 64 shards, width 1.0, bf16, DALI on
# the GPU), which first trains the candidate inits (paper, cuda_convnet2) for
# 2,500 steps each (the trainability verdict: which init leaves ln(1000); curves,
# per-layer health figures and trainability.json copied to $OUT), then forecasts
# the real run on this GPU; training end to end (the 15,000
# images/s target), the stages on the GPU (bench/gpu_stages.sh), whether
# DALI's thread count changes the GPU loaders' batches (bench/dali_threads.py), the DALI
# pipelines, evaluation, the model layouts with torch.compile. A step is skipped when less than 30 s of the budget is
# left, and cut at what is left.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
step() {  # step NAME SECONDS COMMAND...: run with at most SECONDS (or what the budget has left)
    local name=$1 limit=$2 left rc; shift 2
    left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo "== $name: SKIPPED (budget of $BUDGET s spent)"; status=1; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    grep -E '^(\||==|train_over|ten-crop|target|[A-Za-z].*(met|images/s))' "$OUT/$name.log" | tail -40
    if [ "$rc" -ne 0 ]; then tail -15 "$OUT/$name.log"; echo "== $name: FAILED ($rc)"; status=1; fi
    echo "== $name: $rc after $SECONDS s in all"
}
step preflight 420 env OUT="$OUT" bash bench/gpu_preflight.sh
step train 150 python3 bench/train_speed.py --device cuda:0 --widths 1.0 --batch 128 --steps 200 --log-every 40 \
    --input synthetic dali --precision bf16 fp32 --dali-threads 8 --input-wait sync nosync --json "$OUT/train.json"
step stages 240 env WORK=/tmp/gpu-stages bash bench/gpu_stages.sh
step threads 60 python3 bench/dali_threads.py --results /tmp/gpu-stages/results --device cuda:0 --dali-threads 2 8
step augment 120 python3 bench/augment_speed.py --make-shards 16384 --device cuda:0 --batch 256 --dali-threads 8 \
    --batches 50 --no-torch --json "$OUT/augment.json"
step eval 90 python3 bench/eval_speed.py --images 4096 --widths 1.0 --device cuda:0 --batch 128 --dali-threads 8 \
    --json "$OUT/eval.json"
step model 240 python3 bench/model_speed.py --device cuda --iters 30 --compile --json "$OUT/model.json"
step train_compile 150 python3 bench/train_speed.py --device cuda:0 --widths 1.0 --batch 128 --steps 200 \
    --log-every 40 --input synthetic dali --precision bf16 --compile --dali-threads 8 --json "$OUT/train_compile.json"
step monitor 60 python3 bench/monitor_cost.py --device cuda --bf16 --steps 30
exit $status
