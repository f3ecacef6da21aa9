#!/usr/bin/env bash
# Same results before and after a change of structure: resize two training shards, PCA,
# train 2 epochs (width 0.0625) and evaluate, with the code of REV and with the working
# tree, on the demo results of `make demo`; prints what is identical.
#   bash bench/same_results.sh REV      (REV: 0c36753 or later; earlier ones lack init width_scaled)
set -e
REV=${1:?usage: bash bench/same_results.sh REV}
REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf /tmp/same-before /tmp/same-after /tmp/same-tree
git -C "$REPO" worktree add -q --detach /tmp/same-tree "$REV"
trap 'git -C "$REPO" worktree remove --force /tmp/same-tree' EXIT
R=$REPO/results
run() {  # run TREE OUT
  local tree=$1 out=$2; mkdir -p $out
  cd $tree
  for k in 0 1; do
    PYTHONPATH=$tree $REPO/.venv/bin/python -m pipeline.resize shard --split train --index $R/index/train.tsv \
      --source $R/fetch/ILSVRC2012_img_train.tar --shard $k --shards 4 --seed 0 --jpeg-quality 90 \
      --max-reject-fraction 0.01 --stats --out $out/shards/train/train-0000$k.tar  2>/dev/null
  done
  PYTHONPATH=$tree $REPO/.venv/bin/python -m pipeline.pca --stats $out/shards/train/*.stats.npz --out-dir $out/pca 2>/dev/null
  # the thread flags of revisions before the train stage's --dali-threads / --torch-threads
  local threads="--dali-threads 1 --torch-threads 2"
  grep -q "dali_threads: int" $tree/pipeline/train.py || threads="--workers 1 --threads 2"
  PYTHONPATH=$tree $REPO/.venv/bin/python -m pipeline.train --manifest $R/shards/manifest.json --pca $R/pca/pca.json \
    --mean-image $R/pca/mean_image.npy --classes $R/fetch/classes.tsv --out-dir $out/train --fresh --devices cpu \
    --width 0.0625 --init width_scaled --epochs 2 --batch-size 32 --log-every 1 $threads --seed 3 2>/dev/null
  PYTHONPATH=$tree $REPO/.venv/bin/python -m pipeline.evaluate --checkpoint $out/train/checkpoints/last.pt \
    --shards-manifest $R/shards/manifest.json --pca $R/pca/pca.json --mean-image $R/pca/mean_image.npy \
    --classes $R/fetch/classes.tsv --devices cpu --batch-size 16 --out-dir $out/evaluate 2>/dev/null
}
run /tmp/same-tree /tmp/same-before
run "$REPO" /tmp/same-after
cd /tmp
for f in same-before/shards/train/*.tar same-before/shards/train/*.idx same-before/shards/train/*.stats.npz \
         same-before/pca/mean_image.npy; do cmp $f same-after/${f#same-before/} && echo "identical ${f#same-before/}"; done
python3 - <<'PY'
import json
a, b = json.load(open("/tmp/same-before/pca/pca.json")), json.load(open("/tmp/same-after/pca/pca.json"))
print("pca.json equal:", a == b)
la = [r["train_loss"] for r in map(json.loads, open("/tmp/same-before/train/metrics.jsonl")) if "train_loss" in r]
lb = [r["train_loss"] for r in map(json.loads, open("/tmp/same-after/train/metrics.jsonl")) if "train_loss" in r]
print("losses equal step for step:", la == lb, len(la), "steps")
ma, mb = json.load(open("/tmp/same-before/evaluate/metrics.json")), json.load(open("/tmp/same-after/evaluate/metrics.json"))
keys = [k for k in ma if k.startswith("val_")]
print("evaluation metrics equal:", {k: ma[k] for k in keys} == {k: mb[k] for k in keys}, {k: ma[k] for k in keys})
PY
