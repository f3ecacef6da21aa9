#!/usr/bin/env bash
# The preflight (workflow/presets/preflight.yaml) on a host without Snakemake
# or MLflow, e.g. a GPU machine: the same stage commands the rules run, the
# same settings (1000 classes, ImageNet's size mix, 1024 + 64 shards, width
# 1.0, the paper's recipe, bf16 and DALI's GPU path where a GPU is present),
# every command timed into a Snakemake-format benchmark file (bench/timed.py)
# so pipeline/forecast.py forecasts the real run from it. On a GPU it trains
# longer than the preset's 12 steps (EPOCHS x up to STEPS steps) for a steady
# images/s, and first trains each init of TRAINABILITY for TRAINABILITY_STEPS
# (the preflight's trainability stage: which init leaves ln(1000); forecast.md says).
#   OUT=gpu-results bash bench/gpu_preflight.sh                 (part of bench/gpu_check.sh)
#   CPU=1 WIDTH=0.0625 TRAIN_PER_CLASS=2 TRAIN_SHARDS=8 VAL_SHARDS=2 STEPS=3 EPOCHS=1 BATCH=16 \
#       TRAINABILITY_STEPS=4 bash bench/gpu_preflight.sh        (a check of the script on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=$(mkdir -p "${OUT:-gpu-results}" && cd "${OUT:-gpu-results}" && pwd)
WORK=${WORK:-/tmp/preflight}
CPU=${CPU:-0}
CORES=${CORES:-$(nproc)}
WIDTH=${WIDTH:-1.0}
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-40}  # 40 + 4 per class: the trainability runs' data (312 steps an epoch)
VAL_PER_CLASS=${VAL_PER_CLASS:-4}
TRAIN_SHARDS=${TRAIN_SHARDS:-1024}
VAL_SHARDS=${VAL_SHARDS:-64}
EPOCHS=${EPOCHS:-2}          # the preset's training for its speed: 2 x 150 steps (the loss is the trainability's)
STEPS=${STEPS:-150}          # 0: every batch of an epoch
TRAINABILITY=${TRAINABILITY:-paper cuda_convnet2}  # inits trained TRAINABILITY_STEPS each (pipeline/trainability.py)
TRAINABILITY_STEPS=${TRAINABILITY_STEPS:-2500}
BATCH=${BATCH:-128}
LOG_EVERY=${LOG_EVERY:-20}
EVAL_IMAGES=${EVAL_IMAGES:-0}  # 0: the whole generated validation set
DALI=$(( CORES / 2 < 2 ? 2 : (CORES / 2 > 8 ? 8 : CORES / 2) ))
source bench/gpu_env.sh
if [ "$CPU" != 1 ]; then python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device (CPU=1 runs it on the CPU)')"; fi
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
R=results/preflight
B=$R/benchmarks
D=data/preflight
t_all=$SECONDS
timed() {  # timed NAME COMMAND...: one job, its benchmark file, its log
    local name=$1; shift
    local t0=$SECONDS
    mkdir -p "$(dirname "$B/$name.tsv")" "$(dirname "$R/logs/$name.log")"
    python3 "$REPO/bench/timed.py" "$B/$name.tsv" -- "$@" > "$R/logs/$name.log" 2>&1 \
        || { tail -30 "$R/logs/$name.log"; echo "== $name FAILED"; exit 1; }
    echo "== $name: $((SECONDS - t0)) s"
}
timed demo python3 -m pipeline.demo --out-dir $D --seed 0 --classes 1000 --train-per-class "$TRAIN_PER_CLASS" \
    --val-per-class "$VAL_PER_CLASS" --large-fraction 0.03 --sizes imagenet --workers "$CORES"
timed fetch python3 -m pipeline.fetch --source archives --train $D/ILSVRC2012_img_train.tar --train-md5 $D/MD5SUMS \
    --val $D/ILSVRC2012_img_val.tar --val-md5 $D/MD5SUMS --devkit $D/ILSVRC2012_devkit_t12.tar.gz \
    --devkit-md5 $D/MD5SUMS --out-dir $R/fetch
for split in train val; do
    timed index/$split python3 -m pipeline.resize index --split $split --source $R/fetch/ILSVRC2012_img_$split.tar \
        --classes $R/fetch/classes.tsv --val-labels $R/fetch/val_labels.tsv --out $R/index/$split.tsv
