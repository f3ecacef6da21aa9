"""The workflow on a real SLURM cluster: two nodes on this machine (tests/slurm/start.sh).

- the demo workflow at test size runs with `--executor slurm` through
  workflow/profiles/slurm: every job but the local rules (`fetch`: compute
  nodes often have no internet) goes through sbatch (SLURM job ids in
  Snakemake's output and in .snakemake/slurm_logs, the right partitions in
  squeue), and the local ones run without a SLURM job in the submitting
  process's host; the stages' MLflow runs land in the sqlite store the submitting
  process created, and the results equal a local run's: the shards byte for
  byte, manifest and pca.json numbers, the trained weights (digest) and the
  losses, and the evaluation errors (timings aside);
- the profile's training entry with two GPUs starts two DDP replicas on one
  node (torchrun), and its multi-node block one torchrun per node with srun,
  through the same plugin and launcher; processes per node come from the GPUs
  SLURM granted, and the replicas meet and agree.

Skipped when slurmctld is not installed. CI runs `bash tests/slurm/start.sh`
first, which installs SLURM (Debian packages) and starts the cluster; when
this test starts the cluster itself, it also stops it (by PID, stop.sh).
Takes 3 to 5 minutes on 2 cores, mostly SLURM and Snakemake latency: the
plugin polls squeue at growing intervals (2, 14, 36 s, ... after a submission),
and each job starts Snakemake twice (in the batch step, then under srun).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from helpers import load_independent

REPO = Path(__file__).resolve().parents[1]
START, STOP = REPO / "tests" / "slurm" / "start.sh", REPO / "tests" / "slurm" / "stop.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TINY = REPO / "tests" / "configs" / "tiny.yaml"
STATE = Path(os.environ.get("ALEXNET_SLURM_DIR", "/tmp/alexnet-slurm"))
SBIN = os.pathsep.join(["/usr/sbin", "/sbin"])
# No slurmdbd here: sacct is off, so the plugin polls squeue (MinJobAge=600 keeps finished jobs listed).
PLUGIN_FLAGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
]
# One CPU thread count for both runs, so training on the CPU is bit-for-bit comparable.
THREADS = ["--set-threads", "train=2", "evaluate=1", "demo=1"]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: (?!all\))(\w+)\)")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("slurmctld", path=f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}") is None,
        reason="slurmctld is not installed; `bash tests/slurm/start.sh` (as root) installs "
        "SLURM and starts a test cluster",
    ),
]


def running() -> bool:
    files = [STATE / "munged.pid", STATE / "slurmctld.pid", *STATE.glob("slurmd-*.pid")]
    if len(files) < 4:
        return False
    try:
        for f in files:
            os.kill(int(f.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def tool_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLFLOW_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), SBIN])
    env["SLURM_CONF"] = str(STATE / "slurm.conf")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def cluster():
    started_here = not running()
    run = subprocess.run(
        ["bash", str(START)], env=tool_env(ALEXNET_SLURM_NO_INSTALL="1"), capture_output=True, text=True, timeout=120
    )
    if run.returncode != 0:
        subprocess.run(["bash", str(STOP)], env=tool_env(), capture_output=True, timeout=60)
        pytest.fail(f"the test cluster did not start:\n{run.stderr[-3000:]}")
    yield tool_env()
    if started_here:
        subprocess.run(["bash", str(STOP)], env=tool_env(), capture_output=True, timeout=120)


def snakemake(workdir: Path, env: dict, *args: str, snakefile: Path = REPO / "Snakefile", timeout: int = 900):
    """Snakemake, bounded by `timeout -s KILL` (a plugin waiting on a lost job would wait forever)."""
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(timeout),
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        *args,
    ]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def job_logs(workdir: Path | None, limit: int = 3000) -> str:
    """The tails of the jobs' own logs, which say why a SLURM job failed."""
    if workdir is None:
        return ""
    parts = []
    for log in sorted(workdir.glob("*.log")) + sorted(workdir.glob(".snakemake/slurm_logs/**/*.log")):
        parts.append(f"--- {log.relative_to(workdir)}\n{log.read_text(errors='replace')[-limit:]}")
    return "\n".join(parts)


