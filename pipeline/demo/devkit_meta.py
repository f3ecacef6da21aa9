"""The devkit's meta.mat: the synsets (the drawn classes and their non-leaf ancestors) in ILSVRC2012_ID order."""

from __future__ import annotations

import io

import numpy as np
import scipy.io

from pipeline.demo.class_table import CLASSES, ILSVRC2012
from pipeline.devkit import SYNSET_FIELDS

# Non-leaf ancestors (not classes), listed after the leaves as in the real meta.mat.
ROOT = ("n00001740", "entity", "that which is perceived or known or inferred to have its own distinct existence")
GROUPS = {
    True: ("n00004258", "living thing, animate thing", "a living (or once living) entity"),
    False: ("n00021939", "artifact, artefact", "a man-made object taken as a whole"),
}


def _uint(values) -> np.ndarray:
    """A row of integers in the smallest unsigned type, as MATLAB stored the real meta.mat."""
    arr = np.array([values], dtype=np.int64).reshape(1, -1)
    return arr.astype(np.uint8 if arr.size == 0 or arr.max() < 256 else np.uint16)


def meta_mat(leaves: list[dict], groups: list[dict]) -> bytes:
    """meta.mat bytes: the struct array `synsets` (N x 1), fields and types as in the devkit."""
    rows = leaves + groups
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, s in enumerate(rows):
        synsets[i, 0] = (
            _uint(s["id"]),
            s["wnid"],
            s["words"],
            s["gloss"],
            _uint(len(s["children"])),
            _uint(s["children"]),
            _uint(s["height"]),
            _uint(s["images"]),
        )
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets}, format="5", oned_as="row")
    data = bytearray(buf.getvalue())
    # The 116-byte header text carries the creation time; fix it for identical bytes.
    data[:116] = b"MATLAB 5.0 MAT-file, written by pipeline.demo".ljust(116)
    return bytes(data)


def _synset(ilsvrc_id: int, names: tuple[str, str, str], height: int, children: list[int], images: int) -> dict:
    """One row of meta.mat: its ID, (wnid, words, gloss), height in the tree, children's IDs, image count."""
    wnid, words, gloss = names
    return {
        "id": ilsvrc_id,
        "wnid": wnid,
        "words": words,
        "gloss": gloss,
        "height": height,
        "children": children,
        "images": images,
    }


def synsets(wnids_by_id: list[int], n_train: int) -> tuple[list[dict], list[dict]]:
    """Leaf rows in ILSVRC2012_ID order (1..N), then non-leaf ancestors; a leaf's "class" is its class number."""
    n = len(wnids_by_id)
    leaves = [
        {**_synset(ilsvrc_id, CLASSES[k][:3], 0, [], n_train), "class": k} for ilsvrc_id, k in enumerate(wnids_by_id, 1)
    ]
    groups = []
    for living in (True, False):
        kids = [s["id"] for s in leaves if CLASSES[s["class"]][3] == living]
        if kids:
            groups.append(_synset(n + 1 + len(groups), GROUPS[living], 1, kids, n_train * len(kids)))
    groups.append(_synset(n + 1 + len(groups), ROOT, 2, [g["id"] for g in groups], n_train * n))
    return leaves, groups


def id_order(rng: np.random.Generator, n: int) -> list[int]:
    """Class numbers in ILSVRC2012_ID order: the devkit's own for all 1000 classes, else a
    seeded permutation that is not sorted-wnid order."""
    if n == len(CLASSES):
        number = {wnid: k for k, (wnid, *_) in enumerate(CLASSES)}
        return [number[wnid] for _, wnid, _, _ in ILSVRC2012]
    by_wnid = sorted(range(n), key=lambda k: CLASSES[k][0])
    order = [by_wnid[i] for i in rng.permutation(n)]
    if order == by_wnid:
        order = order[1:] + order[:1]
    return order
