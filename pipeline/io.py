"""Small file helpers shared by the stages: atomic writes, JSON, class tables.

Every output is written to a temporary name in its final folder and renamed
into place, so a file that exists is complete and a killed job leaves nothing
that looks finished.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError


class TableError(PipelineError, ValueError):
    """A table (classes.tsv) that does not hold what the stage that writes it writes."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def write_tsv(path: str | os.PathLike, header: list[str], rows) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_classes(path: str | os.PathLike) -> list[dict[str, str]]:
    """The class table written by fetch: index, wnid, names; in index order."""
    rows = read_tsv(path)
    for i, row in enumerate(rows):
        try:
            index = int(row["index"])
        except (KeyError, TypeError, ValueError):
            raise TableError(f"{path}: row {i + 1} has no integer 'index' column ({row}); "
                             "expected the fetch stage's classes.tsv (index, wnid, names)") from None
        if index != i:
            raise TableError(f"{path}: row {i + 1} has index {row['index']}, expected {i}; rerun the fetch stage")
    return rows
