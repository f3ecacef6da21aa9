"""The archives in the official formats, byte for byte the same for the same images: the train tar of
per-class tars, the flat val tar, the devkit's tar.gz, and MD5SUMS."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from pipeline.demo.class_table import CLASSES
from pipeline.demo.devkit_meta import meta_mat
from pipeline.devkit import DEVKIT_DIR, GROUND_TRUTH, META, val_file_name
from pipeline.io import atomic_path
from pipeline.sources import ARCHIVES

TRAIN_TAR, VAL_TAR, DEVKIT_TAR = ARCHIVES["train"], ARCHIVES["val"], ARCHIVES["devkit"]
MTIME = 1338508800  # 2012-06-01 UTC: a fixed timestamp keeps the archives byte-identical


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, MTIME, 0, 0, "", ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
    return buf.getvalue()


def write_train(path: Path, images, by_wnid: list[int], numbers: list[np.ndarray], sizes: list) -> None:
    """The train tar: for each class in `by_wnid`, <wnid>.tar of <wnid>_<number>.JPEG, the images taken
    in turn from the iterator `images` of (bytes, size); each size is appended to `sizes`."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, class_numbers in zip(by_wnid, numbers):
            wnid, inner = CLASSES[k][0], []
            for n in class_numbers:
                data, size = next(images)
                inner.append((f"{wnid}_{n}.JPEG", data))
                sizes.append(size)
            _add(tar, f"{wnid}.tar", _tar_bytes(inner))


def write_val(path: Path, images, n_val: int, sizes: list) -> None:
    """The val tar: n_val images from `images`, as ILSVRC2012_val_<number>.JPEG; sizes appended to `sizes`."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for g in range(n_val):
            data, size = next(images)
            _add(tar, val_file_name(g + 1), data)
            sizes.append(size)


def write_devkit(path: Path, leaves: list[dict], groups: list[dict], ground_truth: bytes) -> None:
    """The devkit's tar.gz: meta.mat of the synsets and the val ground truth."""
    with atomic_path(path) as tmp:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for d in (f"{DEVKIT_DIR}/", f"{DEVKIT_DIR}/data/"):
                tar.addfile(_info(d, directory=True))
            _add(tar, f"{DEVKIT_DIR}/{META}", meta_mat(leaves, groups))
            _add(tar, f"{DEVKIT_DIR}/{GROUND_TRUTH}", ground_truth)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_md5sums(out: Path) -> dict[str, str]:
    """MD5SUMS of the three archives in `out`; return the digest of each."""
    md5s = {name: _md5(out / name) for name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR)}
    with atomic_path(out / "MD5SUMS") as tmp:
        tmp.write_text("".join(f"{md5}  {name}\n" for name, md5 in md5s.items()))
    return md5s
