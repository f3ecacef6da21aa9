"""A held-out slice of the training set, for model selection away from the validation set.

The paper divided the learning rate "when the validation error rate stopped
improving" (section 5) and reports that same validation set's error, so the
schedule, and any best-epoch choice, are tuned on the images they are then
scored on. With `resize.holdout_per_class: K > 0` the resize stage takes K
training images of every class out before sharding: the training index is
split into the kept rows (the training shards) and the held-out rows (their
own shards, `shards/holdout/`), the manifest lists the held-out images, and
the train stage validates on them (plateau schedule, best epoch). The
official validation set is then read only by the evaluate stage.

The choice is seeded per class (`resize.seed` and the class label), so it
does not depend on the order of the index or on the other classes: the same
archive and seed hold out the same images on every machine.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from pipeline import archive
from pipeline.errors import PipelineError


class HoldoutError(PipelineError, ValueError):
    """A class has too few training images for the held-out slice asked for."""


def choose_holdout(labels: np.ndarray, per_class: int, seed: int, where: str = "the index") -> np.ndarray:
    """Boolean mask over the rows: `per_class` rows of every class, drawn with a generator seeded by (seed, label)."""
    if per_class < 0:
        raise HoldoutError(f"resize.holdout_per_class is {per_class}; use 0 (none) or a positive count")
    held = np.zeros(len(labels), dtype=bool)
    if per_class == 0:
        return held
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for label, start, end in zip(classes, starts, ends, strict=True):
        rows = order[start:end]
        if len(rows) <= per_class:
            raise HoldoutError(
                f"{where}: class {label} has {len(rows)} training images, and resize.holdout_per_class "
                f"{per_class} would leave none to train on; lower resize.holdout_per_class"
            )
        rng = np.random.default_rng([seed, int(label)])
        held[rng.choice(rows, size=per_class, replace=False)] = True
    return held


def split_index(
    index: str | os.PathLike, per_class: int, seed: int, out_kept: str | os.PathLike, out_holdout: str | os.PathLike
) -> tuple[int, int]:
    """Write the kept and the held-out rows of a training index as two index TSVs; returns their counts."""
    idx = archive.read_member_index(index)
    held = choose_holdout(idx.label, per_class, seed, where=str(index))

    def rows(mask: np.ndarray):
        for i in np.flatnonzero(mask):
            yield idx.name(i), int(idx.offset[i]), int(idx.size[i]), int(idx.label[i])

    kept = archive.write_index(rows(~held), out_kept)
    holdout = archive.write_index(rows(held), out_holdout)
    print(
        f"{index}: {holdout} images held out ({per_class} per class, seed {seed}) -> {out_holdout}; "
        f"{kept} kept for training -> {out_kept}",
        file=sys.stderr,
    )
    return kept, holdout
