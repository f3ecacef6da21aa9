"""Which images of a split are large, which carry a quirk, and the class of each val image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.demo.quirks import QUIRK_RATES


def _pick(rng: np.random.Generator, total: int, count: int, exclude=()) -> list[int]:
    pool = np.setdiff1d(np.arange(total), np.asarray(list(exclude), dtype=int))
    return [int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False)]


@dataclass(frozen=True)
class Split:
    """Which images of one split are large and which carry a quirk (image number -> quirk)."""

    large: frozenset
    quirks: dict

    def quirk_counts(self) -> dict[str, int]:
        placed = list(self.quirks.values())
        return {q: placed.count(q) for q in QUIRK_RATES}


def plan_split(seed: int, split: int, total: int, large_fraction: float, quirks: tuple[str, ...]) -> Split:
    """Split `split` (0 train, 1 val) of `total` images: a seeded large_fraction of them large (at least
    one when it is above 0), and `quirks` placed on as many images that are not."""
    rng = np.random.default_rng([seed, split, 0])
    large = set(_pick(rng, total, max(1, round(large_fraction * total)) if large_fraction > 0 else 0))
    return Split(frozenset(large), dict(zip(_pick(rng, total, len(quirks), exclude=large), quirks)))


def val_order(seed: int, classes: int, val_per_class: int) -> list[int]:
    """The class of each val image, in file-number order: classes interleaved by a seeded shuffle."""
    return [
        int(k) for k in np.random.default_rng([seed, 1, 2]).permutation(np.repeat(np.arange(classes), val_per_class))
    ]
