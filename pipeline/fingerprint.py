"""Content fingerprints of the training stage's inputs.

A checkpoint records them, so a later run can tell whether it would continue
training on the same data: a changed shard, PCA, mean image or class list
means the old weights were fitted to something else, and the run starts over.

Shards are fingerprinted by their DALI index (every member's offset and size)
and their byte size, not by hashing the tars: at ImageNet scale the tars are
about 140 GB (minutes to hash on every start), while any re-encoding (another
JPEG quality, another resize) changes the sizes the index records. The
manifest, which records the resize settings of every shard and the sha256 of
every shard written since shards carry checksums, is hashed whole but for its
wall-clock fields (seconds per shard); the train stage checks those digests
against the files before its first step (pipeline/shards.py verify_shards).
"""

from __future__ import annotations

import hashlib
import json
import os

from pipeline.shards import manifest_entries, read_manifest, validation_split

# what each fingerprint covers, as a log line names it
LABELS = {
    "manifest": "the shard manifest",
    "shards": "the training and validation shards",  # the held-out slice's too: training images validated on
    "pca": "the PCA",
    "mean_image": "the mean image",
    "classes": "the class list",
}


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shards_digest(manifest: str | os.PathLike) -> str:
    """One digest over every listed shard's name, size and .idx content, train, val, then the held-out slice."""
    h = hashlib.sha256()
    for split in ("train", "val", "holdout")[: 3 if validation_split(manifest) == "holdout" else 2]:
        for entry in manifest_entries(manifest, split):
            tar, idx = entry["tar"], entry["idx"]
            h.update(f"{split}/{tar.name}:{tar.stat().st_size}:".encode())
            h.update(file_digest(idx).encode() if idx.exists() else b"no-index")
    return h.hexdigest()


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not (k.endswith(("seconds", "_s")) or "per_s" in k)}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def manifest_digest(manifest) -> str:
    """The manifest's content without its wall-clock fields (a rerun of resize that wrote
    the same shards gives the same digest)."""
    content = _without_timings(read_manifest(manifest))
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def input_fingerprints(manifest, pca_json, mean_image, classes) -> dict[str, str]:
    """{name: sha256} for the train stage's inputs (names as in LABELS)."""
    return {
        "manifest": manifest_digest(manifest),
        "shards": shards_digest(manifest),
        "pca": file_digest(pca_json),
        "mean_image": file_digest(mean_image),
        "classes": file_digest(classes),
    }


def changed_inputs(old: dict | None, new: dict | None) -> list[str]:
    """Names of the inputs whose fingerprints differ (all of them when one side has none)."""
    if old == new:
        return []
    if not old or not new:
        return list(LABELS)
    return [k for k in LABELS if old.get(k) != new.get(k)]
