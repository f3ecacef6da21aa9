"""The demo's classes: the 1000 ILSVRC-2012 classes of pipeline/data/ilsvrc2012_classes.tsv, in the demo's order.

The order and the words and glosses the demo writes where they are its own
come from pipeline/data/demo_classes.tsv: its classes first, then every
other class in sorted-wnid order.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
CLASS_TABLE = DATA / "ilsvrc2012_classes.tsv"
DEMO_TABLE = DATA / "demo_classes.tsv"
CLASS_TABLE_HEADER = ["ilsvrc2012_id", "wnid", "words", "gloss"]
DEMO_TABLE_HEADER = ["wnid", "words", "gloss"]
AS_CLASS_TABLE = "-"  # a demo-table field that takes the class table's words or gloss
# The demo's first 100 classes are fixed, so that demos of up to 100 classes keep their bytes; those of
# them past the demo table carry this gloss, as they did before the demo read the class table.
FIXED_CLASSES = 100
GLOSS_NOT_KEPT = "an ILSVRC-2012 class (the demo keeps its wnid and words, not its gloss)"
FIRST_NON_ANIMAL = "n02666196"  # abacus: every ILSVRC-2012 wnid sorted before it is an animal
PLANT_PREFIXES = ("n11", "n12", "n13")  # plants and fungi


def _rows(path: Path, header: list[str]) -> list[list[str]]:
    """The rows under `header` of a tab-separated table whose comment lines start with #."""
    rows = [
        line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]
    if not rows or rows[0] != header or any(len(r) != len(header) for r in rows[1:]):
        raise ValueError(f"{path}: expected the header {' '.join(header)} and rows of {len(header)} fields")
    return rows[1:]


def ilsvrc2012_classes(path: Path = CLASS_TABLE) -> list[tuple[int, str, str, str]]:
    """(ILSVRC2012_ID, wnid, words, gloss) of the 1000 classes, in ILSVRC2012_ID order."""
    body = _rows(path, CLASS_TABLE_HEADER)
    if len(body) != 1000:
        raise ValueError(f"{path}: expected 1000 classes, found {len(body)}")
    return [(int(i), wnid, words, gloss) for i, wnid, words, gloss in body]


def living(wnid: str) -> bool:
    """Whether the class is an animal, plant or fungus (its non-leaf ancestor in meta.mat)."""
    return wnid < FIRST_NON_ANIMAL or wnid.startswith(PLANT_PREFIXES)


def demo_classes(table: list[tuple[int, str, str, str]], path: Path = DEMO_TABLE) -> list[tuple[str, str, str, bool]]:
    """(wnid, words, gloss, living) of every class in the demo's order."""
    own = {wnid: (words, gloss) for wnid, words, gloss in _rows(path, DEMO_TABLE_HEADER)}
    official = {wnid: (words, gloss) for _, wnid, words, gloss in table}
    if not own.keys() <= official.keys():
        raise ValueError(f"{path}: wnids not in the class table: {sorted(own.keys() - official.keys())}")
    order = list(own) + sorted(official.keys() - own.keys())
    classes = []
    for k, wnid in enumerate(order):
        words, gloss = official[wnid]
        if wnid in own:
            own_words, own_gloss = own[wnid]
            words = words if own_words == AS_CLASS_TABLE else own_words
            gloss = gloss if own_gloss == AS_CLASS_TABLE else own_gloss
        elif k < FIXED_CLASSES:
            gloss = GLOSS_NOT_KEPT
        classes.append((wnid, words, gloss, living(wnid)))
    return classes


ILSVRC2012 = ilsvrc2012_classes()
# Every class the demo can draw; a demo of n classes draws the first n.
CLASSES = demo_classes(ILSVRC2012)
DEMO_CLASSES = CLASSES[:FIXED_CLASSES]
