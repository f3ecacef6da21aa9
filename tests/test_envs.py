"""The optional conda environment pins exactly what the pip environment pins."""

import yaml

from conftest import REPO


def pins(path):
    out = set()
    for line in (REPO / "envs" / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= pins(line[3:].strip())
        elif line:
            out.add(line)
    return out


def test_conda_env_matches_pip_pins():
    env = yaml.safe_load((REPO / "envs/conda.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == pins("cpu.txt")


def test_cuda_env_pins_the_same_packages():
    assert pins("cuda.txt") == pins("cpu.txt")
