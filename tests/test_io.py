"""pipeline/io.py: outputs appear whole or not at all; JSON and TSV round trips; the class table's checks."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.io import TableError, atomic_path, read_classes, read_json, read_tsv, write_json, write_tsv

pytestmark = pytest.mark.unit


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_path_renames_into_place_and_makes_the_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("done")
        assert not target.exists()  # nothing under the final name until the body succeeds
    assert target.read_text() == "done"
    assert leftovers(target.parent) == []


def test_a_failing_write_leaves_neither_the_target_nor_a_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_rewrite_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.tsv"
    write_tsv(target, ["a", "b"], [(1, 2)])

    def rows():
        yield (3, 4)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_tsv(target, ["a", "b"], rows())
    assert read_tsv(target) == [{"a": "1", "b": "2"}]
    assert leftovers(tmp_path) == []


def test_a_dangling_link_left_by_a_failed_body_is_removed(tmp_path):
    target = tmp_path / "best.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.symlink_to(tmp_path / "gone.pt")  # exists() is False for it; it must go all the same
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip_keeps_order_and_text_and_reads_by_eye(tmp_path):
    obj = {"z": 1, "a": [1.5, None, True], "names": "tench, Tinca tinca", "unicode": "Zürich"}
    path = tmp_path / "sub" / "x.json"
    write_json(path, obj)
    assert read_json(path) == obj
    text = path.read_text()
    assert list(json.loads(text)) == ["z", "a", "names", "unicode"]  # written in the caller's order
    assert text.endswith("}\n") and '\n  "z": 1,' in text


def test_tsv_round_trip_with_commas_quotes_and_tabs_in_fields(tmp_path):
    rows = [(0, "n01440764", "tench, Tinca tinca"), (1, "n01443537", 'say "goldfish"'), (2, "n0\tx", "")]
    path = tmp_path / "classes.tsv"
    write_tsv(path, ["index", "wnid", "names"], rows)
    assert path.read_text().splitlines()[0] == "index\twnid\tnames"
    assert read_tsv(path) == [{"index": str(i), "wnid": w, "names": n} for i, w, n in rows]


def test_read_classes_returns_the_rows_in_index_order(tmp_path):
    path = tmp_path / "classes.tsv"
    write_tsv(path, ["index", "wnid", "names"], [(0, "n01", "a"), (1, "n02", "b, c")])
    assert read_classes(path) == [
        {"index": "0", "wnid": "n01", "names": "a"},
        {"index": "1", "wnid": "n02", "names": "b, c"},
    ]
    write_tsv(path, ["index", "wnid", "names"], [])
    assert read_classes(path) == []


@pytest.mark.parametrize(
    "header, rows, words",
    [
        (["wnid", "names"], [("n01", "a")], ["row 1 has no integer 'index' column", "fetch stage's classes.tsv"]),
        (["index", "wnid", "names"], [("zero", "n01", "a")], ["row 1 has no integer 'index' column"]),
        (
            ["index", "wnid", "names"],
            [(0, "n01", "a"), (2, "n02", "b")],
            ["row 2 has index 2, expected 1", "rerun the fetch stage"],
        ),
        (["index", "wnid", "names"], [(1, "n01", "a"), (0, "n02", "b")], ["row 1 has index 1, expected 0"]),
    ],
)
def test_read_classes_names_the_file_the_row_and_what_to_do(tmp_path, header, rows, words):
    path = tmp_path / "classes.tsv"
    write_tsv(path, header, rows)
    with pytest.raises(TableError) as err:
        read_classes(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)
    # the stages' CLIs report PipelineErrors as one line; callers that catch ValueError still do
    assert isinstance(err.value, PipelineError) and isinstance(err.value, ValueError)


# ---------------------------------------------------------------- a disk that fills up (a 1 MB tmpfs)


def test_a_full_disk_names_the_file_the_bytes_and_that_a_rerun_continues(small_disk):
    from pipeline.io import DiskFull

    target = small_disk / "results" / "manifest.json"
    with pytest.raises(DiskFull) as full:
        write_json(target, {"rows": ["x" * 100] * 20_000})  # about 2 MB
    message = str(full.value)
    assert message.startswith(f"no space left on the device while writing {target}: ")
    assert "were written before the disk filled" in message and "are free in" in message
    assert "the rerun continues from what is done" in message
    assert not target.exists() and leftovers(target.parent) == []  # nothing half-written kept


def test_a_checkpoint_on_a_full_disk_is_named_with_the_bytes_it_needs(small_disk):
    import torch

    from pipeline.checkpoint import save_checkpoint
    from pipeline.io import DiskFull

    target = small_disk / "last.pt"
    with pytest.raises(DiskFull) as full:  # torch's own error would be "unexpected pos ..." from its zip writer
        save_checkpoint(target, {"model": {"w": torch.zeros(500_000)}, "epoch": 3})
    assert f"while writing {target}: it needs 2.0 MB" in str(full.value)
    assert not target.exists() and leftovers(small_disk) == []


def test_a_stage_cli_reports_a_full_disk_on_one_error_line(small_disk, capsys):
    from pipeline.errors import run_cli

    def stage():
        write_json(small_disk / "out.json", {"rows": ["x" * 100] * 20_000})

    assert run_cli(stage) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on the device while writing ")


def test_a_write_error_that_is_not_a_full_disk_stays_what_it_is(tmp_path):
    with pytest.raises(RuntimeError, match="not the disk"):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("{}")
            raise RuntimeError("not the disk")
