"""The archive index: offsets of nested tars, headers-only reads, unsafe members refused."""

from __future__ import annotations

import io
import re
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline import archive
from pipeline.io import write_tsv

pytestmark = pytest.mark.unit

WNIDS = ["n01440764", "n01443537", "n01484850"]


def jpeg_bytes(seed: int, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, kind=tarfile.REGTYPE, linkname="") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info, io.BytesIO(data))


def class_tar(wnid: str, n: int, extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            add_bytes(tar, f"{wnid}_{i}.JPEG", jpeg_bytes(zlib.crc32(f"{wnid}_{i}".encode())))
        for args in extra:
            add_bytes(tar, *args)
    return buf.getvalue()


def write_train_archive(path, per_class=4, extra_inner=(), extra_outer=()):
    with tarfile.open(path, "w") as tar:
        for k, wnid in enumerate(WNIDS):
            add_bytes(tar, f"{wnid}.tar", class_tar(wnid, per_class, extra_inner if k == 1 else ()))
        for args in extra_outer:
            add_bytes(tar, *args)


@pytest.fixture
def classes(tmp_path):
    path = tmp_path / "classes.tsv"
    write_tsv(path, ["index", "wnid", "names"], [(i, w, f"class {i}") for i, w in enumerate(WNIDS)])
    return path


def test_nested_offsets_point_at_the_member_bytes(tmp_path, classes):
    path = tmp_path / "ILSVRC2012_img_train.tar"
    write_train_archive(path)
    bytes_read = [0]
    rows = list(archive.index_train_archive(path, classes, bytes_read))
    assert len(rows) == 4 * len(WNIDS)

    expected = {}
    with tarfile.open(path) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for image in inner:
                    expected[image.name] = inner.extractfile(image).read()
    raw = path.read_bytes()
    for name, offset, size, label in rows:
        assert raw[offset : offset + size] == expected[name]
        assert label == WNIDS.index(name.split("_")[0])
    # headers only: 512-byte blocks (+ 1-byte end probes), never the image data
    headers = len(rows) + len(WNIDS)
    assert bytes_read[0] <= (headers + 2 * (len(WNIDS) + 1)) * 513
    assert bytes_read[0] < 0.1 * len(raw)


def test_index_file_round_trip_and_subset(tmp_path, classes):
    path = tmp_path / "train.tar"
    write_train_archive(path, per_class=3)
    out = tmp_path / "index" / "train.tsv"
    count = archive.write_index(archive.index_train_archive(path, classes), out)
    assert count == 9 and archive.index_length(out) == 9
    full = archive.read_member_index(out)
    assert full.offset.dtype == np.int64 and full.label.dtype == np.int32 and full.member.dtype.kind == "S"
    assert full.name(0) == f"{WNIDS[0]}_0.JPEG"
    part = archive.read_member_index(out, [8, 0, 4])
    assert [part.name(i) for i in range(3)] == [full.name(8), full.name(0), full.name(4)]
    assert part.offset.tolist() == full.offset[[8, 0, 4]].tolist()
    with pytest.raises(archive.ArchiveIndexError, match="row 9"):
        archive.read_member_index(out, [9])


def test_val_archive_labels_and_mismatch(tmp_path):
    path = tmp_path / "ILSVRC2012_img_val.tar"
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(names):
            add_bytes(tar, name, jpeg_bytes(i))
    labels = tmp_path / "val_labels.tsv"
    write_tsv(labels, ["file", "index"], [(n, i % 3) for i, n in enumerate(names)])
    rows = list(archive.index_val_archive(path, labels))
    assert [(r[0], r[3]) for r in rows] == [(n, i % 3) for i, n in enumerate(names)]
    write_tsv(labels, ["file", "index"], [(n, 0) for n in names[:3]])
    with pytest.raises(archive.ArchiveIndexError, match="ILSVRC2012_val_00000004.JPEG"):
        list(archive.index_val_archive(path, labels))


@pytest.mark.parametrize("where", ["outer", "inner"])
@pytest.mark.parametrize(
    "name,kind,link",
    [
        ("../evil.JPEG", tarfile.REGTYPE, ""),
        ("/etc/evil.JPEG", tarfile.REGTYPE, ""),
        ("link.JPEG", tarfile.SYMTYPE, "../../etc/passwd"),
    ],
)
def test_unsafe_members_refused(tmp_path, classes, where, name, kind, link):
    path = tmp_path / "train.tar"
    bad = [(name, b"" if kind != tarfile.REGTYPE else b"x" * 10, kind, link)]
    write_train_archive(
        path, 2, extra_inner=bad if where == "inner" else (), extra_outer=bad if where == "outer" else ()
    )
    with pytest.raises(archive.UnsafeArchiveError, match="refusing"):
        list(archive.index_train_archive(path, classes))


def tar_member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


REFUSED = [
    (tar_member("/etc/evil.JPEG"), "has an absolute path"),
    (tar_member("n01/../../evil.JPEG"), "contains '..'"),
    (tar_member("..", tarfile.DIRTYPE), "contains '..'"),
    (
        tar_member("n01/link.JPEG", tarfile.SYMTYPE, "../../etc/passwd"),
        "links to '../../etc/passwd' outside the archive",
    ),
    (tar_member("link.JPEG", tarfile.SYMTYPE, "/etc/passwd"), "links to '/etc/passwd' outside the archive"),
    # a hard link's target is relative to the archive's root, not to the member's folder
    (tar_member("n01/n02/hard.JPEG", tarfile.LNKTYPE, "../x.JPEG"), "links to '../x.JPEG' outside the archive"),
    (tar_member("tty", tarfile.CHRTYPE), "is a device file"),
    (tar_member("sda", tarfile.BLKTYPE), "is a device file"),
    (tar_member("pipe", tarfile.FIFOTYPE), "is a FIFO"),
]


@pytest.mark.parametrize("info,message", REFUSED, ids=[m.name for m, _ in REFUSED])
def test_each_refused_kind_has_its_own_message(info, message):
    with pytest.raises(archive.UnsafeArchiveError, match=re.escape(f"x.tar: member {info.name!r} {message}")):
        archive.check_member(info, "x.tar")
    if not info.name.startswith("/"):  # the data filter strips a leading '/' where the project refuses it
        with pytest.raises(tarfile.FilterError):
            tarfile.data_filter(info, "/nonexistent-root")


@pytest.mark.parametrize(
    "info",
    [
        tar_member("n01/a.JPEG"),
        tar_member("n01", tarfile.DIRTYPE),
        tar_member("n01/link.JPEG", tarfile.SYMTYPE, "a.JPEG"),
        tar_member("n01/n02/hard.JPEG", tarfile.LNKTYPE, "n01/a.JPEG"),
    ],
    ids=lambda m: m.name,
)
def test_members_inside_the_archive_pass(info):
    archive.check_member(info, "x.tar")


def test_a_refusal_of_the_data_filter_alone_names_the_member(monkeypatch):
    def refuse(member, dest_path):
        raise tarfile.SpecialFileError(member)

    monkeypatch.setattr(tarfile, "data_filter", refuse)
    with pytest.raises(
        archive.UnsafeArchiveError,
        match=r"x.tar: member 'n01/a.JPEG' is refused by tarfile's data filter \(SpecialFileError",
    ):
        archive.check_member(tar_member("n01/a.JPEG"), "x.tar")


def test_layout_errors_are_clear(tmp_path, classes):
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tar:
        add_bytes(tar, "n01440764_1.JPEG", jpeg_bytes(0))
    with pytest.raises(archive.ArchiveIndexError, match="not a per-class tar"):
        list(archive.index_train_archive(flat, classes))

    unknown = tmp_path / "unknown.tar"
    with tarfile.open(unknown, "w") as tar:
        add_bytes(tar, "n99999999.tar", class_tar("n99999999", 1))
    with pytest.raises(archive.ArchiveIndexError, match="n99999999"):
        list(archive.index_train_archive(unknown, classes))

    gz = tmp_path / "train.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        add_bytes(tar, "n01440764.tar", class_tar("n01440764", 1))
    with pytest.raises(archive.ArchiveIndexError, match="uncompressed"):
        list(archive.index_train_archive(gz, classes))


def test_folder_tree_and_duplicate_keys(tmp_path, classes):
    root = tmp_path / "train"
    for wnid in WNIDS[:2]:
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(i))
    (root / WNIDS[0] / "notes.txt").write_text("not an image")
    rows = list(archive.index_folder(root, classes))
    assert [r[0] for r in rows] == [f"{w}/{w}_{i}.JPEG" for w in WNIDS[:2] for i in range(2)]
    assert all(r[1] == 0 and r[2] == (root / r[0]).stat().st_size for r in rows)
    assert [r[3] for r in rows] == [0, 0, 1, 1]

    (root / WNIDS[1] / f"{WNIDS[0]}_0.jpg").write_bytes(jpeg_bytes(5))
    with pytest.raises(archive.ArchiveIndexError, match="share the name"):
        archive.write_index(archive.index_folder(root, classes), tmp_path / "dup.tsv")
    assert not (tmp_path / "dup.tsv").exists()


def test_image_key_has_no_dots():
    assert archive.image_key("n01440764/n01440764_10026.JPEG") == "n01440764_10026"
    assert archive.image_key("a.b.c.jpg") == "a_b_c"
