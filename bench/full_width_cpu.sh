#!/usr/bin/env bash
# Full-width trainability on the CPU: the ImageNet preset's training settings
# (workflow/presets/imagenet.yaml) at width 1.0 on the 100-class generated set
# (bench/configs/hard100.yaml), for as many epochs as EPOCHS says.
#   bash bench/full_width_cpu.sh [WORK=/tmp/hard100] [EPOCHS=5]
# About 3 minutes per epoch (31 steps of 128 images) on 2 cores. Results:
# WORK/train/{metrics.jsonl,curve.png,train.json}; bench/RESULTS-train.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/hard100}
EPOCHS=${EPOCHS:-5}
mkdir -p "$WORK"
python -m snakemake --cores all -s Snakefile -d "$WORK" --configfile config.yaml bench/configs/hard100.yaml \
    -- results/pca/pca.json results/fetch/classes.tsv results/shards/manifest.json
R="$WORK/results"
preset() { python -c "import yaml,sys; print(yaml.safe_load(open('workflow/presets/imagenet.yaml'))['train'].get('$1', '$2'))"; }
python -m pipeline.train --manifest "$R/shards/manifest.json" --pca "$R/pca/pca.json" \
    --mean-image "$R/pca/mean_image.npy" --classes "$R/fetch/classes.tsv" --out-dir "$WORK/train" --fresh \
    --devices cpu --width 1.0 --init "$(preset init paper)" --dropout-style "$(preset dropout_style paper)" \
    --decay "$(preset decay weights)" --warmup-steps "$(preset warmup_steps 0)" --patience "$(preset patience 5)" \
    --batch-size 128 --lr 0.01 --momentum 0.9 --weight-decay 0.0005 --epochs "$EPOCHS" --log-every 5 \
    --seed 0 --dali-threads 2
