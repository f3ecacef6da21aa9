"""Start a stage as one process, as DDP replicas on one node, or across SLURM nodes.

    python -m pipeline.launch [--nproc-per-node N|auto] [--gpus-per-process K] \
        [--gpus G] [--port P] [--mode auto|direct|standalone|srun] [--dry-run] \
        -- python -m pipeline.train ARGS...

Three cases, chosen from the environment (SLURM's variables when inside a job):

- one node, one process (no SLURM, or a one-node job): the command itself
  runs, in this process (exec), so its exit status is the launcher's;
- one node, several processes:
      python -m torch.distributed.run --standalone --nproc_per_node N -m pipeline.train ARGS
- several SLURM nodes: one torchrun per node, started by srun, meeting at a
  c10d rendezvous on the allocation's first host:
      srun --nodes=M --ntasks=M --ntasks-per-node=1 [--cpus-per-task=C] --kill-on-bad-exit=1
          python -m torch.distributed.run --nnodes M --nproc_per_node N
          --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id $SLURM_JOB_ID
          -m pipeline.train ARGS
  HOST is the first name of `scontrol show hostnames $SLURM_JOB_NODELIST`.

torchrun is called as `python -m torch.distributed.run` (the module behind
the torchrun script) with the command's own interpreter, so the workers run
in the same environment as the command would.

Processes per node: N, or `auto` = the GPUs this job has on the node divided
by the GPUs one process drives (K: 2 for the paper's two-column replica), at
least 1. The GPUs are, inside a SLURM job, what SLURM granted
(SLURM_GPUS_ON_NODE); outside SLURM, the count the caller declares (--gpus,
e.g. the rule's resources.gpu: Snakemake's gpu resource is only a counter
locally), else the GPUs torch sees. A machine without GPUs gets one process;
several CPU processes must be asked for with a number.

Snakemake's SLURM executor runs an ordinary job's command inside
`srun -n1 --nodes=1`, which is one node: such jobs take the first two cases.
Multi-node jobs need the rule resource `mpi` (see workflow/profiles/slurm):
then the command runs in the job's batch step, where the executor has removed
the SLURM_* variables except SLURM_JOB_ID; the launcher reads the node count,
node list, CPUs per task and GPUs per node back from `scontrol show job`.

The environment the workers read (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) is set by torchrun; the stage joins the process group itself.

Evidence: tests/test_launch.py (the commands for fake SLURM environments;
two gloo replicas of a probe and of pipeline.train staying in sync) and
tests/test_slurm.py (SLURM 22.05, two nodes on one machine: the profile's
one-node GPU entry and its multi-node block, through Snakemake's SLURM
executor, start replicas that meet and agree).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError

__all__ = [
    "LaunchError",
    "Launch",
    "plan",
    "split_target",
    "slurm_nodes",
    "gpus_on_node",
    "auto_nproc",
    "rdzv_port",
    "parse_scontrol_job",
    "job_env_from_scontrol",
    "hostnames",
    "main",
]

MODES = ("auto", "direct", "standalone", "srun")
BASE_PORT = 29500  # torchrun's default master port


class LaunchError(PipelineError, ValueError):
    """A launch that cannot work: bad arguments or an unreadable SLURM job."""


@dataclass(frozen=True)
class Launch:
    mode: str  # direct | standalone | srun
    argv: list[str]  # what to exec
    nnodes: int = 1
    nproc_per_node: int = 1

    def __str__(self) -> str:
        return shlex.join(self.argv)


# ---------------------------------------------------------------- pure parts


def split_target(command: Sequence[str]) -> tuple[str, list[str]]:
    """(interpreter, torchrun's target args) for `python -m mod ARGS`, `python script.py ARGS`
    or any other program (run by torchrun with --no-python)."""
    if not command:
        raise LaunchError("no command after '--'; expected e.g. -- python -m pipeline.train ARGS")
    prog, rest = command[0], list(command[1:])
    if not re.fullmatch(r"python[0-9.]*", os.path.basename(prog)):
        return sys.executable, ["--no-python", prog, *rest]
    opts = []
    while rest and rest[0].startswith("-") and rest[0] != "-m":
        if rest[0] in ("-u", "-B", "-O", "-OO", "-s", "-E", "-I"):
            opts.append(rest.pop(0))  # harmless interpreter flags; torchrun's workers run without them
            continue
        raise LaunchError(
            f"python option {rest[0]!r} before the module or script is not supported; "
            "put it in the environment (e.g. PYTHONUNBUFFERED=1) instead"
        )
    if not rest:
        raise LaunchError(f"{shlex.join(command)!r} names no module (-m NAME) or script")
    if rest[0] == "-m":
        if len(rest) < 2:
            raise LaunchError(f"{shlex.join(command)!r}: -m needs a module name")
        return prog, ["-m", rest[1], *rest[2:]]
    return prog, rest


def slurm_nodes(env: Mapping[str, str]) -> int:
    """Nodes this process may start work on: the job's (batch step) or the step's; 1 outside SLURM."""
    if "SLURM_JOB_ID" not in env:
        return 1
    value = env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or "1"
    try:
        return max(1, int(value))
    except ValueError:
        raise LaunchError(f"SLURM_NNODES={value!r} is not a number") from None


def gpus_on_node(env: Mapping[str, str]) -> int | None:
    """GPUs SLURM granted this job on this node, or None when not in a GPU job."""
    if "SLURM_JOB_ID" not in env:
        return None
    value = env.get("SLURM_GPUS_ON_NODE")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"SLURM_GPUS_ON_NODE={value!r} is not a number") from None


def auto_nproc(
    env: Mapping[str, str],
    gpus_per_process: int = 1,
    declared_gpus: int | None = None,
    visible_gpus: Callable[[], int] = lambda: 0,
) -> int:
    """Processes per node for --nproc-per-node auto (see the module docstring)."""
    gpus = gpus_on_node(env)
    if gpus is None:
        gpus = declared_gpus if declared_gpus is not None else visible_gpus()
    return max(1, gpus // max(1, gpus_per_process))


def rdzv_port(env: Mapping[str, str], port: int | None = None) -> int:
    """A fixed port, or one derived from the job id, so two jobs sharing a first host differ."""
    if port:
        return port
    job = env.get("SLURM_JOB_ID", "0")
    return BASE_PORT + (int(job) % 10000 if job.isdigit() else 0)


def plan(
    command: Sequence[str],
    env: Mapping[str, str],
    nproc_per_node: int,
    *,
    mode: str = "auto",
    port: int | None = None,
    hostnames: Callable[[str], list[str]] | None = None,
) -> Launch:
    """The command to exec for `command`, given the environment and processes per node.

    `hostnames` expands a SLURM node list (default: `scontrol show hostnames`);
    it is called only when the launch spans SLURM nodes.
    """
    if mode not in MODES:
        raise LaunchError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node {nproc_per_node}: expected at least 1 (or auto)")
    command = list(command)
    if not command:
        raise LaunchError("no command after '--'; expected e.g. -- python -m pipeline.train ARGS")
    nnodes = slurm_nodes(env)
    if mode == "auto":
        mode = "srun" if nnodes > 1 else "standalone" if nproc_per_node > 1 else "direct"
    if mode == "direct":
        if nnodes > 1 or nproc_per_node > 1:
            raise LaunchError(
                f"--mode direct runs one process, but {nnodes} nodes x {nproc_per_node} processes were asked for"
            )
        return Launch("direct", command)
    python, target = split_target(command)
    torchrun = [python, "-m", "torch.distributed.run"]
    if mode == "standalone":
        if nnodes > 1:
            raise LaunchError(f"--mode standalone runs on one node, but the job has {nnodes}")
        return Launch(
            "standalone",
            [*torchrun, "--standalone", "--nproc_per_node", str(nproc_per_node), *target],
            1,
            nproc_per_node,
        )
    # srun: one torchrun per node of the allocation
    if "SLURM_JOB_ID" not in env:
        raise LaunchError("--mode srun needs a SLURM job (SLURM_JOB_ID is not set); run inside sbatch/salloc")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set; cannot find the rendezvous host")
    hosts = (hostnames or globals()["hostnames"])(nodelist)
    if not hosts:
        raise LaunchError(f"node list {nodelist!r} expands to no host")
    srun = ["srun", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1"]
    if env.get("SLURM_CPUS_PER_TASK"):
        srun.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    srun.append("--kill-on-bad-exit=1")
    return Launch(
        "srun",
        [
            *srun,
            *torchrun,
            "--nnodes",
            str(nnodes),
            "--nproc_per_node",
            str(nproc_per_node),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"{hosts[0]}:{rdzv_port(env, port)}",
            "--rdzv_id",
            env["SLURM_JOB_ID"],
            *target,
        ],
        nnodes,
        nproc_per_node,
    )


def parse_scontrol_job(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` output as {key: value} (values hold no spaces, except Command=)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, eq, value = token.partition("=")
        if eq and key not in fields:
            fields[key] = value
    return fields


def _gres_gpus(spec: str) -> int | None:
    """GPU count in a TRES/GRES string: 'gres:gpu:4', 'gres/gpu:a100=4', 'cpu=8,gres/gpu=8'."""
    for part in spec.split(","):
        m = re.fullmatch(r"(?:gres[:/])?gpu(?::[\w.-]+)?[:=](\d+)", part.strip())
        if m:
            return int(m.group(1))
    return None


def job_env_from_scontrol(fields: Mapping[str, str]) -> dict[str, str]:
    """SLURM_* variables of a job step, rebuilt from `scontrol show job` fields."""
    env: dict[str, str] = {}
    nodes = fields.get("NumNodes", "").split("-")[0]
    if nodes.isdigit():
        env["SLURM_NNODES"] = nodes
    if fields.get("NodeList") and fields["NodeList"] != "(null)":
        env["SLURM_JOB_NODELIST"] = fields["NodeList"]
    cpus = fields.get("CPUs/Task", "")
    if cpus.isdigit():
        env["SLURM_CPUS_PER_TASK"] = cpus
    gpus = _gres_gpus(fields.get("TresPerNode", ""))
    if gpus is None:  # --gpus N asks for N in all; spread evenly over the nodes
        total = _gres_gpus(fields.get("TRES", "")) or _gres_gpus(fields.get("TresPerJob", ""))
        if total is not None and nodes.isdigit():
            gpus = total // int(nodes)
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = str(gpus)
    return env


# ---------------------------------------------------------------- SLURM and devices


def _scontrol(*args: str) -> str:
    if shutil.which("scontrol") is None:
        raise LaunchError("scontrol is not on PATH, but SLURM_JOB_ID is set; load the SLURM module")
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"scontrol {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames NODELIST`: node[01-02] -> [node01, node02]."""
    return _scontrol("show", "hostnames", nodelist).split()


def complete_slurm_env(env: Mapping[str, str]) -> dict[str, str]:
    """env, plus the job's geometry from scontrol where the SLURM_* variables were removed."""
    env = dict(env)
    if "SLURM_JOB_ID" in env and "SLURM_NNODES" not in env and "SLURM_JOB_NUM_NODES" not in env:
        fields = parse_scontrol_job(_scontrol("show", "job", "-o", env["SLURM_JOB_ID"]))
        for key, value in job_env_from_scontrol(fields).items():
            env.setdefault(key, value)
    return env


def torch_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    p = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        usage="%(prog)s [options] -- COMMAND...",
        description="Run a command directly, under torchrun, or under srun+torchrun "
        "across SLURM nodes (docs/cluster.md).",
    )
    p.add_argument(
        "--nproc-per-node",
        default="auto",
        metavar="N|auto",
        help="processes per node: a number, or auto (GPUs on the node / --gpus-per-process)",
    )
    p.add_argument(
        "--gpus-per-process",
        type=int,
        default=1,
        metavar="K",
        help="GPUs one process drives (2 for the paper's two-column replica)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="G",
        help="GPUs the job declares (Snakemake's resources.gpu), used by auto outside SLURM",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        metavar="P",
        help=f"rendezvous port across nodes (default {BASE_PORT} + SLURM_JOB_ID mod 10000)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="force a launch: direct, standalone (torchrun on this node), srun (torchrun per node)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    if "--" not in argv:
        if {"-h", "--help"} & set(argv):
            p.parse_args(argv)  # prints the help and exits
        raise LaunchError(
            "expected '--' before the command, e.g. "
            "python -m pipeline.launch --nproc-per-node 2 -- python -m pipeline.train ARGS"
        )
    cut = argv.index("--")
    return p.parse_args(argv[:cut]), argv[cut + 1 :]


def resolve_nproc(value: str, env: Mapping[str, str], gpus_per_process: int, declared_gpus: int | None) -> int:
    if value == "auto":
        return auto_nproc(env, gpus_per_process, declared_gpus, torch_gpus)
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"--nproc-per-node {value!r}: expected a number or auto") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, command = parse_args(sys.argv[1:] if argv is None else argv)
        env = complete_slurm_env(os.environ)
        nproc = resolve_nproc(args.nproc_per_node, env, args.gpus_per_process, args.gpus)
        launch = plan(command, env, nproc, mode=args.mode, port=args.port)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(launch)
        return 0
    print(
        f"launch: {launch.mode}, {launch.nnodes} node(s) x {launch.nproc_per_node} process(es): {launch}",
        file=sys.stderr,
        flush=True,
    )
    try:
        os.execvp(launch.argv[0], launch.argv)  # same process: signals and exit status pass through
    except OSError as exc:
        print(f"error: cannot run {launch.argv[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
