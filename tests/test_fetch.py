"""The fetch stage: local and HTTP sources, resume, auth, verification, bad archives, folders."""

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import scipy.io

from pipeline import demo, download, fetch
from pipeline.archive import UnsafeArchiveError
from pipeline.devkit import ArchiveError
from pipeline.io import read_tsv
from pipeline.sources import SourceError

from helpers import REPO

NAMES = fetch.ARCHIVES
TOKEN = "s3cr3t-T0KEN-6f1e2d"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.make_demo(out, seed=3, classes=4, train_per_class=6, val_per_class=3, large_fraction=0.1)
    return out


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def local_args(demo_dir, **override):
    args = {key: str(demo_dir / name) for key, name in NAMES.items()}
    args.update({f"{key}_md5": str(demo_dir / "MD5SUMS") for key in NAMES})
    args.update(override)
    return args


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


def expected_tables(demo_dir):
    """Class table and val labels computed straight from meta.mat, independently of pipeline.devkit."""
    with tarfile.open(demo_dir / NAMES["devkit"]) as tar:
        mat = scipy.io.loadmat(
            io.BytesIO(tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()), squeeze_me=True
        )["synsets"]
        gt = tar.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read().split()
    leaves = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"])) for s in mat if int(s["num_children"]) == 0]
    wnids = sorted(w for _, w, _ in leaves)
    words = {w: n for _, w, n in leaves}
    by_id = {i: w for i, w, _ in leaves}
    classes = [{"index": str(i), "wnid": w, "names": words[w]} for i, w in enumerate(wnids)]
    labels = [
        {"file": f"ILSVRC2012_val_{n:08d}.JPEG", "index": str(wnids.index(by_id[int(i)]))} for n, i in enumerate(gt, 1)
    ]
    return classes, labels, [w for _, w, _ in sorted(leaves)]


# ---------------------------------------------------------------- local sources


@pytest.mark.unit
def test_local_sources_are_verified_and_linked(demo_dir, tmp_path):
    out = tmp_path / "fetch"
    m = fetch.fetch_archives(out, **local_args(demo_dir))
    for key, name in NAMES.items():
        link = out / name
        assert link.is_symlink() and os.path.isabs(os.readlink(link))
        assert Path(os.readlink(link)) == (demo_dir / name).absolute()
        assert m[key]["md5"] == md5(demo_dir / name) and m[key]["bytes"] == (demo_dir / name).stat().st_size
        assert {"seconds", "mb_per_s"} <= set(m[key])
    assert m["classes"] == 4 and m["val_images"] == 12
    assert (out / "fetch.json").exists()


@pytest.mark.unit
def test_class_table_is_sorted_wnids_and_labels_follow_the_ids(demo_dir, tmp_path):
    out = tmp_path / "fetch"
    fetch.fetch_archives(out, **local_args(demo_dir))
    classes, labels, ids_order = expected_tables(demo_dir)
    assert ids_order != sorted(ids_order)  # the mapping is exercised, not the identity
    got = read_tsv(out / "classes.tsv")
    assert got == classes and [r["wnid"] for r in got] == sorted(r["wnid"] for r in got)
    assert len(got) == 4  # the non-leaf synsets (entity, ...) are not classes
    assert read_tsv(out / "val_labels.tsv") == labels


@pytest.mark.unit
def test_file_url_and_hex_digest(demo_dir, tmp_path):
    args = local_args(
        demo_dir, devkit=(demo_dir / NAMES["devkit"]).absolute().as_uri(), devkit_md5=md5(demo_dir / NAMES["devkit"])
    )
    fetch.fetch_archives(tmp_path / "fetch", **args)
    assert (tmp_path / "fetch" / NAMES["devkit"]).is_symlink()


@pytest.mark.unit
def test_file_urls_with_localhost_for_archives_and_md5sum_file(demo_dir, tmp_path):
    def localhost_url(path):  # RFC 8089: file://localhost/path is file:///path
        return "file://localhost" + Path(path).absolute().as_uri()[len("file://") :]

    args = {key: localhost_url(demo_dir / name) for key, name in NAMES.items()}
    args.update({f"{key}_md5": localhost_url(demo_dir / "MD5SUMS") for key in NAMES})
    m = fetch.fetch_archives(tmp_path / "fetch", **args)
    for key, name in NAMES.items():
        assert Path(os.readlink(tmp_path / "fetch" / name)) == (demo_dir / name).absolute()
        assert m[key]["verified"] and m[key]["md5"] == md5(demo_dir / name)


