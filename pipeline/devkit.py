"""The ILSVRC-2012 devkit: the class list and the validation labels.

ILSVRC2012_devkit_t12.tar.gz holds
- `ILSVRC2012_devkit_t12/data/meta.mat`: a MATLAB struct array `synsets`
  (1860 x 1) with fields ILSVRC2012_ID, WNID, words, gloss, num_children,
  children, wordnet_height, num_train_images. The 1000 classes are the leaf
  synsets (num_children == 0, ILSVRC2012_ID 1..1000); the 860 rows after them
  are WordNet ancestors, not classes.
- `ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`: one
  ILSVRC2012_ID per line, line n for ILSVRC2012_val_<n, 8 digits>.JPEG.

The ILSVRC2012_ID order is not sorted-wnid order (ID 1 is n02119789, kit fox).
The class index everywhere in this project is the position of the wnid in
sorted order (n01440764 = 0), as in torchvision and Caffe; validation labels
are mapped ILSVRC2012_ID -> wnid -> sorted index.

Also here: `iter_safe_members`, which reads a tar's member list to the end
with `pipeline.archive.check_member` on every member and insists on the
end-of-archive block, because tarfile stops silently at a damaged or
truncated header instead of raising.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from pipeline.archive import check_member
from pipeline.errors import PipelineError

SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


class ArchiveError(PipelineError, ValueError):
    """An archive cannot be read to the end, or lacks what the project needs."""


def val_file_name(number: int) -> str:
    """The validation image with ILSVRC2012 file number `number` (1-based)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def iter_safe_members(tar: tarfile.TarFile, archive: str) -> Iterator[tarfile.TarInfo]:
    """Yield every member of `tar`, refusing unsafe ones; fail on truncation."""
    try:
        for member in tar:
            check_member(member, archive)
            yield member
        # tarfile treats an unreadable or missing header as the end of the
        # archive; a complete tar ends with a block of zeros there.
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"no end-of-archive marker after byte {tar.offset}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(
            f"{archive}: cannot read the archive to the end ({e}); it is truncated "
            "or damaged: fetch it again and check its md5"
        ) from None


def open_tar(path: str | Path, mode: str = "r:") -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ArchiveError(f"{path}: not a readable tar archive ({e})") from None


@dataclass
class Devkit:
    """Leaf synsets (the classes) in sorted-wnid order, and the val ground truth."""

    wnids: list[str]
    names: list[str]
    id_to_wnid: dict[int, str]
    val_ids: list[int]

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids)}

    def class_rows(self) -> list[tuple[int, str, str]]:
        return [(i, w, n) for i, (w, n) in enumerate(zip(self.wnids, self.names))]

    def val_rows(self) -> list[tuple[str, int]]:
        """(file name, sorted-wnid index) per validation image, in file-number order."""
        index = self.index()
        return [(val_file_name(n), index[self.id_to_wnid[i]]) for n, i in enumerate(self.val_ids, 1)]


def _scalar(value, field: str, where: str):
    arr = np.asarray(value)
    if arr.size != 1:
        raise ArchiveError(f"{where}: synset field {field} holds {arr.size} values, expected one")
    return arr.reshape(()).item()


def parse_meta(data: bytes, where: str) -> list[tuple[int, str, str]]:
    """(ILSVRC2012_ID, wnid, words) of each leaf synset in meta.mat."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # scipy raises several unrelated types for a bad file
        raise ArchiveError(f"{where}: not a readable MATLAB file ({e})") from None
    synsets = mat.get("synsets")
    if synsets is None or synsets.dtype.names is None:
        raise ArchiveError(
            f"{where}: no struct array 'synsets' (keys: {sorted(k for k in mat if not k.startswith('__'))})"
        )
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "words", "num_children") if f not in synsets.dtype.names]
    if missing:
        raise ArchiveError(f"{where}: 'synsets' lacks fields {missing}")
    leaves = []
    for row in np.atleast_1d(synsets):
        if int(_scalar(row["num_children"], "num_children", where)) == 0:
            leaves.append(
                (int(_scalar(row["ILSVRC2012_ID"], "ILSVRC2012_ID", where)), str(row["WNID"]), str(row["words"]))
            )
    ids = [i for i, _, _ in leaves]
    wnids = [w for _, w, _ in leaves]
    if not leaves:
        raise ArchiveError(f"{where}: no leaf synsets (num_children == 0)")
    if len(set(ids)) != len(ids) or len(set(wnids)) != len(wnids):
        raise ArchiveError(f"{where}: leaf synsets repeat an ILSVRC2012_ID or WNID")
    return leaves


def parse_ground_truth(text: str, id_to_wnid: dict[int, str], where: str) -> list[int]:
    ids = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = int(line)
        except ValueError:
            raise ArchiveError(f"{where}: line {line_no} is {line!r}, expected an ILSVRC2012_ID") from None
        if value not in id_to_wnid:
            raise ArchiveError(f"{where}: line {line_no}: ILSVRC2012_ID {value} is not a leaf synset of meta.mat")
        ids.append(value)
    if not ids:
        raise ArchiveError(f"{where}: no validation labels")
    return ids


def _find(found: dict[str, bytes], suffix: str, archive: str) -> tuple[str, bytes]:
    hits = [(n, d) for n, d in found.items() if n == suffix or n.endswith("/" + suffix)]
    if len(hits) != 1:
        raise ArchiveError(
            f"{archive}: expected one member {DEVKIT_DIR}/{suffix}, found {len(hits)}; "
            "is this the ILSVRC2012_devkit_t12.tar.gz devkit?"
        )
    return hits[0]


def read_devkit(path: str | Path) -> Devkit:
    """Read the devkit archive to the end (every member checked) and parse it."""
    archive = str(path)
    found: dict[str, bytes] = {}
    with open_tar(path, "r:*") as tar:
        for member in iter_safe_members(tar, archive):
            name = posixpath.normpath(member.name)
            if member.isfile() and (name.endswith(META) or name.endswith(GROUND_TRUTH)):
                found[name] = tar.extractfile(member).read()
    meta_name, meta = _find(found, META, archive)
    gt_name, gt = _find(found, GROUND_TRUTH, archive)
    leaves = parse_meta(meta, f"{archive}:{meta_name}")
    id_to_wnid = {i: w for i, w, _ in leaves}
    words = {w: n for _, w, n in leaves}
    val_ids = parse_ground_truth(gt.decode("ascii", "replace"), id_to_wnid, f"{archive}:{gt_name}")
    wnids = sorted(words)
    return Devkit(wnids=wnids, names=[words[w] for w in wnids], id_to_wnid=id_to_wnid, val_ids=val_ids)
