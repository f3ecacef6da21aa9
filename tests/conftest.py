"""Shared test helpers: the repository root and a runner for the real workflow."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, so rules find its python."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], ready_url: str, log: Path, timeout: float, stop_timeout: float = 30, **popen):
    """Start a server (its own process group, output to `log`), wait for `ready_url` to answer 200,
    yield the process; stop the whole group afterwards (a server's workers share it)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2:5]} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {ready_url} in {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def snakemake(workdir: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


# What a run's figures owe to the machine and its load, not to the computation: wall-clock fields
# (seconds, images per second, input wait) and the warning and flag that the input wait raises.
# A busy CI machine made one of two identical demo runs input-bound (37% of a window waiting).
LOAD_DEPENDENT_WARNINGS = frozenset({"input_bound"})
LOAD_DEPENDENT_KEYS = frozenset({"input_bound", "run_uid"})  # run_uid: drawn anew for every training


def is_load_dependent_key(key: str) -> bool:
    return key in LOAD_DEPENDENT_KEYS or key.endswith(("seconds", "_s")) or "per_s" in key or "wait" in key


def load_independent_warnings(warnings: list[dict]) -> list[dict]:
    """The warnings a rerun of the same computation must repeat: all but the input-bound one."""
    return [w for w in warnings if w.get("kind", w.get("warning")) not in LOAD_DEPENDENT_WARNINGS]


def load_independent(obj):
    """A run's JSON (train.json, metrics.json, the manifest) minus what depends on the machine's load
    and the clock, so that two runs of the same computation compare equal."""
    if isinstance(obj, dict):
        return {
            k: load_independent(load_independent_warnings(v) if k == "warnings" else v)
            for k, v in obj.items()
            if not is_load_dependent_key(k)
        }
    if isinstance(obj, list):
        return [load_independent(v) for v in obj]
    return obj


def job_stats(output: str) -> dict[str, int]:
    """Jobs per rule from a dry run's output (Snakemake's "Job stats" table), without `all` and `total`."""
    if "Nothing to be done" in output:
        return {}
    assert "Job stats:" in output, output[-4000:]
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    return {rule: n for rule, n in counts.items() if rule not in {"total", "all"}}


def assert_close_to_scale(actual, expected, rel: float, msg: str = "") -> None:
    """Elementwise |actual - expected| <= rel * max|expected|, for float32 results.

    Two float32 computations of the same sum in different orders (another
    kernel, blocking or layout) differ by a few units in the last place of the
    *largest* partial sums, not of each element: an element that is small
    because of cancellation carries the big terms' rounding. A tolerance
    scaled to the tensor's magnitude bounds that and nothing looser; a fixed
    absolute one is either too tight for large tensors or meaningless for
    small ones, and which one depends on the machine's kernels.
    """
    import torch

    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rel * scale, msg=msg or None)


def disagreeing_alexnet_state(num_classes: int, width: float = 0.0625, seed: int = 0) -> dict:
    """A random AlexNet state_dict whose ten views disagree: He-scaled weights, zero biases,
    fc8 shrunk so the softmax is not one-hot (the paper's init would score every view alike)."""
    import torch

    from model.alexnet import AlexNet

    torch.manual_seed(seed)
    sd = AlexNet(num_classes=num_classes, width=width).state_dict()
    for key, value in sd.items():
        if key.endswith("weight"):
            fan_in = value[0].numel()
            value.copy_(torch.randn(value.shape) * (2.0 / fan_in) ** 0.5 * (0.02 if key.startswith("fc8") else 1.0))
        else:
            value.zero_()
    return sd


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


# ---------------------------------------------------------------- tiers
# Every test carries exactly one tier (pyproject.toml's markers): `make test-fast` runs `-m unit`,
# so a test without a tier would drop out of every tiered run unnoticed. Checked before `-m`
# deselects anything, and reported as a collection error, which fails any run however it selects
# (on pytest-xdist's workers too, where an exception raised here would lose its message).
TIERS = ("unit", "integration", "e2e")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {' and '.join(tiers) or 'no tier'}")
    if wrong:
        message = (
            f"{len(wrong)} test(s) need exactly one tier mark of {', '.join(TIERS)} "
            "(pytestmark = pytest.mark.<tier> for a file, @pytest.mark.<tier> for one test):\n" + "\n".join(wrong)
        )
        config.hook.pytest_collectreport(report=pytest.CollectReport("tiers", "failed", message, []))
