"""The optional conda environment pins exactly what the pip environment pins."""

import pytest
import yaml

from helpers import REPO, env_pins

pytestmark = pytest.mark.unit


def test_conda_env_matches_pip_pins():
    env = yaml.safe_load((REPO / "envs/conda.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {line for line in pip_section if not line.startswith("-")} == env_pins("cpu.txt")
    # torch from the index envs/cpu.txt names, as the Makefile installs it
    index = next(
        line.split(": ", 1)[1]
        for line in (REPO / "envs/cpu.txt").read_text().splitlines()
        if line.startswith("# torch index: ")
    )
    assert f"--extra-index-url {index}" in pip_section


def test_cuda_env_pins_the_same_packages():
    assert env_pins("cuda.txt") == env_pins("cpu.txt")
