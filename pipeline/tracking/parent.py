"""The workflow invocation's parent run and the code version it records.

The Snakefile's onstart handler calls `start_parent` once per invocation,
before any job runs: that also creates the sqlite database and experiment,
so parallel jobs never race to create them. The parent's id is passed to the
jobs in a file (`--parent-file`), which works for local and cluster jobs.
A tracking server that does not answer stops the invocation there, within
seconds (`check_reachable`); `end_parent` only warns: the jobs' work is done.

Provenance. `start_parent` records, on the parent run, the workflow's git
commit and whether its work tree had uncommitted changes (tags git_commit,
git_dirty) and the resolved config as the artifact config.yaml; it leaves
both beside the parent run file (CONFIG_SNAPSHOT, CODE_VERSION) for the jobs,
which tag their registered model versions with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.io import write_json, write_text
from pipeline.tracking.access import (
    PARAM_VALUE_LIMIT,
    TAG_VALUE_LIMIT,
    check_reachable,
    experiment_id,
    explain,
    log_params,
    open_client,
    redact,
    redact_tree,
    resolve_uri,
    retry,
    server_access,
)

# beside the parent run file: what the invocation ran with, for the jobs' model versions
CONFIG_SNAPSHOT = "config.yaml"
CODE_VERSION = "code_version.json"
GIT_TIMEOUT_S = 120


def code_version(directory: str | os.PathLike) -> dict[str, str]:
    """Tags naming the code in `directory`: git_commit, and git_dirty when it is a git checkout.

    git_dirty is "true" when the work tree differs from the commit, untracked
    files included (a new module changes what runs as much as an edited one);
    ignored files (results, caches) do not count.
    """

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )

    try:
        inside = git("rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            if inside.returncode == 0 or "not a git repository" in inside.stderr:
                return {"git_commit": "not a git checkout"}
            # e.g. git refusing a checkout owned by another user: say so rather than guess
            return {"git_commit": f"unknown: git in {directory} failed: {inside.stderr.strip()[:500]}"}
        head = git("rev-parse", "--verify", "HEAD")
        commit = head.stdout.strip() if head.returncode == 0 else "no commit yet"
        status = git("status", "--porcelain")
    except FileNotFoundError:
        return {"git_commit": "unknown: git is not installed"}
    except subprocess.TimeoutExpired as exc:
        return {"git_commit": f"unknown: {' '.join(exc.cmd)} timed out"}
    if status.returncode != 0:
        return {"git_commit": commit, "git_dirty": f"unknown: git status failed: {status.stderr.strip()[:500]}"}
    return {"git_commit": commit, "git_dirty": "true" if status.stdout.strip() else "false"}


def start_parent(
    tracking_uri: str | None,
    experiment: str,
    parent_file: str | os.PathLike,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    code_dir: str | os.PathLike | None = None,
    config: dict | None = None,
) -> str:
    """Create the invocation's parent run; returns its id, also written to `parent_file`.

    code_dir: the workflow's folder, whose git commit and state become tags;
    config: the resolved config, logged as the artifact config.yaml. Both are
    also left beside `parent_file` (CODE_VERSION, CONFIG_SNAPSHOT), where the
    train job reads them for its registered model version.

    A user:password@ in the params, tags or config (the tracking or a
    download URI; the command line in a tag) is stored as ***@.
    A refused request raises TrackingAccessError; an http(s) server that does
    not answer within seconds, TrackingUnreachable.
    """
    uri = resolve_uri(tracking_uri)
    client = open_client(uri)
    check_reachable(client, uri)  # first: a server that is down leaves nothing behind
    path = Path(parent_file)
    tags = {k: redact(v) for k, v in tags.items()}
    if code_dir is not None:
        tags.update(_record_code_version(code_dir, path.with_name(CODE_VERSION)))
    snapshot = _write_config_snapshot(config, path.with_name(CONFIG_SNAPSHOT)) if config is not None else None
    on_experiment = f"experiment {experiment!r}"
    with server_access(uri, on_experiment):
        run_id = retry(client.create_run, experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id
        log_params(client, run_id, {k: redact(v)[:PARAM_VALUE_LIMIT] for k, v in params.items()})
        if snapshot is not None:
            _log_snapshot(client, run_id, snapshot, explain_failure=lambda exc: explain(exc, uri, on_experiment))
    write_text(path, run_id + "\n")
    return run_id


def _record_code_version(code_dir: str | os.PathLike, record: Path) -> dict[str, str]:
    """The code version's tags, also written to `record` for the jobs."""
    code = code_version(code_dir)
    tags = dict(code)
    if "git_dirty" in code and not code["git_commit"].startswith(("unknown", "no commit")):
        tags["mlflow.source.git.commit"] = code["git_commit"]  # shown by the MLflow UI
    write_json(record, code)
    return tags


def _write_config_snapshot(config: dict, snapshot: Path) -> Path:
    # through JSON: Snakemake's config may hold dict subclasses that safe_dump refuses
    plain = redact_tree(json.loads(json.dumps(config)))
    write_text(snapshot, yaml.safe_dump(plain, sort_keys=False))
    return snapshot


def _log_snapshot(client, run_id: str, snapshot: Path, explain_failure) -> None:
    try:
        client.log_artifact(run_id, str(snapshot))
    except Exception as exc:  # an unreachable artifact store must not stop the workflow
        message = explain_failure(exc)
        print(f"warning: could not log {snapshot} on the parent run: {message}", file=sys.stderr)
        retry(client.set_tag, run_id, "tracking_error", message[:TAG_VALUE_LIMIT])


def end_parent(tracking_uri: str | None, parent_file: str | os.PathLike, status: str) -> None:
    """Mark the parent run recorded in `parent_file` FINISHED or FAILED (`status`); nothing without the file.

    A failure is a warning: the jobs' outputs are what the invocation made.
    """
    path = Path(parent_file)
    if not path.exists():
        return
    uri = resolve_uri(tracking_uri)
    run_id = path.read_text().strip()
    try:
        retry(open_client(uri).set_terminated, run_id, status)
    except Exception as exc:
        why = explain(exc, uri, "the workflow's parent run")
        print(f"warning: could not mark the parent run {run_id} {status}: {why}", file=sys.stderr)
