"""Fixtures the test files share, and the check that every test carries one tier.

Plain helper functions and constants live in helpers.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, SMALL, make_data


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own 1 MB tmpfs: a disk that fills up. Skipped, with the reason, where this
    machine does not let the tests mount one (it needs root, or a user namespace's)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a small tmpfs here: no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """make_data's shards and files (4 classes of tinted noise), built once; tests only read them."""
    return make_data(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="session")
def reference_training(train_data, tmp_path_factory):
    """An uninterrupted 3-epoch run on train_data with SMALL's settings, in this process: its folder and
    summary. Tests read it, or copy it to change it."""
    from pipeline.train import TrainConfig, train

    out = tmp_path_factory.mktemp("reference")
    summary = train(
        train_data["manifest"],
        train_data["pca"],
        train_data["mean_image"],
        train_data["classes"],
        out,
        TrainConfig(epochs=3, **SMALL),
    )
    return out, summary


# ---------------------------------------------------------------- tiers
# Every test carries exactly one tier (pyproject.toml's markers): `make test-fast` runs `-m unit`,
# so a test without a tier would drop out of every tiered run unnoticed. Checked before `-m`
# deselects anything, and reported as a collection error, which fails any run however it selects
# (on pytest-xdist's workers too, where an exception raised here would lose its message).
TIERS = ("unit", "integration", "e2e")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    wrong = []
    weight: dict[str, list[int]] = {}  # per file: its e2e and integration tests
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {' and '.join(tiers) or 'no tier'}")
        counts = weight.setdefault(item.nodeid.split("::")[0], [0, 0])
        counts[0] += "e2e" in tiers
        counts[1] += "integration" in tiers
    # The files with the longest runs first: pytest-xdist (--dist loadfile) hands out files in this order, so
    # a workflow file started last cannot keep one worker busy after the other has finished.
    items.sort(key=lambda item: [-n for n in weight[item.nodeid.split("::")[0]]])
    if wrong:
        message = (
            f"{len(wrong)} test(s) need exactly one tier mark of {', '.join(TIERS)} "
            "(pytestmark = pytest.mark.<tier> for a file, @pytest.mark.<tier> for one test):\n" + "\n".join(wrong)
        )
        config.hook.pytest_collectreport(report=pytest.CollectReport("tiers", "failed", message, []))
