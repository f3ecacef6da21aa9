"""Webdataset shards with DALI index files, written in one pass.

A shard is a plain tar of `<key>.jpg` + `<key>.cls` members (webdataset
layout); `.cls` holds the class index as zero-padded ASCII (`000042`), which
webdataset's int() and DALI's fixed-width parsing both read. The `.idx` beside
it is DALI's wds2idx format (`v1.2 <samples>`, then per sample
`<ext> <offset> <size> <name>` for each member). We record the offsets while
writing instead of rescanning the tar with wds2idx, which would cost a second
read of the shard.

The resize stage lists the shards in results/shards/manifest.json
(docs/formats.md); `read_manifest` and `manifest_entries` are the one reader
of that file for every stage.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, read_json

IMAGE_SIZE = 256  # paper, section 2: every image is stored as the central 256x256 patch
CLS_WIDTH = 6
IDX_VERSION = "v1.2"


class ManifestError(PipelineError, ValueError):
    """The shard manifest is missing, unreadable or lacks what a stage needs."""


class ShardIndexError(PipelineError, ValueError):
    """A shard's .idx file is missing or does not match the format ShardWriter writes."""


class ShardWriteError(PipelineError, ValueError):
    """A sample the shard format cannot hold (its key or label), named in the message."""


def index_path(shard) -> Path:
    return Path(shard).with_suffix(".idx")


def _index_lines(shard) -> tuple[str, list[str]]:
    """The version and the sample lines of a shard's DALI index, checked against its header."""
    idx = index_path(shard)
    try:
        lines = idx.read_text().splitlines()
        version, count = lines[0].split()[:2]
        count = int(count)
    except (OSError, IndexError, ValueError) as exc:
        raise ShardIndexError(f"{idx}: missing or not a DALI wds2idx index ({exc}); rerun the resize stage") from exc
    if len(lines) - 1 != count:
        raise ShardIndexError(
            f"{idx}: header says {count} samples, found {len(lines) - 1} lines; rerun the resize stage"
        )
    return version, lines[1:]


def shard_sample_count(shard) -> int:
    """Number of samples in a shard, from its DALI index."""
    return len(_index_lines(shard)[1])


def shard_sample_keys(shard) -> list[str]:
    """The shard's sample keys in stored order, from its DALI index."""
    version, lines = _index_lines(shard)
    if version != "v1.2":  # older indexes carry no member names: number the samples
        return [f"{Path(shard).stem}:{i}" for i in range(len(lines))]
    return [line.split()[3].split(".", 1)[0] for line in lines]


def read_manifest(manifest: str | os.PathLike) -> dict:
    try:
        return read_json(manifest)
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{manifest}: cannot read the shard manifest ({exc!r}); rerun the resize stage") from exc


def manifest_entry(report: dict, manifest: str | os.PathLike) -> dict:
    """A shard's entry in the manifest, from its .json report: the inverse of manifest_entries.

    Paths are stored relative to the manifest's folder, so results/ can move as a whole.
    """
    entry = {k: report[k] for k in ("images", "rejected", "bytes", "seconds")}
    for key in ("tar", "idx", "stats"):
        if report[key] is not None:
            entry[key] = os.path.relpath(report[key], Path(manifest).parent)
    return entry


def manifest_entries(manifest: str | os.PathLike, split: str) -> list[dict]:
    """The split's shard entries, with `tar`, `idx` and `stats` as paths resolved against the manifest's folder.

    An entry may also be a plain path to the tar (then `idx` is the tar's .idx
    beside it); a relative path is relative to the manifest's folder, an
    absolute one stays as it is.
    """
    manifest = Path(manifest)
    try:
        listed = read_manifest(manifest)[split]["shards"]
        entries = [{"tar": e} if isinstance(e, str) else dict(e) for e in listed]
        for e in entries:
            for key in ("tar", "idx", "stats"):
                if e.get(key) is not None:
                    e[key] = manifest.parent / e[key]
            if "tar" in e:
                e.setdefault("idx", e["tar"].with_suffix(".idx"))
    except (ManifestError, KeyError, TypeError) as exc:
        raise ManifestError(f"{manifest}: no shard list for split {split!r} ({exc!r}); rerun the resize stage") from exc
    return entries


def validation_split(manifest: str | os.PathLike) -> str:
    """The split the training validates on: the held-out training slice when the manifest has one, else val."""
    return "holdout" if read_manifest(manifest).get("holdout", {}).get("shards") else "val"


def encode_label(label: int) -> bytes:
    if not 0 <= label < 10**CLS_WIDTH:
        raise ShardWriteError(f"label {label} does not fit {CLS_WIDTH} digits")
    return f"{label:0{CLS_WIDTH}d}".encode()


def decode_label(data: bytes) -> int:
    return int(data.decode())


class ShardWriter:
    """Write `<path>` (.tar) and `<path minus .tar>.idx` atomically on close().

    Members get mtime 0 and uid/gid 0 so the same inputs give identical bytes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.idx_path = self.path.with_suffix(".idx")
        self._tar_ctx = atomic_path(self.path)
        self._tmp = self._tar_ctx.__enter__()
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._samples: list[list[tuple[str, int, int, str]]] = []
        self._keys: set[str] = set()

    def _add_member(self, name: str, data: bytes) -> tuple[int, int]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # addfile writes the 512-byte header, then the data; offset = end - padded data
        end = self._tar.offset
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return end - padded, len(data)

    def add(self, key: str, jpeg: bytes, label: int) -> None:
        if "." in key or "/" in key:
            raise ShardWriteError(f"shard key {key!r} must not contain '.' or '/'")
        if key in self._keys:
            raise ShardWriteError(f"duplicate shard key {key!r} in {self.path}")
        self._keys.add(key)
        parts = []
        for ext, data in (("jpg", jpeg), ("cls", encode_label(label))):
            name = f"{key}.{ext}"
            offset, size = self._add_member(name, data)
            parts.append((ext, offset, size, name))
        self._samples.append(parts)

    def __len__(self) -> int:
        return len(self._samples)

    def close(self) -> None:
        """Finish the tar, write the index, then move both into place."""
        self._tar.close()
        self._file.close()
        with atomic_path(self.idx_path) as tmp_idx:
            with open(tmp_idx, "w") as f:
                f.write(f"{IDX_VERSION} {len(self._samples)}\n")
                for parts in self._samples:
                    f.write(" ".join(f"{e} {o} {s} {n}" for e, o, s, n in parts) + "\n")
            self._tar_ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop everything written so far (no output appears)."""
        self._tar.close()
        self._file.close()
        self._tar_ctx.__exit__(RuntimeError, None, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_shard(path: str | os.PathLike):
    """Yield (key, jpeg_bytes, label) from a shard, in stored order."""
    pending: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if {"jpg", "cls"} <= pending[key].keys():
                sample = pending.pop(key)
                yield key, sample["jpg"], decode_label(sample["cls"])
