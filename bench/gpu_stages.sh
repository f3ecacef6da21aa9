#!/usr/bin/env bash
# The workflow's stages on a GPU, without Snakemake or MLflow: the same stage
# commands the rules run (workflow/rules/*.smk), on the demo data, with the GPU
# settings a GPU user gets (devices auto, bf16, channels_last). Checks what the
# CPU tests cannot: the augment stage's GPU pipelines, training with the full
# network on one GPU in both layouts (one device, and the paper's two columns
# with both columns on cuda:0), a resume on the GPU, torch.compile, and the
# ten-crop evaluation on the GPU. Prints each stage's wall time and the figures.
#   bash bench/gpu_stages.sh            (DALI_WHEELS=folder of DALI wheels, if not installed)
# Work folder: $WORK (default /tmp/gpu-stages); summary lines start with "==".
# Dry run of the script itself on a CPU machine: CPU=1 WIDTH=0.25 COMPILE=0 bash bench/gpu_stages.sh
# (tests/test_gpu_stages.py runs it that way, smaller still, so that it cannot rot unnoticed).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/gpu-stages}
CPU=${CPU:-0}          # 1: let it run without a GPU (devices cpu), to check the script
WIDTH=${WIDTH:-1.0}    # the full network on a GPU
CLASSES=${CLASSES:-10}                   # demo classes (up to 100: the harder set of bench/configs/hard100.yaml)
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-100}  # demo images per class
VAL_PER_CLASS=${VAL_PER_CLASS:-20}
BENCH_BATCHES=${BENCH_BATCHES:-20}       # batches the augment stage times
COMPILE=${COMPILE:-1}  # 0: skip the torch.compile run
ONLY_DATA=${ONLY_DATA:-0}  # 1: stop after the PCA stage (the data for bench/gpu_check.sh's trainability run)
source bench/gpu_env.sh
export CPU
python3 - <<'EOF'
import importlib, os, sys
missing = []
for module in ("numpy", "PIL", "torch", "nvidia.dali", "tqdm", "matplotlib", "scipy.io"):
    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing.append(f"{module} ({exc})")
