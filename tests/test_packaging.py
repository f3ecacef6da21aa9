"""Installing the project: the Makefile's Python check and torch index, pyproject.toml's dependencies
(equal to envs/), and the wheel `pip install .` builds, whose `alexnet-predict` runs without the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import REPO, env_pins, trained_run_files

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def make(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    """`make` with `env` over this process's environment; a None value unsets that variable."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", *args], capture_output=True, text=True, timeout=60, env=full
    )


def install_commands(tmp_path, *args: str, **env: str | None) -> list[str]:
    """The commands `make install` would run into a venv that does not exist yet."""
    run = make("-n", "install", f"VENV={tmp_path / 'venv'}", *args, **env)
    assert run.returncode == 0, run.stderr
    return [line.strip() for line in run.stdout.splitlines() if "/bin/pip install " in line]


@pytest.mark.integration
def test_torch_comes_alone_from_the_env_files_index_before_the_rest(tmp_path):
    env = {"TORCH_INDEX": None}  # the default, also where CI exports it empty
    cmds = [c.split("/bin/", 1)[1] for c in install_commands(tmp_path, **env)]
    assert cmds[1] == "pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert cmds[2] == "pip install -q -r envs/cpu.txt"
    assert cmds[0].startswith("pip install -q --upgrade pip") and cmds[3] == "pip install -q --no-deps -e ."
    cuda = [c.split("/bin/", 1)[1] for c in install_commands(tmp_path, "ENV=envs/cuda.txt", **env)]
    assert cuda[1] == "pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
    assert cuda[2] == "pip install -q -r envs/cuda.txt"


@pytest.mark.integration
def test_torch_index_override(tmp_path):
    mirror = install_commands(tmp_path, "TORCH_INDEX=https://mirror.example/whl/cpu")
    assert mirror[1].endswith("pip install -q torch==2.13.0 --index-url https://mirror.example/whl/cpu")
    # empty: pip's own configuration (a local wheel in find-links, a mirror), as CI's machines have
    for own in (install_commands(tmp_path, "TORCH_INDEX="), install_commands(tmp_path, TORCH_INDEX="")):
        assert own[1].endswith("pip install -q torch==2.13.0")


def fake_python(tmp_path, version: tuple[int, int, int]) -> str:
    """An interpreter that reports `version`: the Makefile's check runs `$(PYTHON) -c CODE`."""
    path = tmp_path / f"python{'.'.join(map(str, version))}"
    path.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.version_info = {version!r}; exec(sys.argv[1])' \"$2\"\n"
    )
    path.chmod(0o755)
    return str(path)


@pytest.mark.integration
@pytest.mark.parametrize("version", [(3, 10, 13), (3, 11, 2)])  # 3.11.2: Debian 12's python3
def test_an_old_python_is_refused_in_one_line_naming_both_versions(tmp_path, version):
    python = fake_python(tmp_path, version)
    run = make("check-python", f"PYTHON={python}")
    assert run.returncode != 0
    ours = [line for line in run.stderr.splitlines() if not line.startswith("make")]
    assert ours == [
        f"error: Python 3.11.4 or newer is needed (snakemake 9 needs 3.11, tarfile.data_filter "
        f"3.11.4); {python} is Python {'.'.join(map(str, version))}: rerun with PYTHON=python3.12 "
        "or another newer one"
    ]
    # `make install` checks first: no venv is made
    run = make("install", f"PYTHON={python}", f"VENV={tmp_path / 'venv'}")
    assert run.returncode != 0 and "3.11.4 or newer is needed" in run.stderr and not (tmp_path / "venv").exists()


@pytest.mark.integration
def test_supported_pythons_pass_the_check(tmp_path):
    found = [sys.executable, fake_python(tmp_path, (3, 11, 4))]
    for v in ("3.11", "3.12", "3.13", "3.14"):  # the ones this machine has (a pyenv shim may not run)
        python = shutil.which(f"python{v}")
        if python and subprocess.run([python, "-c", ""], capture_output=True, timeout=60).returncode == 0:
            found.append(python)
    for python in found:
        run = make("check-python", f"PYTHON={python}")
        assert run.returncode == 0 and run.stderr == "", (python, run.stderr)


@pytest.mark.unit
def test_pyproject_dependencies_are_the_env_pins():
    deps, test = PYPROJECT["project"]["dependencies"], PYPROJECT["project"]["optional-dependencies"]["test"]
    assert len(set(deps)) == len(deps) and not set(deps) & set(test)
    assert set(deps) | set(test) == env_pins("cpu.txt")
    # the test extra is what no module of the project imports
    assert {d.split("==")[0] for d in test} == {"pytest", "pytest-xdist", "scikit-learn"}


@pytest.mark.unit
def test_pre_commit_runs_the_lint_pins():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "snakefmt", "snakemake-lint"} <= set(hooks)
    used = {dep for h in hooks.values() for dep in h.get("additional_dependencies", [])}
    # hooks that need the workflow's environment run the tool installed there, from envs/lint.txt
    system = {h["entry"].split()[0] for h in hooks.values() if h["language"] == "system"} - {"snakemake"}
    assert used | {p for p in env_pins("lint.txt") if p.split("==")[0] in system} == env_pins("lint.txt")
    assert system == {"mypy"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of `pip install .`, installed without dependencies into a folder of its own."""
    root = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds
    src = root / "src"
    keep = ["pyproject.toml", "README.md", "pipeline", "model"]
    shutil.copytree(
        REPO,
        src,
        ignore=lambda d, names: [n for n in names if n == "__pycache__" or (Path(d) == REPO and n not in keep)],
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((root / "dist").glob("alexnet_workflow-*.whl"))
    target = root / "site"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return target


@pytest.mark.integration
def test_the_wheel_holds_the_packages_and_the_console_script(installed):
    tops = sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert tops == ["model", "pipeline"]
    for sub in ("training", "tracking"):
        assert (installed / "pipeline" / sub / "__init__.py").is_file()
    assert (installed / "pipeline" / "data" / "ilsvrc2012_classes.tsv").is_file()
    entry_points = next(installed.glob("*.dist-info")) / "entry_points.txt"
    assert "alexnet-predict = pipeline.predict:main" in entry_points.read_text()


@pytest.mark.integration
def test_installed_predictor_classifies_and_exits_1_on_a_broken_file(installed, tmp_path):
    run_files = trained_run_files(tmp_path, np.random.default_rng(0))
    good, broken = tmp_path / "cat.jpg", tmp_path / "broken.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8)).save(good)
    broken.write_bytes(b"not a jpeg")
    work = tmp_path / "elsewhere"  # not the checkout: the packages must come from the wheel
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import pipeline, model; print(pipeline.__file__, model.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.split() == [
        str(installed / "pipeline" / "__init__.py"),
        str(installed / "model" / "__init__.py"),
    ]
    inputs = {
        "--checkpoint": run_files["checkpoint"],
        "--mean-image": run_files["mean"],
        "--classes": run_files["classes"],
    }
    cmd = [str(installed / "bin" / "alexnet-predict"), str(broken), str(good), "--json", "--device", "cpu"]
    cmd += [str(arg) for option in inputs.items() for arg in option]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(broken), str(good)]
    assert "error" in results[0] and len(results[1]["top"]) == 5  # the rest classified after the failure
    assert f"error: {broken}: " in proc.stderr
