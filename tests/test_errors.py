"""Every stage CLI reports bad input as one `error:` line naming the file, exit 1, no traceback."""

from __future__ import annotations

import pytest

from pipeline import demo, fetch, pca, resize
from pipeline.errors import PipelineError, run_cli

pytestmark = pytest.mark.unit


def one_error_line(capsys, code: int, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_run_cli_reports_pipeline_and_os_errors_and_keeps_bugs_loud(capsys, tmp_path):
    def refuse():
        raise PipelineError("settings.x=3: expected 1 or 2")

    assert run_cli(refuse) == 1
    one_error_line(capsys, 1, "settings.x=3")
    missing = tmp_path / "absent.json"
    assert run_cli(missing.read_text) == 1
    one_error_line(capsys, 1, str(missing))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda: 1 / 0)
    assert run_cli(lambda: None) == 0


def test_pca_cli_names_an_unreadable_statistics_file(capsys, tmp_path):
    bad = tmp_path / "train-00000.stats.npz"
    bad.write_bytes(b"not an npz archive")
    code = pca.main(["--stats", str(bad), "--out-dir", str(tmp_path / "pca")])
    one_error_line(capsys, code, str(bad), "rerun the resize stage")
    assert not (tmp_path / "pca" / "pca.json").exists()


def test_resize_cli_names_a_damaged_class_table(capsys, tmp_path):
    classes = tmp_path / "classes.tsv"
    classes.write_text("index\twnid\tnames\n0\tn01\ta\n5\tn02\tb\n")
    (tmp_path / "train" / "n01").mkdir(parents=True)
    code = resize.main(
        [
            "index",
            "--split",
            "train",
            "--source",
            str(tmp_path / "train"),
            "--classes",
            str(classes),
            "--out",
            str(tmp_path / "index.tsv"),
        ]
    )
    one_error_line(capsys, code, str(classes), "row 2 has index 5")
    assert not (tmp_path / "index.tsv").exists()


def test_demo_cli_reports_an_unwritable_folder(capsys, tmp_path):
    blocker = tmp_path / "demo"
    blocker.write_text("a file where the demo folder should go")
    code = demo.main(
        ["--out-dir", str(blocker / "data"), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1"]
    )
    one_error_line(capsys, code, str(blocker))


def test_fetch_cli_names_a_missing_folder(capsys, tmp_path):
    code = fetch.main(
        [
            "--source",
            "folders",
            "--train-dir",
            str(tmp_path / "nowhere"),
            "--val-dir",
            str(tmp_path / "val"),
            "--out-dir",
            str(tmp_path / "fetch"),
        ]
    )
    one_error_line(capsys, code, str(tmp_path / "nowhere"), "dataset.folders.train")
    assert not (tmp_path / "fetch" / "fetch.json").exists()
