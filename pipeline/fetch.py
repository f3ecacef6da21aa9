"""Fetch stage: get the ILSVRC-2012 archives, verify them, read the class list.

    python -m pipeline.fetch --train URL --train-md5 X --val URL --val-md5 X \
        --devkit URL --devkit-md5 X [--auth-env NAME] --out-dir results/fetch
    python -m pipeline.fetch --source folders --train-dir D --val-dir D --out-dir results/fetch

Sources: https:// or http:// (downloaded into out-dir/downloads/ through a
`.part` file that an interrupted run resumes with an HTTP Range request), or a
local path or file:// URL (verified in place). Either way out-dir/<archive>
is then an absolute symlink to the verified file: the 138 GB train archive is
never copied, and when Snakemake deletes the rule's outputs before a rerun it
deletes only the link, so a verified download is reused. MD5 is a 32-hex digest or an md5sum-format file
listing the archive's name; official digests: train
1d675b47d978889d74fa0da5fadfb00e, val 29b22e2961454d5413ddabcf34fc5622,
devkit fa75699e90414af021442c21a62c3abf. A mismatch deletes the download and
names file, expected and actual digest.

Checks beyond MD5: the devkit is read to the end; the val tar's 50,000 member
headers and the train tar's 1,000 per-class headers are read to the end (a
truncated archive fails here even when its md5 was recorded after the
damage), every member goes through pipeline.archive.check_member, and the
member names must match the devkit (val file names, one <wnid>.tar per class).

Writes classes.tsv (index, wnid, names; index = sorted-wnid position),
val_labels.tsv (file, index; ILSVRC2012_ID ground truth mapped through
meta.mat) and fetch.json (bytes, seconds, MB/s, md5 per archive) last, so a
failed run leaves no complete-looking output.

Authentication: --auth-env names an environment variable; a value with ':'
is sent as 'Header-Name: value', otherwise as 'Authorization: Bearer <value>'
(pipeline.download does the HTTP and keeps the value out of logs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline import sources
from pipeline.devkit import ArchiveError, Devkit, iter_safe_members, open_tar, read_devkit
from pipeline.download import CHUNK, DownloadError, auth_header, download
from pipeline.errors import PipelineError, run_cli
from pipeline.io import atomic_path, replace_durably, write_json, write_tsv
from pipeline.sources import ARCHIVES, is_md5_digest, is_remote, md5sum_line

OUTPUTS = ("fetch.json", "classes.tsv", "val_labels.tsv")
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png"}
BIG = 1 << 30  # show a progress bar when hashing files over 1 GiB


class FetchError(PipelineError, RuntimeError):
    """A source that cannot be fetched or does not verify."""


# ---------------------------------------------------------------- checksums


def md5_file(path: str | Path, label: str | None = None) -> str:
    size = os.path.getsize(path)
    h = hashlib.md5()
    with (
        open(path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"md5 {label or Path(path).name}",
            file=sys.stderr,
            disable=None if size >= BIG else True,
        ) as bar,
    ):
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def expected_md5(spec: str | None, name: str) -> str | None:
    """The digest `spec` gives for the archive `name`: a hex digest or an md5sum file."""
    if not spec:
        return None
    if is_md5_digest(spec):
        return spec.lower()
    path = Path(sources.local_path(spec))
    if not path.is_file():
        raise FetchError(f"md5 {spec!r} is neither a 32-hex digest nor an existing md5sum file")
    for line in path.read_text().splitlines():
        entry = md5sum_line(line)
        if entry and os.path.basename(entry[1]) == name:
            return entry[0]
    raise FetchError(f"{spec}: no md5 line for {name}; add '<md5>  {name}' or give the digest itself")


def verify(name: str, expected: str | None, actual: str, where: str) -> None:
    if expected is None:
        print(f"{name}: no md5 given; its md5 is {actual} (not verified)", file=sys.stderr)
    elif actual != expected:
        raise FetchError(
            f"{name}: MD5 mismatch for {where}: expected {expected}, got {actual}; "
            "the file is damaged or not the archive the config names"
        )


# ---------------------------------------------------------------- sources


def local_path(url: str) -> Path:
    """The file a local path or file:// URL names, made absolute."""
    return Path(os.path.abspath(sources.local_path(url)))


@dataclass
class Fetched:
    """An archive that verified: where to read it, and where to link it from."""

    key: str
    path: Path
    link_to: Path  # absolute; linked into out_dir once everything verifies
    owned: bool  # a download of ours, deleted if it turns out damaged
    metrics: dict