import torch
print("== python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if missing or not (torch.cuda.is_available() or os.environ.get("CPU") == "1"):
    sys.exit(f"cannot run: {'; '.join(missing) or 'no CUDA device (CPU=1 runs it on the CPU)'}")
EOF
TWO_COLUMNS=cuda:0,cuda:0
if [ "$CPU" = 1 ]; then TWO_COLUMNS=cpu,cpu; fi
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
R=results
stage() {  # stage NAME COMMAND...: run, time, stop at the first failure
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*" | cut -c1-300
    "$@" > "$name.log" 2>&1 || { tail -30 "$name.log"; echo "== $name FAILED"; exit 1; }
    echo "== $name: $((SECONDS - t0)) s"
}
py() { python3 -m "$@"; }
stage demo py pipeline.demo --out-dir data/demo --seed 0 --classes "$CLASSES" --train-per-class "$TRAIN_PER_CLASS" \
    --val-per-class "$VAL_PER_CLASS" --large-fraction 0.1
stage fetch py pipeline.fetch --source archives --train data/demo/ILSVRC2012_img_train.tar \
    --train-md5 data/demo/MD5SUMS --val data/demo/ILSVRC2012_img_val.tar --val-md5 data/demo/MD5SUMS \
    --devkit data/demo/ILSVRC2012_devkit_t12.tar.gz --devkit-md5 data/demo/MD5SUMS --out-dir $R/fetch
for split in train val; do
    stage index-$split py pipeline.resize index --split $split --source $R/fetch/ILSVRC2012_img_$split.tar \
        --classes $R/fetch/classes.tsv --val-labels $R/fetch/val_labels.tsv --out $R/index/$split.tsv
done
shards() {  # shards SPLIT N [--stats]: the resize jobs of a split, in parallel as Snakemake would run them
    local split=$1 n=$2 pids=() failed=0; shift 2
    for k in $(seq 0 $((n - 1))); do
        py pipeline.resize shard --split "$split" --index $R/index/$split.tsv \
            --source $R/fetch/ILSVRC2012_img_$split.tar --shard "$k" --shards "$n" --seed 0 \
            --jpeg-quality 90 --max-reject-fraction 0.01 "$@" \
            --out "$(printf '%s/shards/%s/%s-%05d.tar' $R "$split" "$split" "$k")" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    return $failed
}
stage resize-train shards train 4 --stats
stage resize-val shards val 2
stage manifest py pipeline.resize manifest --shards-dir $R/shards --train-shards 4 --val-shards 2 \
    --classes $R/fetch/classes.tsv --max-reject-fraction 0.01 --out $R/shards/manifest.json
stage pca py pipeline.pca --manifest $R/shards/manifest.json --out-dir $R/pca
if [ "$ONLY_DATA" = 1 ]; then echo "== data ready in $WORK/$R"; exit 0; fi
IN="--manifest $R/shards/manifest.json --pca $R/pca/pca.json --mean-image $R/pca/mean_image.npy"
stage augment py pipeline.augment $IN --out-dir $R/augment --lighting paper --lighting-std 0.1 \
    --normalize mean_image --grid-samples 8 --bench-batches "$BENCH_BATCHES" --batch-size 256 --seed 1 --dali-threads 8 \
    --device auto
train() {  # train OUT_DIR EPOCHS extra args...: the full network, the paper's recipe and init
    local out=$1 epochs=$2; shift 2
    py pipeline.train $IN --classes $R/fetch/classes.tsv --out-dir "$out" --width "$WIDTH" --init paper \
        --batch-size 128 --lr 0.01 --momentum 0.9 --weight-decay 0.0005 --lr-factor 0.1 --patience 3 \
        --epochs "$epochs" --seed 1 --precision auto --channels-last auto --log-every 2 --dali-threads 8 --torch-threads 8 \
        --lighting paper --lighting-std 0.1 --normalize mean_image "$@"
}
stage train-1gpu train $R/train 3 --devices auto --no-compile
stage train-resume train $R/train 4 --devices auto --no-compile  # continues from epoch 3's checkpoint
stage train-2col train $R/train2col 2 --devices $TWO_COLUMNS --no-compile
if [ "$COMPILE" = 1 ]; then stage train-compile train $R/train-compile 2 --devices auto --compile; fi
stage evaluate py pipeline.evaluate --checkpoint $R/train/checkpoints/last.pt \
    --shards-manifest $R/shards/manifest.json --pca $R/pca/pca.json --mean-image $R/pca/mean_image.npy \
    --classes $R/fetch/classes.tsv --dataset-name demo --batch-size 128 --devices auto --dali-threads 8 \
    --out-dir $R/evaluate
python3 - <<'EOF'
import json
def show(path, keys):
    try:
        d = json.load(open(path))
    except OSError as exc:
        print("==", path, "missing:", exc)
        return
    print("==", path, {k: d[k] for k in keys if k in d})
show("results/augment/augment.json", ["device", "threads", "batch_size", "train_images_per_s",
                                      "train_first_batch_s", "eval_center_images_per_s", "eval_ten_images_per_s"])
for run in ("train", "train2col", "train-compile"):
    show(f"results/{run}/train.json", ["devices", "precision", "channels_last", "epochs", "steps", "images_per_s",
                                       "train_time_s", "best_epoch", "best_val_top1_err", "final_val_top1_err"])
show("results/evaluate/metrics.json", ["devices", "checkpoint_epoch", "val_top1_err_10crop", "val_top5_err_10crop",
                                       "val_top1_err_center", "val_top5_err_center", "eval_images_per_s"])
EOF
grep -iE "resum|extend" train-resume.log | head -3 || echo "== train-resume: no resume line in its log"
echo "== all stages passed"