@pytest.mark.unit
def test_file_url_on_another_host_is_refused(demo_dir, tmp_path):
    url = "file://fileserver" + (demo_dir / NAMES["devkit"]).absolute().as_uri()[len("file://") :]
    with pytest.raises(SourceError, match="must name a local file"):
        fetch.fetch_archives(tmp_path / "fetch", **local_args(demo_dir, devkit=url))


@pytest.mark.unit
def test_md5_mismatch_names_file_expected_actual_and_leaves_nothing(demo_dir, tmp_path):
    out = tmp_path / "fetch"
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(fetch.FetchError) as e:
        fetch.fetch_archives(out, **local_args(demo_dir, train_md5=wrong))
    msg = str(e.value)
    assert NAMES["train"] in msg and wrong in msg and md5(demo_dir / NAMES["train"]) in msg
    assert leftovers(out) == []


@pytest.mark.unit
def test_cli_reports_errors_without_traceback(demo_dir, tmp_path, capsys):
    args = local_args(demo_dir, val_md5="f" * 32)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()] + ["--out-dir", str(tmp_path / "f")]
    assert fetch.main(argv) == 1
    err = capsys.readouterr().err
    assert "\nerror: ILSVRC2012_img_val.tar: MD5 mismatch" in err and "Traceback" not in err


def truncated_copies(demo_dir, tmp_path):
    """The val tar cut in the middle of a member, and cut exactly at a member header."""
    src = (demo_dir / NAMES["val"]).read_bytes()
    with tarfile.open(demo_dir / NAMES["val"]) as tar:
        header = tar.getmembers()[5].offset
    for label, size in (("middle", len(src) // 2), ("header", header)):
        path = tmp_path / label / NAMES["val"]
        path.parent.mkdir()
        path.write_bytes(src[:size])
        yield label, path


@pytest.mark.unit
def test_truncated_archive_with_matching_md5_is_an_error(demo_dir, tmp_path):
    for label, path in truncated_copies(demo_dir, tmp_path):
        out = tmp_path / f"fetch-{label}"
        with pytest.raises(ArchiveError, match="truncated or damaged"):
            fetch.fetch_archives(out, **local_args(demo_dir, val=str(path), val_md5=md5(path)))
        assert leftovers(out) == [], label


def rewrite_tar(src: Path, dst: Path, extra_name: str, gz: bool = False) -> None:
    """A copy of the archive `src` with one more member, named `extra_name`."""
    raw = src.read_bytes()
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw) if gz else raw)) as old,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as new,
    ):
        for m in old:
            new.addfile(m, old.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo(extra_name)
        info.size = 4
        new.addfile(info, io.BytesIO(b"evil"))
    dst.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())


@pytest.mark.unit
@pytest.mark.parametrize(
    "key,name",
    [
        ("devkit", "ILSVRC2012_devkit_t12/../../evil.txt"),
        ("devkit", "/etc/evil.txt"),
        ("train", "../n09999999.tar"),
        ("train", "/abs/n09999999.tar"),
    ],
)
def test_unsafe_members_are_refused(demo_dir, tmp_path, key, name):
    bad = tmp_path / "bad" / NAMES[key]
    bad.parent.mkdir()
    rewrite_tar(demo_dir / NAMES[key], bad, name, gz=key == "devkit")
    out = tmp_path / "fetch"
    with pytest.raises(UnsafeArchiveError, match=re.escape(name)):
        fetch.fetch_archives(out, **local_args(demo_dir, **{key: str(bad), f"{key}_md5": md5(bad)}))
    assert leftovers(out) == []


@pytest.mark.unit
def test_missing_local_file_is_a_clear_error(demo_dir, tmp_path):
    with pytest.raises(fetch.FetchError, match="no such file"):
        fetch.fetch_archives(tmp_path / "f", **local_args(demo_dir, train=str(tmp_path / "nope.tar")))