def obtain(key: str, url: str, md5: str | None, out: Path, auth_env: str | None, retries: int) -> Fetched:
    """Verify a local archive in place, or download and verify a remote one."""
    name = ARCHIVES[key]
    t0 = time.perf_counter()
    if is_remote(url):
        expected = expected_md5(md5, os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) or name)
        # Downloads live in downloads/, which Snakemake does not manage: it deletes a
        # rule's outputs before a rerun, and the output is only a link to the download.
        dest = out / "downloads" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and expected and md5_file(dest, name) == expected:
            print(f"{name}: already downloaded and verified", file=sys.stderr)
            actual, size = expected, dest.stat().st_size
        else:
            dest.unlink(missing_ok=True)
            actual, size = _download(key, url, dest, auth_env, retries)
            part = dest.with_name(dest.name + ".part")
            if expected is not None and actual != expected:
                part.unlink()
            verify(name, expected, actual, url)
            replace_durably(part, dest)
            part.with_name(part.name + ".url").unlink(missing_ok=True)
        path, link_to, owned = dest, dest.absolute(), True
    else:
        path = local_path(url)
        if not path.is_file():
            raise FetchError(
                f"{url}: no such file ({path}; dataset.archives.{key}.url); point it at the archive or an https:// URL"
            )
        size = path.stat().st_size
        actual = md5_file(path, name)
        verify(name, expected_md5(md5, path.name), actual, str(path))
        link_to, owned = path, False
    seconds = time.perf_counter() - t0
    metrics = {
        "bytes": size,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / seconds, 2) if seconds > 0 else 0.0,
        "md5": actual,
        "verified": md5 is not None and md5 != "",
        "method": "download" if is_remote(url) else "link",
    }
    print(
        f"{name}: {size / 1e6:.1f} MB {'verified' if metrics['verified'] else 'unverified'} "
        f"in {seconds:.1f} s ({metrics['mb_per_s']} MB/s)",
        file=sys.stderr,
    )
    return Fetched(key, path, link_to, owned, metrics)


def _download(key: str, url: str, dest: Path, auth_env: str | None, retries: int) -> tuple[str, int]:
    """Download one archive; a failure names the config key to look at."""
    try:
        auth = auth_header(auth_env)
    except DownloadError as e:
        raise FetchError(f"{e} (dataset.auth_env names it)") from None
    try:
        return download(url, dest, auth, retries=retries)
    except DownloadError as e:
        hint = (
            "check the credentials in the variable dataset.auth_env names"
            if e.status in (401, 403)
            else f"dataset.archives.{key}.url"
        )
        raise FetchError(f"{e} ({hint})") from None


def check_val_archive(path: Path, devkit: Devkit) -> int:
    """Read every header of the val tar; its images must be the ground truth's."""
    archive = str(path)
    with open_tar(path) as tar:
        names = {m.name for m in iter_safe_members(tar, archive) if m.isfile()}
    expected = {f for f, _ in devkit.val_rows()}
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise ArchiveError(
            f"{archive}: holds {len(names)} images, the devkit ground truth lists {len(expected)} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); are val tar and devkit from the same release?"
        )
    return len(names)


