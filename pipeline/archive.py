"""Reading ILSVRC archives safely and in place.

Every tar member the project reads or unpacks goes through `check_member`:
the project's own checks first (absolute paths, `..` components, links that
leave the archive, device files and FIFOs), each with a message that names
the member and what is wrong with it, then Python's tarfile 'data' filter
(`tarfile.data_filter`, Python 3.11.4+) as a second line, applied to reading
too, since we read members by name and offset rather than extracting them.

The index (`results/index/{train,val}.tsv`: member, offset, size, label) is
built from tar headers alone: tarfile walks a raw pread view of the archive,
seeking from header to header, so the image data (138 GB in the train archive)
is never read and nothing is extracted. Nested per-class tars are walked
inside the outer one and their members' offsets made absolute. Measured on a
synthetic 1.28 M-row index (58 MB TSV, bench/RESULTS-resize.md): loaded as
numpy columns it takes 54 MB (peak +214 MB while parsing, 1.5 CPU-s); a shard
job parses only its own rows (0.12 CPU-s, peak +98 MB).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import read_classes, read_tsv, write_tsv


class UnsafeArchiveError(PipelineError, ValueError):
    """A tar member would escape the archive's folder or is not a plain file."""


# tarfile's filter resolves member paths under a destination folder with realpath, which
# follows symlinks that exist on this machine; a root that does not exist keeps the check
# lexical (members are read in place, never extracted here).
_FILTER_ROOT = "/nonexistent-alexnet-archive-root"


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a member that would leave the archive's folder or is not a file, folder or link."""
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith("/") or posixpath.isabs(norm):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to read this archive")
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to read this archive")
    if member.issym() or member.islnk():
        target = member.linkname
        # A symlink's target is relative to its own folder, a hard link's to the archive's root.
        base = posixpath.dirname(norm) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} links to {target!r} outside the archive; refusing to read this archive"
            )
    if member.isdev():
        kind = "FIFO" if member.isfifo() else "device file"
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a {kind}; refusing to read this archive")
    try:
        tarfile.data_filter(member, _FILTER_ROOT)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is refused by tarfile's data filter "
            f"({type(exc).__name__}: {exc}); refusing to read this archive"
        ) from None


# --- Index of image members: byte ranges in the archive, read by offset later ---
INDEX_HEADER = ["member", "offset", "size", "label"]
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class ArchiveIndexError(PipelineError, ValueError):
    """An archive, folder or label table does not have the expected layout."""


class _RawView:
    """A read-only, seekable byte range of a file descriptor, read with pread.

    tarfile only needs read/seek/tell; reading through pread keeps every read
    the exact size tarfile asks for (headers: 512 bytes), where a buffered file
    would pull in 8 KiB of image data per header.
    """

    def __init__(self, fd: int, start: int, size: int, name: str, counter: list[int]):
        self.fd, self.start, self.size, self.name = fd, start, size, name
        self.pos = 0
        self._counter = counter  # shared with nested views: total bytes read

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        data = os.pread(self.fd, end - self.pos, self.start + self.pos)
        self.pos += len(data)
        self._counter[0] += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _members(view: _RawView, where: str) -> Iterator[tarfile.TarInfo]:
    """Regular-file members of the tar in `view`, each checked by check_member."""
    try:
        tar = tarfile.open(fileobj=view, mode="r:")
    except tarfile.ReadError as exc:
        raise ArchiveIndexError(
            f"{where}: not an uncompressed tar archive ({exc}); "
            "images are read by byte offset, so the archive must not be compressed"
        ) from None
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise ArchiveIndexError(f"{where}: damaged tar header ({exc}); re-download the archive") from None
            if member is None:
                return
            check_member(member, where)
            if member.isdir():
                continue
            if not member.isfile() or member.issparse():
                raise ArchiveIndexError(
                    f"{where}: member {member.name!r} is not a regular file; "
                    "expected only images (and per-class tars in the train archive)"
                )
            yield member
            tar.members.clear()  # headers only matter once; keeps memory flat on 50,000-member tars


def image_key(member: str) -> str:
    """Shard key of an image: its file name without extension, no dots (webdataset splits at the first dot)."""
    stem = posixpath.splitext(posixpath.basename(member))[0]
    return stem.replace(".", "_")


def _class_lookup(classes_path: str | os.PathLike) -> dict[str, int]:
    return {row["wnid"]: int(row["index"]) for row in read_classes(classes_path)}


def index_train_archive(
    archive: str | os.PathLike, classes_path: str | os.PathLike, bytes_read: list[int] | None = None
) -> Iterator[tuple[str, int, int, int]]:
    """(member, offset, size, label) of every image in ILSVRC2012_img_train.tar.

    The archive holds one `<wnid>.tar` per class; the label is the index of that
    wnid in classes.tsv, and offsets are absolute positions in the outer archive.
    """
    wnids = _class_lookup(classes_path)
    counter = bytes_read if bytes_read is not None else [0]
    fd = os.open(archive, os.O_RDONLY)
    try:
        outer = _RawView(fd, 0, os.fstat(fd).st_size, str(archive), counter)
        for member in _members(outer, str(archive)):
            name = posixpath.basename(member.name)
            wnid, ext = posixpath.splitext(name)
            if ext != ".tar":
                raise ArchiveIndexError(
                    f"{archive}: member {member.name!r} is not a per-class tar <wnid>.tar; "
                    "the train archive must be the official ILSVRC2012_img_train.tar layout "
                    "(or use dataset.source: folders for an extracted tree)"
                )
            if wnid not in wnids:
                raise ArchiveIndexError(
                    f"{archive}: class tar {member.name!r} names wnid {wnid!r}, "
                    f"which is not in {classes_path}; the class table and archive disagree"
                )
            where = f"{archive}:{member.name}"
            inner = _RawView(fd, member.offset_data, member.size, where, counter)
            for image in _members(inner, where):
                yield image.name, member.offset_data + image.offset_data, image.size, wnids[wnid]
    finally:
        os.close(fd)