# ---------------------------------------------------------------- http


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.requests: list[tuple[str, dict]] = []
        self.drop_first: set[str] = set()  # paths whose first response stops half-way
        self.auth: tuple[str, str] | None = None  # required header
        self.ignore_range = False  # answer every request with the whole file, as some servers do

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def requests_for(self, name: str) -> list[dict]:
        return [h for p, h in self.requests if p == f"/{name}"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, dict(self.headers)))
        if srv.auth and self.headers.get(srv.auth[0]) != srv.auth[1]:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        for prefix, host in (("/moved/", "127.0.0.1"), ("/moved-away/", "localhost")):
            if self.path.startswith(prefix):
                self.send_response(302)
                self.send_header("Location", f"http://{host}:{srv.server_address[1]}/{self.path[len(prefix) :]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m and not srv.ignore_range and int(m.group(1)) >= len(data):
            self.send_response(416)  # RFC 9110: a range past the end is not satisfiable
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if m and not srv.ignore_range:
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.drop_first:
            srv.drop_first.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(demo_dir, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = Server(demo_dir)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def http_args(server, demo_dir, **override):
    args = {key: server.url(name) for key, name in NAMES.items()}
    args.update({f"{key}_md5": md5(demo_dir / name) for key, name in NAMES.items()})
    args.update(override)
    return args


@pytest.mark.integration
def test_download_completes(server, demo_dir, tmp_path):
    out = tmp_path / "fetch"
    m = fetch.fetch_archives(out, **http_args(server, demo_dir))
    for key, name in NAMES.items():
        assert (out / name).resolve().read_bytes() == (demo_dir / name).read_bytes()
        assert os.path.isabs(os.readlink(out / name)) and m[key]["method"] == "download"
    assert not list(out.rglob("*.part"))
    assert read_tsv(out / "classes.tsv") == expected_tables(demo_dir)[0]


@pytest.mark.integration
def test_download_resumes_after_a_dropped_connection(server, demo_dir, tmp_path):
    server.drop_first.add(f"/{NAMES['val']}")
    out = tmp_path / "fetch"
    m = fetch.fetch_archives(out, **http_args(server, demo_dir))
    first, second = server.requests_for(NAMES["val"])
    size = (demo_dir / NAMES["val"]).stat().st_size
    assert "Range" not in first and second["Range"] == f"bytes={size - size // 2}-"
    assert m["val"]["md5"] == md5(demo_dir / NAMES["val"]) == md5(out / NAMES["val"])


@pytest.mark.integration
def test_part_file_of_an_earlier_run_is_resumed(server, demo_dir, tmp_path):
    data = (demo_dir / NAMES["train"]).read_bytes()
    part = tmp_path / "fetch" / "downloads" / f"{NAMES['train']}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    fetch.fetch_archives(tmp_path / "fetch", **http_args(server, demo_dir))
    assert server.requests_for(NAMES["train"])[0]["Range"] == "bytes=1000-"
    assert (tmp_path / "fetch" / NAMES["train"]).read_bytes() == data and not part.exists()


@pytest.mark.integration
def test_part_file_from_another_url_is_not_resumed(server, demo_dir, tmp_path):
    # dataset.archives.train.url changed after an interrupted download: its bytes must not be spliced in
    data = (demo_dir / NAMES["train"]).read_bytes()
    part = tmp_path / "fetch" / "downloads" / f"{NAMES['train']}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)
    part.with_name(part.name + ".url").write_text("https://elsewhere.example/old.tar\n")
    fetch.fetch_archives(tmp_path / "fetch", **http_args(server, demo_dir, train_md5=None))
    assert "Range" not in server.requests_for(NAMES["train"])[0]
    assert (tmp_path / "fetch" / NAMES["train"]).read_bytes() == data
    assert not list((tmp_path / "fetch" / "downloads").glob("*.part*"))


def earlier_part(dest: Path, url: str, data: bytes) -> Path:
    """What an interrupted run left: `dest`.part holding `data`, begun from `url`."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    part.with_name(part.name + ".url").write_text(url + "\n")
    return part


@pytest.mark.integration
def test_download_starts_over_when_the_server_ignores_the_range(server, demo_dir, tmp_path):
    data = (demo_dir / NAMES["val"]).read_bytes()
    dest, url = tmp_path / NAMES["val"], server.url(NAMES["val"])
    part = earlier_part(dest, url, b"x" * 1000)  # not the file's first bytes: splicing would corrupt it
    server.ignore_range = True
    assert download.download(url, dest, retries=0) == (md5(demo_dir / NAMES["val"]), len(data))
    assert part.read_bytes() == data
    assert server.requests_for(NAMES["val"])[0]["Range"] == "bytes=1000-"


@pytest.mark.integration
def test_download_of_a_complete_part_file_asks_once_and_sends_nothing(server, demo_dir, tmp_path):
    data = (demo_dir / NAMES["val"]).read_bytes()
    dest, url = tmp_path / NAMES["val"], server.url(NAMES["val"])
    part = earlier_part(dest, url, data)
    assert download.download(url, dest, retries=0) == (md5(demo_dir / NAMES["val"]), len(data))
    assert [h["Range"] for h in server.requests_for(NAMES["val"])] == [f"bytes={len(data)}-"]
    assert part.read_bytes() == data


@pytest.mark.integration
def test_download_of_a_part_file_longer_than_the_source_starts_over(server, demo_dir, tmp_path):
    data = (demo_dir / NAMES["val"]).read_bytes()
    dest, url = tmp_path / NAMES["val"], server.url(NAMES["val"])
    part = earlier_part(dest, url, data + b"tail")
    assert download.download(url, dest, retries=1, backoff=0) == (md5(demo_dir / NAMES["val"]), len(data))
    assert [h.get("Range") for h in server.requests_for(NAMES["val"])] == [f"bytes={len(data) + 4}-", None]
    assert part.read_bytes() == data


@pytest.mark.integration
def test_auth_header_bearer_and_custom(server, demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FETCH_TEST_TOKEN", TOKEN)
    server.auth = ("Authorization", f"Bearer {TOKEN}")
    fetch.fetch_archives(tmp_path / "a", **http_args(server, demo_dir), auth_env="FETCH_TEST_TOKEN")
    monkeypatch.setenv("FETCH_TEST_TOKEN", f"X-Api-Key: {TOKEN}")
    server.auth = ("X-Api-Key", TOKEN)
    fetch.fetch_archives(tmp_path / "b", **http_args(server, demo_dir), auth_env="FETCH_TEST_TOKEN")
    assert all(h.get("X-Api-Key") == TOKEN for _, h in server.requests[-3:])


@pytest.mark.integration
def test_auth_header_follows_redirects_only_on_the_same_host(server, demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FETCH_TEST_TOKEN", TOKEN)
    args = http_args(server, demo_dir)
    args["devkit"] = args["devkit"].replace(f"/{NAMES['devkit']}", f"/moved/{NAMES['devkit']}")
    args["val"] = args["val"].replace(f"/{NAMES['val']}", f"/moved-away/{NAMES['val']}")
    fetch.fetch_archives(tmp_path / "f", **args, auth_env="FETCH_TEST_TOKEN")
    assert server.requests_for(NAMES["devkit"])[-1]["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in server.requests_for(NAMES["val"])[-1]


@pytest.mark.integration
def test_wrong_credentials_are_a_clear_error(server, demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FETCH_TEST_TOKEN", "wrong")
    server.auth = ("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(fetch.FetchError, match="HTTP 401"):
        fetch.fetch_archives(tmp_path / "f", **http_args(server, demo_dir), auth_env="FETCH_TEST_TOKEN")
    monkeypatch.delenv("FETCH_TEST_TOKEN")
    with pytest.raises(fetch.FetchError, match="FETCH_TEST_TOKEN"):
        fetch.fetch_archives(tmp_path / "g", **http_args(server, demo_dir), auth_env="FETCH_TEST_TOKEN")


def run_cli(server, demo_dir, out, token_value, **override):
    args = http_args(server, demo_dir, **override)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["FETCH_TEST_TOKEN"] = token_value
    return subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", *argv, "--auth-env", "FETCH_TEST_TOKEN", "--out-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_token_never_reaches_output_or_files(server, demo_dir, tmp_path):
    server.auth = ("Authorization", f"Bearer {TOKEN}")
    server.drop_first.add(f"/{NAMES['train']}")  # the resume path prints too
    out = tmp_path / "fetch"
    ok = run_cli(server, demo_dir, out, TOKEN)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(server, demo_dir, tmp_path / "bad", TOKEN, train_md5="0" * 32)  # an error path
    assert bad.returncode == 1 and "MD5 mismatch" in bad.stderr
    server.auth = ("Authorization", "Bearer other")
    denied = run_cli(server, demo_dir, tmp_path / "denied", TOKEN)
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr
    for proc in (ok, bad, denied):
        assert TOKEN not in proc.stdout + proc.stderr
    for path in list(out.rglob("*")) + list((tmp_path / "bad").rglob("*")):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.integration
def test_download_md5_mismatch_leaves_nothing(server, demo_dir, tmp_path):
    out = tmp_path / "fetch"
    wrong = "0" * 32
    with pytest.raises(fetch.FetchError) as e:
        fetch.fetch_archives(out, **http_args(server, demo_dir, val_md5=wrong))
    msg = str(e.value)
    assert NAMES["val"] in msg and wrong in msg and md5(demo_dir / NAMES["val"]) in msg
    assert not (out / "downloads" / NAMES["val"]).exists() and not list(out.rglob("*.part"))
    assert not any((out / n).exists() for n in ("classes.tsv", "val_labels.tsv", "fetch.json", NAMES["val"]))


@pytest.mark.integration
def test_truncated_download_is_deleted(server, demo_dir, tmp_path):
    (path,) = [p for label, p in truncated_copies(demo_dir, tmp_path) if label == "middle"]
    shutil.copy(path, demo_dir / "cut.tar")
    try:
        out = tmp_path / "fetch"
        with pytest.raises(ArchiveError, match="truncated"):
            fetch.fetch_archives(out, **http_args(server, demo_dir, val=server.url("cut.tar"), val_md5=md5(path)))
        assert not (out / "downloads" / NAMES["val"]).exists()
        assert not any((out / n).exists() for n in ("classes.tsv", "fetch.json"))
    finally:
        (demo_dir / "cut.tar").unlink()


@pytest.mark.integration
def test_verified_download_is_reused(server, demo_dir, tmp_path):
    out = tmp_path / "fetch"
    fetch.fetch_archives(out, **http_args(server, demo_dir))
    (out / NAMES["train"]).unlink()  # what Snakemake does to outputs before a rerun
    count = len(server.requests)
    fetch.fetch_archives(out, **http_args(server, demo_dir))
    assert len(server.requests) == count and (out / NAMES["train"]).is_symlink()


# ---------------------------------------------------------------- folders


def make_tree(root: Path, layout: dict[str, int]) -> None:
    for wnid, n in layout.items():
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"\xff\xd8 not decoded here")
    (root / next(iter(layout)) / "notes.txt").write_text("not an image")


@pytest.mark.unit
def test_folders_source(tmp_path, demo_dir):
    make_tree(tmp_path / "train", {"n03000684": 2, "n01440764": 3, "n02102040": 2})
    make_tree(tmp_path / "val", {"n03000684": 1, "n01440764": 2})
    out = tmp_path / "fetch"
    m = fetch.fetch_folders(out, tmp_path / "train", tmp_path / "val")
    classes = read_tsv(out / "classes.tsv")
    assert [(c["index"], c["wnid"], c["names"]) for c in classes] == [
        ("0", "n01440764", "n01440764"),
        ("1", "n02102040", "n02102040"),
        ("2", "n03000684", "n03000684"),
    ]
    assert [(r["file"], r["index"]) for r in read_tsv(out / "val_labels.tsv")] == [
        ("n01440764/n01440764_0.JPEG", "0"),
        ("n01440764/n01440764_1.JPEG", "0"),
        ("n03000684/n03000684_0.JPEG", "2"),
    ]
    assert m["train_images"] == 7 and m["val_images"] == 3
    assert not any((out / name).exists() for name in NAMES.values())
    # With a devkit the names come from meta.mat.
    fetch.fetch_folders(
        out,
        tmp_path / "train",
        tmp_path / "val",
        devkit=str(demo_dir / NAMES["devkit"]),
        devkit_md5=str(demo_dir / "MD5SUMS"),
    )
    assert read_tsv(out / "classes.tsv")[0]["names"] == "tench, Tinca tinca"


@pytest.mark.unit
def test_folders_source_errors(tmp_path):
    make_tree(tmp_path / "train", {"n01440764": 1})
    make_tree(tmp_path / "val", {"n09999999": 1})
    with pytest.raises(fetch.FetchError, match="n09999999"):
        fetch.fetch_folders(tmp_path / "f", tmp_path / "train", tmp_path / "val")
    with pytest.raises(fetch.FetchError, match="no such folder"):
        fetch.fetch_folders(tmp_path / "f", tmp_path / "nope", tmp_path / "val")
    assert leftovers(tmp_path / "f") == []