def check_train_archive(path: Path, devkit: Devkit) -> int:
    """Read the train tar's outer headers: one <wnid>.tar per devkit class."""
    archive = str(path)
    with open_tar(path) as tar:
        names = {m.name for m in iter_safe_members(tar, archive) if m.isfile()}
    expected = {f"{w}.tar" for w in devkit.wnids}
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise ArchiveError(
            f"{archive}: per-class tars do not match the devkit's {len(expected)} classes "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    return len(names)


def _validated(fetched: Fetched, check, *args):
    """Run an archive check; a download that fails it is deleted, not kept as complete."""
    try:
        return check(fetched.path, *args)
    except ValueError:
        if fetched.owned:
            fetched.path.unlink(missing_ok=True)
        raise


def _link(src: Path, dest: Path) -> None:
    if os.path.realpath(src) == os.path.realpath(dest):
        return  # the source already is the output
    with atomic_path(dest) as tmp:
        os.symlink(src, tmp)


def _clear_outputs(out: Path) -> None:
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for name in ARCHIVES.values():
        if (out / name).is_symlink():
            (out / name).unlink()


def fetch_archives(
    out_dir: str | Path,
    train: str,
    val: str,
    devkit: str,
    train_md5: str | None = None,
    val_md5: str | None = None,
    devkit_md5: str | None = None,
    auth_env: str | None = None,
    retries: int = 5,
) -> dict:
    """Fetch and verify the three official archives; write the class and label tables."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out)
    # Small first: a bad devkit or val archive fails before the 138 GB download.
    dk = obtain("devkit", devkit, devkit_md5, out, auth_env, retries)
    kit = _validated(dk, read_devkit)
    va = obtain("val", val, val_md5, out, auth_env, retries)
    val_images = _validated(va, check_val_archive, kit)
    tr = obtain("train", train, train_md5, out, auth_env, retries)
    train_classes = _validated(tr, check_train_archive, kit)
    for f in (dk, va, tr):
        _link(f.link_to, out / ARCHIVES[f.key])
    metrics = {f.key: f.metrics for f in (dk, va, tr)}
    metrics.update(source="archives", classes=len(kit.wnids), val_images=val_images, train_class_archives=train_classes)
    return _write_tables(out, kit.class_rows(), kit.val_rows(), metrics, t0)


def _images(folder: Path) -> list[Path]:
    """Image files in `folder`, by name; DirEntry avoids a stat per file on big trees."""
    with os.scandir(folder) as it:
        return sorted(
            Path(e.path)
            for e in it
            if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and not e.name.startswith(".") and e.is_file()
        )


def _class_dirs(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise FetchError(f"{root}: no such folder (dataset.folders.{what}); point it at a {what}/<wnid>/*.JPEG tree")
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def fetch_folders(
    out_dir: str | Path,
    train_dir: str | Path,
    val_dir: str | Path,
    devkit: str | None = None,
    devkit_md5: str | None = None,
    auth_env: str | None = None,
    retries: int = 5,
) -> dict:
    """Class table from train/<wnid>/ folder names, val labels from val/<wnid>/."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out)
    train_dirs = _class_dirs(Path(train_dir), "train")
    if not train_dirs:
        raise FetchError(f"{train_dir}: no class folders (dataset.folders.train); expected train/<wnid>/*.JPEG")
    wnids = [d.name for d in train_dirs]
    index = {w: i for i, w in enumerate(wnids)}
    names = list(wnids)
    metrics: dict = {"source": "folders"}
    if devkit:
        dk = obtain("devkit", devkit, devkit_md5, out, auth_env, retries)
        kit = _validated(dk, read_devkit)
        words = dict(zip(kit.wnids, kit.names))
        unknown = [w for w in wnids if w not in words]
        if unknown:
            raise FetchError(
                f"{train_dir}: class folders {unknown[:3]} are not leaf synsets of the devkit "
                f"{devkit}; drop the devkit (names = folder names) or fix the folders"
            )
        names = [words[w] for w in wnids]
        _link(dk.link_to, out / ARCHIVES["devkit"])
        metrics["devkit"] = dk.metrics
    val_rows = []
    root = Path(val_dir)
    for d in _class_dirs(root, "val"):
        if d.name not in index:
            raise FetchError(f"{d}: val class {d.name!r} has no train folder in {train_dir}")
        val_rows += [(p.relative_to(root).as_posix(), index[d.name]) for p in _images(d)]
    if not val_rows:
        raise FetchError(f"{val_dir}: no images (dataset.folders.val); expected val/<wnid>/*.JPEG")
    metrics.update(classes=len(wnids), val_images=len(val_rows), train_images=sum(len(_images(d)) for d in train_dirs))
    return _write_tables(out, [(i, w, n) for i, (w, n) in enumerate(zip(wnids, names))], val_rows, metrics, t0)


def _write_tables(out: Path, class_rows, val_rows, metrics: dict, t0: float) -> dict:
    write_tsv(out / "classes.tsv", ["index", "wnid", "names"], class_rows)
    write_tsv(out / "val_labels.tsv", ["file", "index"], val_rows)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(out / "fetch.json", metrics)  # last: its presence marks a finished fetch
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.fetch", description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("archives", "folders"), default="archives")
    for key in ARCHIVES:
        p.add_argument(f"--{key}", help=f"{ARCHIVES[key]}: https://, http://, file:// URL or path")
        p.add_argument(f"--{key}-md5", help="32-hex digest or md5sum-format file")
    p.add_argument("--train-dir", help="folders source: train/<wnid>/*.JPEG")
    p.add_argument("--val-dir", help="folders source: val/<wnid>/*.JPEG")
    p.add_argument("--auth-env", help="NAME of the environment variable holding the HTTP token (not the token)")
    p.add_argument("--retries", type=int, default=5, help="reconnects without progress before giving up")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    if a.source == "folders" and not (a.train_dir and a.val_dir):
        p.error("--source folders needs --train-dir and --val-dir")
    missing = [f"--{k}" for k in ARCHIVES if not getattr(a, k)]
    if a.source == "archives" and missing:
        p.error(f"--source archives needs {' '.join(missing)}")
    return run_cli(_fetch_and_report, a)


def _fetch_and_report(a: argparse.Namespace) -> None:
    if a.source == "folders":
        m = fetch_folders(a.out_dir, a.train_dir, a.val_dir, a.devkit, a.devkit_md5, a.auth_env, a.retries)
    else:
        m = fetch_archives(
            a.out_dir, a.train, a.val, a.devkit, a.train_md5, a.val_md5, a.devkit_md5, a.auth_env, a.retries
        )
    print(
        f"fetch: {m['classes']} classes, {m['val_images']} val images ({m['source']}) in {a.out_dir}, "
        f"{m['seconds']:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
