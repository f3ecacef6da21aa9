"""Webdataset shards with DALI index files, written in one pass.

A shard is a plain tar of `<key>.jpg` + `<key>.cls` members (webdataset
layout); `.cls` holds the class index as zero-padded ASCII (`000042`), which
webdataset's int() and DALI's fixed-width parsing both read. The `.idx` beside
it is DALI's wds2idx format (`v1.2 <samples>`, then per sample
`<ext> <offset> <size> <name>` for each member). We record the offsets while
writing instead of rescanning the tar with wds2idx, which would cost a second
read of the shard.

Both files are hashed as they are written (`HashingFile`: sha256 of the bytes
handed to the file, no second read), and the resize stage records the digests
in the shard's report and the manifest (`sha256`, `idx_sha256`).
`verify_shards` checks them before the train and evaluate stages read a
shard: a flipped or zeroed block inside a JPEG decodes without an error (the
decoder only warns), so only a checksum can tell.

The resize stage lists the shards in results/shards/manifest.json
(docs/formats.md); `read_manifest` and `manifest_entries` are the one reader
of that file for every stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, read_json
from pipeline.layout import shard_rule

IMAGE_SIZE = 256  # paper, section 2: every image is stored as the central 256x256 patch
CLS_WIDTH = 6
IDX_VERSION = "v1.2"
CHECKSUM_KEYS = ("sha256", "idx_sha256")  # a shard's report and manifest entry: the tar's and its .idx's
VERIFY_BLOCK = 4 << 20  # bytes per read when verifying: large enough for disk, small enough for the cache
VERIFY_PROGRESS_BYTES = 1 << 30  # a progress bar from this many bytes to verify


class ManifestError(PipelineError, ValueError):
    """The shard manifest is missing, unreadable or lacks what a stage needs."""


class ShardIndexError(PipelineError, ValueError):
    """A shard's .idx file is missing or does not match the format ShardWriter writes."""


class ShardWriteError(PipelineError, ValueError):
    """A sample the shard format cannot hold (its key or label), named in the message."""


class ShardChecksumError(PipelineError, ValueError):
    """A shard or its .idx differs from what the manifest recorded when the resize stage wrote it."""


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
    entry.update({k: report[k] for k in CHECKSUM_KEYS if k in report})  # reports written before them lack them
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


class HashingFile:
    """A binary file opened for writing that hashes (sha256) every byte written to it.

    tarfile writes through `write` and asks `tell` for its start offset, so the
    digest is of exactly the bytes on disk, computed while they are written.
    """

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "wb")
        self._sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self._sha256.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


