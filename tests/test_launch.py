"""pipeline.launch: the commands it builds for fake SLURM environments, and real
two-process launches on the CPU (gloo) through the same code path a SLURM job uses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.launch import (
    LaunchError,
    auto_nproc,
    job_env_from_scontrol,
    parse_scontrol_job,
    plan,
    rdzv_port,
    split_target,
)

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "slurm" / "ddp_probe.py"
TRAIN = ["python", "-m", "pipeline.train", "--epochs", "1"]
TORCHRUN = ["python", "-m", "torch.distributed.run"]

# `scontrol show job -o` of a two-node job on the test cluster (tests/slurm), shortened.
SCONTROL_JOB = (
    "JobId=12 JobName=wrap UserId=root(0) JobState=RUNNING Partition=gpu NodeList=vm,vm-2 BatchHost=vm "
    "NumNodes=2 NumCPUs=32 NumTasks=2 CPUs/Task=16 TRES=cpu=32,mem=128000M,node=2,billing=32,gres/gpu=8 "
    "Socks/Node=* NtasksPerN:B:S:C=1:0:*:* MinCPUsNode=16 Command=(null) WorkDir=/work TresPerNode=gres:gpu:4"
)


def fake_hostnames(nodelist):
    return {"gpu[01-02]": ["gpu01", "gpu02"], "gpu[07-09]": ["gpu07", "gpu08", "gpu09"]}[nodelist]


def slurm(**env):
    return {"SLURM_JOB_ID": "4242", **{k: str(v) for k, v in env.items()}}


# ---------------------------------------------------------------- commands for fake environments


@pytest.mark.unit
def test_one_process_outside_slurm_runs_the_command_itself():
    launch = plan(TRAIN, {}, 1)
    assert launch.mode == "direct" and launch.argv == TRAIN


@pytest.mark.unit
def test_several_processes_on_one_machine_use_standalone_torchrun():
    launch = plan(TRAIN, {}, 2)
    assert launch.argv == [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "pipeline.train", "--epochs", "1"]


@pytest.mark.unit
def test_one_node_slurm_job_or_step_stays_on_its_node():
    step = slurm(SLURM_NNODES=1, SLURM_JOB_NODELIST="gpu01", SLURM_GPUS_ON_NODE=4)
    assert plan(TRAIN, step, 1).argv == TRAIN
    assert plan(TRAIN, step, 4).argv[:6] == [*TORCHRUN, "--standalone", "--nproc_per_node", "4"]


@pytest.mark.unit
def test_several_slurm_nodes_run_one_torchrun_per_node_under_srun():
    env = slurm(SLURM_NNODES=2, SLURM_JOB_NODELIST="gpu[01-02]", SLURM_CPUS_PER_TASK=16)
    launch = plan(TRAIN, env, 4, hostnames=fake_hostnames)
    assert launch.mode == "srun" and (launch.nnodes, launch.nproc_per_node) == (2, 4)
    assert launch.argv == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=16",
        "--kill-on-bad-exit=1",
        *TORCHRUN,
        "--nnodes",
        "2",
        "--nproc_per_node",
        "4",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "gpu01:33742",
        "--rdzv_id",
        "4242",
        "-m",
        "pipeline.train",
        "--epochs",
        "1",
    ]


@pytest.mark.unit
def test_rendezvous_port_and_host():
    env = slurm(SLURM_JOB_NUM_NODES=3, SLURM_NODELIST="gpu[07-09]")
    launch = plan(["python3", "train.py", "--x", "1"], env, 1, port=29999, hostnames=fake_hostnames)
    assert launch.argv[:4] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1"]
    assert "--cpus-per-task" not in " ".join(launch.argv)
    i = launch.argv.index("--rdzv_endpoint")
    assert launch.argv[i + 1] == "gpu07:29999"
    assert launch.argv[-3:] == ["train.py", "--x", "1"] and launch.argv[5] == "python3"
    assert rdzv_port({}) == 29500 and rdzv_port(slurm()) == 29500 + 4242


@pytest.mark.unit
def test_forced_srun_on_one_node_and_errors():
    env = slurm(SLURM_NNODES=1, SLURM_JOB_NODELIST="gpu[01-02]")
    assert plan(TRAIN, env, 2, mode="srun", hostnames=fake_hostnames).argv[:2] == ["srun", "--nodes=1"]
    with pytest.raises(LaunchError, match="needs a SLURM job"):
        plan(TRAIN, {}, 2, mode="srun")
    with pytest.raises(LaunchError, match="runs one process"):
        plan(TRAIN, {}, 2, mode="direct")
    with pytest.raises(LaunchError, match="runs on one node"):
        plan(TRAIN, slurm(SLURM_NNODES=2, SLURM_JOB_NODELIST="x"), 1, mode="standalone")
    with pytest.raises(LaunchError, match="at least 1"):
        plan(TRAIN, {}, 0)
    with pytest.raises(LaunchError, match="no command"):
        plan([], {}, 1)
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST"):
        plan(TRAIN, slurm(SLURM_NNODES=2), 1)


@pytest.mark.unit
def test_targets_torchrun_understands():
    assert split_target(["python", "-m", "pipeline.evaluate", "--a"]) == ("python", ["-m", "pipeline.evaluate", "--a"])
    assert split_target(["/venv/bin/python3.11", "-u", "x.py"]) == ("/venv/bin/python3.11", ["x.py"])
    interpreter, target = split_target(["hostname", "-s"])
    assert interpreter == sys.executable and target == ["--no-python", "hostname", "-s"]
    with pytest.raises(LaunchError, match="-X"):
        split_target(["python", "-X", "dev", "-m", "m"])
    with pytest.raises(LaunchError, match="names no module"):
        split_target(["python"])


@pytest.mark.unit
def test_processes_per_node_follow_the_gpus_slurm_granted():
    granted = slurm(SLURM_GPUS_ON_NODE=4)
    assert auto_nproc(granted) == 4
    assert auto_nproc(granted, gpus_per_process=2) == 2  # two-column replicas
    assert auto_nproc(granted, declared_gpus=1) == 4  # SLURM's grant wins inside a job
    assert auto_nproc({}, declared_gpus=2) == 2  # locally, the rule's declared gpu count
    assert auto_nproc({}, declared_gpus=0) == 1
    assert auto_nproc({}, visible_gpus=lambda: 3) == 3
    assert auto_nproc(slurm(), declared_gpus=0, visible_gpus=lambda: 8) == 1  # a CPU job


@pytest.mark.unit
def test_job_geometry_from_scontrol_when_the_variables_were_removed():
    fields = parse_scontrol_job(SCONTROL_JOB)
    assert job_env_from_scontrol(fields) == {
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "vm,vm-2",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": "4",
    }
    total_only = parse_scontrol_job(SCONTROL_JOB.replace(" TresPerNode=gres:gpu:4", ""))
    assert job_env_from_scontrol(total_only)["SLURM_GPUS_ON_NODE"] == "4"  # gres/gpu=8 over 2 nodes
    typed = parse_scontrol_job("NumNodes=1 NodeList=n1 CPUs/Task=8 TresPerNode=gres:gpu:a100:2")
    assert job_env_from_scontrol(typed)["SLURM_GPUS_ON_NODE"] == "2"
    cpu = job_env_from_scontrol(parse_scontrol_job("NumNodes=1-1 NodeList=n1 CPUs/Task=1 TRES=cpu=1,node=1"))
    assert cpu == {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_CPUS_PER_TASK": "1"}


# ---------------------------------------------------------------- real launches


def clean_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_")
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def launch(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.launch", *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
def test_cli_dry_run_and_exit_status_passes_through():
    run = launch("--nproc-per-node", "3", "--dry-run", "--", "python", "-m", "pipeline.train", "--epochs", "1")
    assert run.returncode == 0
    assert (
        run.stdout.strip()
        == "python -m torch.distributed.run --standalone --nproc_per_node 3 -m pipeline.train --epochs 1"
    )
    run = launch("--", sys.executable, "-c", "import os, sys; print(os.getpid()); sys.exit(3)")
    assert run.returncode == 3  # exec'd in place: the command's own status
    run = launch("--nproc-per-node", "two", "--", "python", "-m", "x")
    assert run.returncode == 1 and run.stderr.startswith("error: --nproc-per-node 'two'")
    assert "Traceback" not in run.stderr
    assert launch("python", "-m", "x").stderr.startswith("error: expected '--'")


@pytest.mark.integration
def test_two_cpu_processes_meet_and_stay_in_sync(tmp_path):
    run = launch("--nproc-per-node", "2", "--", sys.executable, str(PROBE), str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "launch: standalone, 1 node(s) x 2 process(es)" in run.stderr
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in ranks] == [(0, 2, 0), (1, 2, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["moved"] > 0


# ---------------------------------------------------------------- the training stage under the launcher


def _jpeg(rng, tint):
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.clip(np.array(tint) + rng.normal(0, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Train/val shards, manifest, pca.json, mean image and classes in the stages' formats (4 classes)."""
    from pipeline.io import write_json, write_tsv
    from pipeline.shards import ShardWriter

    root = tmp_path_factory.mktemp("launch_data")
    rng = np.random.default_rng(0)
    tints = [[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]]
    manifest = {}
    for split, count in (("train", 32), ("val", 8)):
        tar = root / "shards" / split / f"{split}-00000.tar"
        with ShardWriter(tar) as writer:
            for i in range(count):
                writer.add(f"{split}_{i:04d}", _jpeg(rng, tints[i % 4]), i % 4)
        manifest[split] = {
            "images": count,
            "shards": [{"tar": str(tar), "idx": str(tar.with_suffix(".idx")), "images": count}],
        }
    write_json(root / "manifest.json", manifest)
    write_json(
        root / "pca.json",
        {
            "mean": [130.0] * 3,
            "std": [70.0] * 3,
            "covariance": np.diag([9.0, 4, 1]).tolist(),
            "eigval": [9.0, 4.0, 1.0],
            "eigvec": np.eye(3).tolist(),
            "pixels": 1,
            "images": 1,
            "imagenet_cosine": [1.0, 1.0, 1.0],
        },
    )
    np.save(root / "mean_image.npy", np.full((256, 256, 3), 130.0, np.float32))
    write_tsv(root / "classes.tsv", ["index", "wnid", "names"], [[i, f"n{i:08d}", f"c{i}"] for i in range(4)])
    return root


@pytest.mark.integration
def test_training_stage_runs_two_replicas_in_sync(shards, tmp_path):
    out = tmp_path / "train"
    run = launch(
        "--nproc-per-node",
        "2",
        "--",
        "python",
        "-m",
        "pipeline.train",
        "--manifest",
        str(shards / "manifest.json"),
        "--pca",
        str(shards / "pca.json"),
        "--mean-image",
        str(shards / "mean_image.npy"),
        "--classes",
        str(shards / "classes.tsv"),
        "--out-dir",
        str(out),
        "--devices",
        "cpu",
        "--width",
        "0.0625",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--log-every",
        "1",
        "--dali-threads",
        "1",
        "--torch-threads",
        "1",
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"]
    assert len(set(summary["replica_digests"])) == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "train_loss" in row]
    assert steps == [1, 2, 3, 4]  # 32 images / global batch 8, written by rank 0 only
