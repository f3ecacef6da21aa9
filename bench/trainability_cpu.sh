#!/usr/bin/env bash
# Does the chain learn at 1000 classes? The train stage on the preflight's generated
# 1000-class data (40 + 4 images per class, through the preset's own stages: demo,
# fetch, index, resize into 1024 + 64 shards, PCA, DALI loaders), with the ImageNet
# preset's recipe (paper dropout, decay on weights, no warm-up, batch 128, lr 0.01),
# one run per init. Figures: bench/RESULTS-trainability.md; curves and metrics:
# bench/trainability_cpu/<run>/. About 3 minutes per 400 narrow steps on 2 idle cores,
# 30 minutes per 400 full-width ones.
#   bash bench/trainability_cpu.sh [WORK_DIR]          (default bench/work/trainability)
#   RUNS="ccn2_w paper_w" bash bench/trainability_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${1:-bench/work/trainability}
RUNS=${RUNS:-paper_w ccn2_w caffe_w paper_w_b2 ccn2_w_b1 full_ccn2}
mkdir -p "$WORK"
if [ ! -f "$WORK/results/preflight/pca/pca.json" ]; then
    printf 'demo: {train_per_class: 40, val_per_class: 4}\ntracking: {enabled: false}\n' > "$WORK/overlay.yaml"
    snakemake -s "$REPO/Snakefile" -d "$WORK" --cores "$(nproc)" \
        --configfile "$REPO/workflow/presets/imagenet.yaml" "$REPO/workflow/presets/preflight.yaml" \
        "$WORK/overlay.yaml" -- results/preflight/pca/pca.json
fi
R=$WORK/results/preflight
NARROW="--width 0.25 --init-gain width"  # a quarter of the channels, each init keeping the full net's gain
declare -A FLAGS=(
    [paper_w]="$NARROW --init paper --bias-lr-factor 1 --epochs 2 --steps-per-epoch 200"
    [ccn2_w]="$NARROW --init cuda_convnet2 --bias-lr-factor 2 --epochs 2 --steps-per-epoch 200"
    [caffe_w]="$NARROW --init caffe --bias-lr-factor 2 --epochs 2 --steps-per-epoch 200"
    [paper_w_b2]="$NARROW --init paper --bias-lr-factor 2 --epochs 1 --steps-per-epoch 300"
    [ccn2_w_b1]="$NARROW --init cuda_convnet2 --bias-lr-factor 1 --epochs 1 --steps-per-epoch 300"
    [full_ccn2]="--width 1.0 --init cuda_convnet2 --bias-lr-factor 2 --epochs 2 --steps-per-epoch 200"
)
for run in $RUNS; do
    out=$WORK/runs/$run
    # shellcheck disable=SC2086
    python -m pipeline.train --manifest $R/shards/manifest.json --pca $R/pca/pca.json \
        --mean-image $R/pca/mean_image.npy --classes $R/fetch/classes.tsv --out-dir "$out" --fresh --devices cpu \
        --dropout-style paper --decay weights --warmup-steps 0 --batch-size 128 --lr 0.01 --momentum 0.9 \
        --weight-decay 0.0005 --patience 5 --log-every 20 --seed 0 --torch-threads "$(nproc)" --dali-threads 2 \
        --flat-after 100000 ${FLAGS[$run]} 2> "$out.log" || true  # a run that stalls is a finding too
    mkdir -p "bench/trainability_cpu/$run"
    cp "$out/metrics.jsonl" "$out/curve.png" "bench/trainability_cpu/$run/" 2>/dev/null || true
    cp "$out/train.json" "bench/trainability_cpu/$run/" 2>/dev/null || true
done
python bench/trainability_plot.py bench/trainability_cpu --png bench/trainability_cpu/curves.png