def index_val_archive(
    archive: str | os.PathLike, val_labels_path: str | os.PathLike, bytes_read: list[int] | None = None
) -> Iterator[tuple[str, int, int, int]]:
    """(member, offset, size, label) of every image in the flat ILSVRC2012_img_val.tar."""
    labels = {row["file"]: int(row["index"]) for row in read_tsv(val_labels_path)}
    seen = 0
    counter = bytes_read if bytes_read is not None else [0]
    fd = os.open(archive, os.O_RDONLY)
    try:
        view = _RawView(fd, 0, os.fstat(fd).st_size, str(archive), counter)
        for member in _members(view, str(archive)):
            name = posixpath.basename(member.name)
            if name not in labels:
                raise ArchiveIndexError(
                    f"{archive}: image {member.name!r} has no row in {val_labels_path}; "
                    "the validation labels and archive disagree"
                )
            seen += 1
            yield member.name, member.offset_data, member.size, labels[name]
    finally:
        os.close(fd)
    if seen != len(labels):
        raise ArchiveIndexError(
            f"{archive}: holds {seen} images but {val_labels_path} lists {len(labels)}; "
            "the validation labels and archive disagree"
        )


def index_folder(root: str | os.PathLike, classes_path: str | os.PathLike) -> Iterator[tuple[str, int, int, int]]:
    """(relative path, 0, file size, label) of every image in a <wnid>/<image> tree, sorted."""
    root = Path(root)
    wnids = _class_lookup(classes_path)
    if not root.is_dir():
        raise ArchiveIndexError(f"{root}: not a folder; expected a tree <wnid>/*.JPEG")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in wnids:
            raise ArchiveIndexError(
                f"{folder}: folder name is not a wnid in {classes_path}; "
                "expected one folder per class, named by its wnid"
            )
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield f"{folder.name}/{path.name}", 0, path.stat().st_size, wnids[folder.name]


def write_index(rows, out: str | os.PathLike) -> int:
    """Write the index TSV atomically; refuse duplicate shard keys. Returns the row count."""
    keys: set[str] = set()
    count = 0

    def checked():
        nonlocal count
        for member, offset, size, label in rows:
            key = image_key(member)
            if key in keys:
                raise ArchiveIndexError(
                    f"{out}: two images share the name {key!r} (second: {member!r}); "
                    "shard keys must be unique, rename one of them"
                )
            keys.add(key)
            count += 1
            yield member, offset, size, label

    write_tsv(out, INDEX_HEADER, checked())
    if count == 0:
        Path(out).unlink()
        raise ArchiveIndexError(f"{out}: the source holds no images")
    return count


@dataclasses.dataclass
class ArchiveIndex:
    """Index rows as compact numpy columns (1.28 M rows: about 60 MB, not a list of dicts)."""

    member: np.ndarray  # bytes, fixed width
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    label: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.offset)

    def name(self, i: int) -> str:
        return self.member[i].decode()


def _line_starts(data: bytes, chunk: int = 1 << 22) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    # in 4 MiB pieces: a whole-file boolean mask would double a 58 MB index's memory
    parts = [np.flatnonzero(buf[i : i + chunk] == 10) + i for i in range(0, len(buf), chunk)]
    newlines = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(data) and data[-1:] != b"\n":
        newlines = np.append(newlines, len(data))
    return np.concatenate(([0], newlines + 1))


def index_length(path: str | os.PathLike) -> int:
    """Number of images in an index TSV, without parsing its rows."""
    data = Path(path).read_bytes()
    return len(_line_starts(data)) - 2


def read_member_index(path: str | os.PathLike, rows=None) -> ArchiveIndex:
    """Load a member index TSV, all rows or only `rows` (in the order given).

    `rows`: None (all), row positions, or a function of the row count that
    returns positions. A shard job loads only its own rows: one read, one numpy
    scan for line starts, then only those lines are parsed, so 1,024 jobs don't
    each parse 1.28 M rows.
    """
    data = Path(path).read_bytes()
    starts = _line_starts(data)
    header = data[: starts[1] - 1].decode().split("\t") if len(starts) > 1 else []
    if header != INDEX_HEADER:
        raise ArchiveIndexError(f"{path}: header {header}, expected {INDEX_HEADER}; rebuild the index")
    n = len(starts) - 2
    if callable(rows):
        rows = rows(n)
    positions = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= n):
        raise ArchiveIndexError(f"{path}: row {positions.max()} asked for, but the index has {n} rows")
    names = []
    offset = np.empty(len(positions), np.int64)
    size = np.empty(len(positions), np.int64)
    label = np.empty(len(positions), np.int32)
    for j, i in enumerate(positions):
        line = data[starts[i + 1] : starts[i + 2]].rstrip(b"\n")
        try:
            name, offset[j], size[j], label[j] = line.split(b"\t")
        except ValueError:
            raise ArchiveIndexError(
                f"{path}: line {i + 2} is {line[:80]!r}, expected member, offset, "
                "size, label separated by tabs; rebuild the index"
            ) from None
        names.append(name)
    return ArchiveIndex(np.array(names, dtype=np.bytes_) if names else np.array([], "S1"), offset, size, label)
