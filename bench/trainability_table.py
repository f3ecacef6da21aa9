"""A short table of a training run's metrics.jsonl: loss against ln(classes), fc7's dead share, validation.

python bench/trainability_table.py WORK/train/metrics.jsonl [--classes 100]
"""

import argparse
import json
import math

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("jsonl")
p.add_argument("--classes", type=int, default=100)
a = p.parse_args()
rows = [json.loads(line) for line in open(a.jsonl)]
train = [r for r in rows if "train_loss" in r]
val = [r for r in rows if "val_top1_err" in r]
print(f"== trainability: {train[-1]['step'] if train else 0} steps; ln({a.classes}) = {math.log(a.classes):.2f}")
print("| step | window loss | fc7 dead | conv5 dead |")
print("| --- | --- | --- | --- |")
for r in train[:: max(1, len(train) // 12)] + train[-1:]:
    h = r.get("health", {})
    print(
        f"| {r['step']} | {r['train_loss']:.3f} | {h.get('fc7', {}).get('dead', float('nan')):.2f} | "
        f"{h.get('conv5', {}).get('dead', float('nan')):.2f} |"
    )
print("| epoch | val top-1 error (centre) | lr |")
print("| --- | --- | --- |")
for r in val:
    print(f"| {r['epoch']} | {r['val_top1_err']:.1f}% | {r['lr']:g} |")
warnings = [r for r in rows if "warning" in r]
for w in warnings:
    print(f"== warning {w['warning']}: {w['message']}")
