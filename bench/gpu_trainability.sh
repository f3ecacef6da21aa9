#!/usr/bin/env bash
# Full-width trainability on a GPU: the ImageNet preset's training settings
# (width 1.0, init paper, the paper's dropout, decay on weights, no warm-up,
# batch 128, lr 0.01, patience 5) on the 100-class generated set
# (bench/configs/hard100.yaml's sizes, made by the stage commands of
# bench/gpu_stages.sh), 65 epochs x 31 steps = 2,015 SGD steps. The curve,
# the metrics with the per-layer health figures and train.json go to $OUT.
#   OUT=gpu-results bash bench/gpu_trainability.sh      (part of bench/gpu_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${OUT:-gpu-results}" && cd "${OUT:-gpu-results}" && pwd)
WORK=${WORK:-/tmp/hard100}
EPOCHS=${EPOCHS:-65}
CLASSES=100 TRAIN_PER_CLASS=40 VAL_PER_CLASS=10 ONLY_DATA=1 WORK="$WORK" bash bench/gpu_stages.sh || exit 1
R=$WORK/results
python3 -m pipeline.train --manifest "$R/shards/manifest.json" --pca "$R/pca/pca.json" \
    --mean-image "$R/pca/mean_image.npy" --classes "$R/fetch/classes.tsv" --out-dir "$WORK/train" --fresh \
    --devices "${DEVICES:-auto}" --width 1.0 --init paper --dropout-style paper --decay weights --warmup-steps 0 \
    --batch-size 128 --lr 0.01 --momentum 0.9 --weight-decay 0.0005 --patience 5 --epochs "$EPOCHS" \
    --log-every 10 --seed 0 --dali-threads 8
rc=$?
for f in curve.png metrics.jsonl train.json; do cp "$WORK/train/$f" "$OUT/trainability-$f" 2>/dev/null; done
python3 bench/trainability_table.py "$WORK/train/metrics.jsonl"
exit $rc
