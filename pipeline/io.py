"""Small file helpers shared by the stages: atomic writes, JSON, class tables.

Every output is written to a temporary name in its final folder and renamed
into place, so a file that exists is complete and a killed job leaves nothing
that looks finished. The rename survives a power loss too: the file's data is
flushed to the disk (fsync) before the rename, so the new name can never point
at blocks that were still in the page cache, and the folder after it, so the
rename itself is on the disk when the stage reports success. Measured on the
resize stage: bench/RESULTS-io.md.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError


class TableError(PipelineError, ValueError):
    """A table (classes.tsv) that does not hold what the stage that writes it writes."""


class DiskFull(PipelineError, OSError):
    """A write that ran out of disk space; the message names the file, the bytes and what to do."""


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def disk_full(exc: BaseException, folder: Path, need: int | None = None) -> bool:
    """Whether `exc`, raised while writing into `folder`, means the disk is full. Some writers do
    not say so (torch.save reports an "unexpected pos" from its zip writer): then the free space decides."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < max(need or 0, 1 << 20)
    except OSError:
        return False


def disk_full_error(path: Path, written: int, need: int | None) -> DiskFull:
    free = shutil.disk_usage(path.parent).free
    needs = f"it needs {_size(need)}" if need else f"{_size(written)} were written before the disk filled"
    return DiskFull(
        f"no space left on the device while writing {path}: {needs}, {_size(free)} are free in {path.parent}. "
        "Nothing half-written was kept; free some space (or move paths.results to a larger disk) and rerun: "
        "the rerun continues from what is done"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success. `need`: the bytes the
    file will take, where known, for the message should the disk fill up (DiskFull)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        replace_durably(tmp, path)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFull) or not disk_full(exc, path.parent, need):
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        raise disk_full_error(path, written, need) from exc
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data and metadata to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace(src, dst) that a power loss cannot turn into an empty or partial `dst`."""
    if not os.path.islink(src):  # a link's own bytes live in its folder's entry, synced below
        fsync_path(src)
    os.replace(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)))


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file (metrics.jsonl), blank lines skipped."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
            raise TableError(
                f"{path}: row {i + 1} has no integer 'index' column ({row}); "
                "expected the fetch stage's classes.tsv (index, wnid, names)"
            ) from None
        if index != i:
            raise TableError(f"{path}: row {i + 1} has index {row['index']}, expected {i}; rerun the fetch stage")
    return rows