def finish(proc: subprocess.Popen, what: str, env: dict, workdir: Path | None = None) -> str:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        ids = [m.group(1) for m in SUBMITTED.finditer(out)]
        if ids:  # leave no job of a failed run behind
            subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{out[-6000:]}\n{job_logs(workdir)}")
    return out


def squeue(env: dict, ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """{job id: (name of the rule, partition, state)} of finished jobs, while MinJobAge keeps them."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%k|%P|%T"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {i: (comment.removeprefix("rule_").split("_wildcards_")[0], part, state) for i, comment, part, state in rows}


def declared_local_rules() -> set[str]:
    """The rules the workflow's files name under `localrules:`."""
    names = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:((?:[ \t]*\w+,?)+|(?:\n[ \t]+\w+,?)+)", path.read_text(), re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def scratch(name: str):
    """A folder of its own, not pytest's tmp_path: pytest sessions that start meanwhile (other
    checkouts) prune old tmp_path folders, and these runs take minutes. Kept when the test fails."""
    path = Path(tempfile.mkdtemp(prefix=f"alexnet-{name}-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_workflow_through_sbatch_equals_a_local_run(cluster):
    with scratch("slurm-workflow") as tmp:
        check_demo_workflow(cluster, tmp)


def check_demo_workflow(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    remote.mkdir()
    (local / "notrack.yaml").write_text("tracking: {enabled: false}\n")  # not compared; saves time
    # The reference runs beside the cluster run: that one mostly waits on SLURM.
    ref = snakemake(local, cluster, "--cores", "2", "--configfile", str(TINY), str(local / "notrack.yaml"), *THREADS)
    run = snakemake(remote, cluster, "--profile", str(PROFILE), "--configfile", str(TINY), *PLUGIN_FLAGS, *THREADS)
    out = finish(run, "the SLURM run", cluster, remote)
    local_out = finish(ref, "the local run", cluster)

    # Every job but fetch went through sbatch: a SLURM job id each, an sbatch log each, the profile's
    # partitions; fetch ran in this process's host, with no SLURM job.
    rules = sorted(FINISHED.findall(local_out))
    assert {"demo", "fetch", "resize_train_shard", "pca", "train", "evaluate"} <= set(rules)
    assert sorted(FINISHED.findall(out)) == rules
    submitted = {m.group(1): m.group(2) for m in SUBMITTED.finditer(out)}
    jobs = squeue(cluster, list(submitted))
    ran_here = set(rules) - {rule for rule, _, _ in jobs.values()}
    assert "fetch" in ran_here and ran_here <= declared_local_rules()
    sent = [rule for rule in rules if rule not in ran_here]
    assert len(submitted) == len(sent), out[-4000:]
    assert all(Path(log).is_file() for log in submitted.values())
    assert len(list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))) == len(sent)
    assert not list((remote / ".snakemake" / "slurm_logs").glob("rule_fetch*"))
    assert sorted(rule for rule, _, _ in jobs.values()) == sent
    assert (remote / "results" / "fetch" / "fetch.json").is_file()
    assert {state for _, _, state in jobs.values()} == {"COMPLETED"}
    assert {rule: part for rule, part, _ in jobs.values()} == {
        rule: "gpu" if rule in ("train", "evaluate") else "cpu" for rule in sent
    }

    # Same results as the local run.
    a, b = local / "results", remote / "results"
    for tar in sorted(a.glob("shards/*/*.tar")):
        assert digest(tar) == digest(b / tar.relative_to(a)), tar.name
    for name in ("shards/manifest.json", "pca/pca.json", "train/train.json", "evaluate/metrics.json"):
        assert load_independent(json.loads((b / name).read_text())) == load_independent(
            json.loads((a / name).read_text())
        ), name
    assert json.loads((b / "train/train.json").read_text())["replicas_in_sync"]
    losses = [
        [row for row in map(json.loads, (r / "train/metrics.jsonl").read_text().splitlines()) if "train_loss" in row]
        for r in (a, b)
    ]
    assert [r["train_loss"] for r in losses[0]] == [r["train_loss"] for r in losses[1]] and losses[0]

    # MLflow: the store the submitting process created holds the cluster jobs' runs.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{remote / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags.get("stage"): r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert {"demo", "fetch", "pca", "train", "evaluate"} <= set(children)
    assert set(children.values()) == {"FINISHED"}


def multi_node_block() -> dict:
    """The commented multi-node `train:` entry of the SLURM profile, as YAML."""
    lines = (PROFILE / "config.yaml").read_text().splitlines()
    start = lines.index("#  train:")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("#    "):
            break
        block.append(line[1:])
    return yaml.safe_load("\n".join(block))


def test_profile_gpu_entries_start_ddp_replicas(cluster):
    with scratch("slurm-ddp") as tmp:
        check_gpu_entries(cluster, tmp)


def check_gpu_entries(cluster, tmp_path):
    """The profile's train entry with 2 GPUs (one node), and its multi-node block, running a DDP probe."""
    one_node = yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"]["train"]
    one_node.update(gpu=2, mem_mb=2000)  # two (fake) GPUs: auto starts two processes
    nodes = multi_node_block()
    assert nodes["nodes"] == nodes["tasks"] == 2 and nodes["mpi"]
    nodes.update(gres="gpu:1", mem_mb=2000)  # one (fake) GPU per node: one process on each
    probe = f"{sys.executable} -m pipeline.launch -- {sys.executable} {REPO / 'tests' / 'slurm' / 'ddp_probe.py'}"
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: 'gpus/rank-0.json', 'nodes/rank-0.json'\n"
        + "".join(
            f"rule {name}:\n"
            f"    output: '{name}/rank-0.json'\n"
            f"    log: '{name}.log'\n"
            f"    shell: '{probe} {name} > {{log}} 2>&1'\n"
            for name in ("gpus", "nodes")
        )
    )
    profile = tmp_path / "profile"
    profile.mkdir()
    # One job at a time: the test cluster's two nodes are one host sharing two fake GPU
    # device files, and with both jobs in flight the second job's step was sometimes
    # refused ("Invalid generic resource (gres) specification"), seen twice in CI runs.
    (profile / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "executor": "slurm",
                "jobs": 1,
                "latency-wait": 10,
                "default-resources": {"mem_mb": 1000, "runtime": 10},
                "set-threads": {"gpus": 2, "nodes": 2},
                "set-resources": {"gpus": one_node, "nodes": nodes},
            }
        )
    )
    run = snakemake(
        tmp_path, cluster, "--profile", str(profile), *PLUGIN_FLAGS, snakefile=tmp_path / "Snakefile", timeout=300
    )
    out = finish(run, "the DDP jobs", cluster, tmp_path)
    assert len(SUBMITTED.findall(out)) == 2
    hosts = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N"], env=cluster, capture_output=True, text=True, check=True
    ).stdout.split()

    log = (tmp_path / "gpus.log").read_text()
    assert "launch: standalone, 1 node(s) x 2 process(es)" in log, log[-3000:]
    ranks = [json.loads((tmp_path / "gpus" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in ranks] == [(0, 2, 0), (1, 2, 1)]
    assert len({r["node"] for r in ranks}) == 1 and ranks[0]["node"] in hosts
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["moved"] > 0

    log = (tmp_path / "nodes.log").read_text()
    assert "launch: srun, 2 node(s) x 1 process(es): srun --nodes=2" in log, log[-3000:]
    ranks = [json.loads((tmp_path / "nodes" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert {r["world_size"] for r in ranks} == {2}
    assert sorted((r["group_rank"], r["local_rank"]) for r in ranks) == [(0, 0), (1, 0)]
    assert {r["node"] for r in ranks} == set(hosts)  # both nodes, one torchrun each
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["moved"] > 0