done
shards() {  # shards SPLIT N [--stats]: one timed job per shard, CORES at once, as Snakemake runs them
    local split=$1 n=$2 t0=$SECONDS; shift 2
    mkdir -p $B/resize $R/logs/resize
    seq 0 $((n - 1)) | xargs -P "$CORES" -I{} sh -c "k=\$(printf %05d {}); python3 '$REPO/bench/timed.py' \
        $B/resize/$split-\$k.tsv -- python3 -m pipeline.resize shard --split $split --index $R/index/$split.tsv \
        --source $R/fetch/ILSVRC2012_img_$split.tar --shard {} --shards $n --seed 0 --jpeg-quality 90 \
        --max-reject-fraction 0.001 $* --out $R/shards/$split/$split-\$k.tar > $R/logs/resize/$split-\$k.log 2>&1" \
        || { echo "== resize $split FAILED"; exit 1; }
    echo "== resize $split ($n jobs on $CORES cores): $((SECONDS - t0)) s"
}
shards train "$TRAIN_SHARDS" --stats
shards val "$VAL_SHARDS"
timed resize python3 -m pipeline.resize manifest --shards-dir $R/shards --train-shards "$TRAIN_SHARDS" \
    --val-shards "$VAL_SHARDS" --classes $R/fetch/classes.tsv --max-reject-fraction 0.001 --out $R/shards/manifest.json
timed pca python3 -m pipeline.pca --manifest $R/shards/manifest.json --out-dir $R/pca
IN="--manifest $R/shards/manifest.json --pca $R/pca/pca.json --mean-image $R/pca/mean_image.npy"
timed augment python3 -m pipeline.augment $IN --out-dir $R/augment --lighting paper --lighting-std 0.1 \
    --normalize mean_image --grid-samples 8 --bench-batches 5 --batch-size "$BATCH" --seed 0 --dali-threads "$DALI" \
    --device auto
# the ImageNet preset's training settings (workflow/presets/imagenet.yaml), for both runs below
RECIPE="--width $WIDTH --init cuda_convnet2 --bias-lr-factor 2 --dropout-style paper --decay weights --warmup-steps 0 --flat-after 2000 \
    --patience 5 --precision auto --no-compile --batch-size $BATCH --lr 0.01 --momentum 0.9 --weight-decay 0.0005 \
    --lr-factor 0.1 --seed 0 --monitor --devices auto --channels-last auto --lighting paper --lighting-std 0.1 \
    --normalize mean_image --torch-threads $CORES --dali-threads $DALI"
TRAINABILITY_FLAG=
if [ -n "$TRAINABILITY" ]; then  # first: whether the real run will learn is worth more than its speed
    timed trainability python3 -m pipeline.trainability $IN --classes $R/fetch/classes.tsv \
        --out-dir $R/trainability --inits $TRAINABILITY --steps "$TRAINABILITY_STEPS" $([ "$CPU" = 1 ] && echo --on-cpu) \
        -- $RECIPE
    TRAINABILITY_FLAG="--trainability $R/trainability/trainability.json"
    tail -n "$(echo $TRAINABILITY | wc -w | awk '{print $1 + 1}')" "$R/logs/trainability.log" | sed 's/^/== /'
    for init in $TRAINABILITY; do
        for f in metrics.jsonl curve.png train.json; do cp "$R/trainability/$init/$f" "$OUT/trainability-$init-$f"; done
    done
    cp "$R/trainability/trainability.json" "$OUT/trainability.json"
fi
timed train python3 -m pipeline.train $IN --classes $R/fetch/classes.tsv --out-dir $R/train $RECIPE \
    --log-every "$LOG_EVERY" --epochs "$EPOCHS" --steps-per-epoch "$STEPS"
timed evaluate python3 -m pipeline.evaluate --checkpoint $R/train/checkpoints/last.pt \
    --shards-manifest $R/shards/manifest.json --pca $R/pca/pca.json --mean-image $R/pca/mean_image.npy \
    --classes $R/fetch/classes.tsv --dataset-name preflight --batch-size "$BATCH" --max-images "$EVAL_IMAGES" \
    --devices auto --dali-threads "$DALI" --out-dir $R/evaluate
python3 -m pipeline.forecast --results $R --out-dir $R/forecast --cores "$CORES" $TRAINABILITY_FLAG \
    --rehearsal "generated ImageNet-shaped data (1000 classes, $TRAIN_PER_CLASS + $VAL_PER_CLASS images per class)" \
    --rehearsal "$EPOCHS epoch(s)$([ "$STEPS" != 0 ] && echo " of at most $STEPS steps")" \
    --rehearsal "bench/gpu_preflight.sh: the stage commands without Snakemake or MLflow" 2>&1 | tee "$OUT/preflight-forecast.md"
for f in forecast/forecast.json train/metrics.jsonl train/curve.png train/train.json evaluate/metrics.json \
         augment/augment.json; do
    cp "$R/$f" "$OUT/preflight-$(echo "$f" | tr / -)"
done
python3 - "$R/train/metrics.jsonl" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
w = [r for r in rows if "train_loss" in r]
print(f"== loss: first window {w[0]['train_loss']:.3f}, last {w[-1]['train_loss']:.3f}, "
      f"lowest {min(r['train_loss'] for r in w):.3f} (ln 1000 = {math.log(1000):.3f}) over {w[-1]['step']} steps")
for r in rows:
    if "val_top1_err" in r:
        print(f"== epoch {r['epoch']}: val top-1 {r['val_top1_err']:.2f}% top-5 {r['val_top5_err']:.2f}%")
PY
echo "== preflight: $((SECONDS - t_all)) s in all"