class ShardWriter:
    """Write `<path>` (.tar) and `<path minus .tar>.idx` atomically on close().

    Members get mtime 0 and uid/gid 0 so the same inputs give identical bytes.
    After close(), `checksums` holds the sha256 of both files as written
    ({"sha256": tar, "idx_sha256": idx}), for the shard's report and the manifest.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.idx_path = self.path.with_suffix(".idx")
        self.checksums: dict[str, str] = {}
        self._tar_ctx = atomic_path(self.path)
        self._tmp = self._tar_ctx.__enter__()
        self._file = HashingFile(self._tmp)
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
            f = HashingFile(tmp_idx)
            try:
                f.write(f"{IDX_VERSION} {len(self._samples)}\n".encode())
                for parts in self._samples:
                    f.write((" ".join(f"{e} {o} {s} {n}" for e, o, s, n in parts) + "\n").encode())
            finally:
                f.close()
            self._tar_ctx.__exit__(None, None, None)
        self.checksums = {"sha256": self._file.hexdigest(), "idx_sha256": f.hexdigest()}

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


def shard_jpegs(shard) -> list[tuple[str, int, int]]:
    """(key, offset, size) of every sample's .jpg member, from the shard's DALI index, in stored order."""
    version, lines = _index_lines(shard)
    samples = []
    for i, line in enumerate(lines):
        fields = line.split()
        width = 4 if version == "v1.2" else 3  # v1.2 adds the member name to <ext> <offset> <size>
        for j in range(0, len(fields), width):
            if fields[j] == "jpg":
                name = fields[j + 3].split(".", 1)[0] if width == 4 else f"{Path(shard).stem}:{i}"
                samples.append((name, int(fields[j + 1]), int(fields[j + 2])))
    return samples


# ---------------------------------------------------------------- verification


def rebuild_command(split: str, tars) -> str:
    """The Snakemake command that rebuilds exactly these shards of `split`."""
    return f"snakemake --cores all --forcerun {shard_rule(split)} -- {' '.join(map(_target, tars))}"


def _target(path) -> str:
    """A path as a Snakemake target: relative to the working directory (the workflow's), else absolute."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(Path(path).absolute())


def _sha256_of(path: Path, block: int, progress=None) -> str:
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL on large buffers: threads hash in parallel
            if progress is not None:
                progress.update(n)
    return h.hexdigest()


def _check_shard(entry: dict, block: int, progress) -> list[str]:
    """What differs between a shard (tar and .idx) and its manifest entry, in words; [] when nothing does."""
    tar = Path(entry["tar"])
    idx = index_path(tar)  # the index the loaders hand DALI
    problems = []
    for path in (tar, idx):
        if not path.is_file():
            problems.append(f"{path} does not exist")
    if problems:
        return problems
    size = tar.stat().st_size
    if entry.get("bytes") is not None and size != entry["bytes"]:
        problems.append(f"size: expected {entry['bytes']} bytes, found {size}")
    found = _sha256_of(tar, block, progress)
    if found != entry["sha256"]:
        same = " (the same size)" if size == entry.get("bytes") else ""
        problems.append(f"sha256: expected {entry['sha256']}, found {found}{same}")
    if entry.get("idx_sha256"):
        found_idx = _sha256_of(idx, block)
        if found_idx != entry["idx_sha256"]:
            problems.append(f"{idx.name} sha256: expected {entry['idx_sha256']}, found {found_idx}")
    return problems


def verify_shards(
    manifest: str | os.PathLike,
    split: str,
    rank: int = 0,
    world: int = 1,
    threads: int | None = None,
    block: int = VERIFY_BLOCK,
    log=None,
) -> dict:
    """Check the split's shards against the sha256 the manifest recorded when they were written.

    Under several replicas each checks every world-th shard (rank, rank + world, ...): together
    one read of the split. Shards are hashed in parallel by `threads` (default: the usable cores,
    at most 8). Raises ShardChecksumError naming every shard that differs, what differs and the
    command that rebuilds exactly those shards. Shards whose entry has no `sha256` (manifests
    written before the resize stage recorded them) are not checked: one warning line says how
    many and how to rebuild them. Returns {"shards", "bytes", "seconds", "unchecked"}.
    """
    started, log = time.perf_counter(), log or sys.stderr
    entries = manifest_entries(manifest, split)[rank::world]
    checked = [e for e in entries if e.get("sha256")]
    unchecked = [e["tar"] for e in entries if not e.get("sha256")]
    if unchecked:
        print(
            f"warning: {manifest} records no sha256 for {len(unchecked)} of {len(entries)} {split} shards "
            f"(e.g. {unchecked[0]}), so they are read unchecked; they were written before shards carried "
            f"checksums. To have them checked, rebuild them and the manifest: "
            f"snakemake --cores all --forcerun {shard_rule(split)} -- {_target(manifest)}",
            file=log,
        )
    total = sum(Path(e["tar"]).stat().st_size for e in checked if Path(e["tar"]).is_file())
    threads = threads or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    with (
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"verifying {split} shards",
            file=log,
            disable=None if total >= VERIFY_PROGRESS_BYTES else True,
            leave=False,
        ) as bar,
        ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
    ):
        results = list(pool.map(lambda e: _check_shard(e, block, bar), checked))
    bad = [(e, problems) for e, problems in zip(checked, results) if problems]
    if bad:
        lines = "\n".join(f"  {e['tar']}: {'; '.join(problems)}" for e, problems in bad)
        raise ShardChecksumError(
            f"{len(bad)} of {len(entries)} {split} shards differ from what {manifest} recorded when the resize "
            f"stage wrote them (damaged or changed since):\n{lines}\n"
            f"Rebuild {'it' if len(bad) == 1 else 'them'}: {rebuild_command(split, [entry['tar'] for entry, _ in bad])}"
            " (with the run's --configfile options), then rerun the workflow."
        )
    seconds = time.perf_counter() - started
    if checked:
        print(
            f"verified {len(checked)} {split} shards ({total / 1e9:.2f} GB) against {manifest}'s sha256 "
            f"in {seconds:.1f} s ({threads} threads)",
            file=log,
        )
    return {"shards": len(checked), "bytes": total, "seconds": seconds, "unchecked": len(unchecked)}
