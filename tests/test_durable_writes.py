"""Atomic writes that survive a power loss: the file reaches the disk before its new name, the name after."""

from __future__ import annotations

import os

import pytest

from pipeline import io

pytestmark = pytest.mark.unit


@pytest.fixture
def events(monkeypatch):
    """('fsync', path) and ('replace', dst) in the order pipeline.io makes them."""
    seen: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst):
        seen.append(("replace", os.fspath(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    return seen


def test_the_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, events):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    assert io.read_json(target) == {"a": 1}
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(target) + ".tmp-")  # the data, under its temporary name
    assert events[1][1] == str(target)
    assert events[2][1] == str(tmp_path)  # the folder that holds the new name


def test_a_link_is_renamed_with_its_folder_synced(tmp_path, events):
    target = tmp_path / "archive.tar"
    with io.atomic_path(target) as tmp:
        os.symlink(tmp_path / "not-there-yet.tar", tmp)  # a dangling link must not fail the write
    assert target.is_symlink()
    assert events == [("replace", str(target)), ("fsync", str(tmp_path))]


def test_a_failed_write_syncs_and_renames_nothing(tmp_path, events):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert events == [] and list(tmp_path.iterdir()) == []


def test_replace_durably_on_a_relative_name(tmp_path, events, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.part").write_bytes(b"data")
    io.replace_durably("a.part", "a")
    assert (tmp_path / "a").read_bytes() == b"data"
    assert events == [("fsync", str(tmp_path / "a.part")), ("replace", "a"), ("fsync", str(tmp_path))]
