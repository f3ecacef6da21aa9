"""A tracking server that goes away: the stage's work stands, and a server that is not there stops
a workflow before its first job, within seconds.

The server is a real `mlflow server` on 127.0.0.1, killed while a wrapped stage (a few lines of
Python standing in for a training) runs; the closed port is one that free_port() found free.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.tracking.access import (
    BACKOFF_ENV,
    RETRIES_ENV,
    TIMEOUT_ENV,
    TrackingUnreachable,
    bound_requests,
    check_reachable,
    open_client,
)
from pipeline.tracking.parent import end_parent
from pipeline.tracking.runs import error_record

from helpers import REPO, TINY, free_port, running_server, snakemake, tool_env

SERVER_START_S = 120
# the stage's stand-in: says it started, waits for the word to finish, then leaves its outputs
STAGE = """
import json, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
out.mkdir(exist_ok=True)
with open(out / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "loss": 2.0}) + "\\n")
(out / "started").touch()
while not (out / "go").exists():
    time.sleep(0.1)
with open(out / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 2, "loss": 1.0}) + "\\n")
(out / "result.json").write_text(json.dumps({"images": 12}))
print("stage done")
"""


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)


@pytest.mark.integration
def test_a_server_killed_mid_stage_leaves_the_stage_standing(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db"]
    server += ["--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    server += ["--workers", "1"]
    out = tmp_path / "stage"
    wrapper = [sys.executable, "-m", "pipeline.track", "run", "--tracking-uri", uri, "--experiment", "outage"]
    wrapper += ["--stage", "train", "--log", "logs/train.log", "--metrics", "stage/result.json"]
    wrapper += ["--artifact", "stage/result.json", "--jsonl", "stage/metrics.jsonl"]
    wrapper += ["--", sys.executable, "-c", STAGE, str(out)]
    with running_server(server, f"{uri}/health", tmp_path / "server.log", SERVER_START_S, stop_timeout=3, cwd=tmp_path):
        proc = subprocess.Popen(wrapper, cwd=tmp_path, env=tool_env(), stderr=subprocess.PIPE, text=True)
        _wait_for(out / "started", 120)  # the run was opened before the command started
    killed = time.monotonic()
    (out / "go").touch()
    _, stderr = proc.communicate(timeout=120)
    after_kill = time.monotonic() - killed

    assert proc.returncode == 0, stderr[-4000:]
    assert json.loads((out / "result.json").read_text()) == {"images": 12}
    assert after_kill < 60, f"{after_kill:.0f} s in MLflow's retries after the server went away"
    record = json.loads(error_record(tmp_path / "logs/train.log").read_text())
    assert record["stage"] == "train" and record["exit_status"] == 0 and record["tracking_uri"] == uri
    assert record["run_id"] and record["errors"], record
    assert record["errors"][0]["what"] == "train succeeded but its step metrics were not all logged"
    assert "Connection refused" in record["errors"][0]["why"]
    assert "warning: train succeeded but" in stderr and "Traceback" not in stderr
    log = (tmp_path / "logs/train.log").read_text()
    assert log.startswith("stage done\n") and "warning: train succeeded but MLflow logging failed" in log


@pytest.mark.integration
def test_the_stage_s_own_failure_keeps_its_exit_status_when_the_server_is_gone(tmp_path):
    """Nothing listens: the stage runs untracked, its exit status is the wrapper's, the record says why."""
    uri = f"http://127.0.0.1:{free_port()}"
    script = "import sys; print('error: md5 mismatch'); sys.exit(3)"
    cmd = [sys.executable, "-m", "pipeline.track", "run", "--tracking-uri", uri, "--experiment", "outage"]
    cmd += ["--stage", "fetch", "--log", "f.log", "--", sys.executable, "-c", script]
    proc = subprocess.run(cmd, cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert "fetch failed (exit 3)" in proc.stderr
    record = json.loads(error_record(tmp_path / "f.log").read_text())
    assert record["exit_status"] == 3 and record["run_id"] is None
    assert record["errors"][0]["what"] == "fetch ran untracked: MLflow could not be reached as it started"
    # the next run that tracks without failures removes the record
    cmd[cmd.index("-c") + 1] = "print('fine')"
    cmd[cmd.index("--tracking-uri") + 1] = f"sqlite:///{tmp_path}/m.db"
    proc = subprocess.run(cmd, cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not error_record(tmp_path / "f.log").exists()


@pytest.mark.unit
def test_the_check_names_the_uri_and_the_way_to_run_without_tracking(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(TIMEOUT_ENV, "120")  # the workflow's own values are left as they were
    monkeypatch.setenv(RETRIES_ENV, "7")
    client = open_client(uri)
    start = time.monotonic()
    with pytest.raises(TrackingUnreachable) as caught:
        check_reachable(client, uri)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert uri in message and "Connection refused" in message and "Start the server" in message
    assert "tracking.enabled: false" in message and """--config 'tracking={"enabled": false}'""" in message
    assert (TIMEOUT_ENV, RETRIES_ENV) == ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    assert (os.environ[TIMEOUT_ENV], os.environ[RETRIES_ENV]) == ("120", "7")
    check_reachable(client, "sqlite:///nowhere/m.db")  # a database has no server to be down


@pytest.mark.unit
def test_requests_are_bounded_unless_the_environment_says_otherwise():
    env = {}
    bound_requests(45, 3, env)
    assert env == {TIMEOUT_ENV: "45", RETRIES_ENV: "3", BACKOFF_ENV: "1"}
    env = {RETRIES_ENV: "5"}
    bound_requests(environ=env)
    assert env == {TIMEOUT_ENV: "30", RETRIES_ENV: "5", BACKOFF_ENV: "1"}


@pytest.mark.unit
def test_the_schema_defaults_are_the_wrapper_s():
    import yaml

    from pipeline.tracking import access

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    tracking = schema["properties"]["tracking"]["properties"]
    assert tracking["request_timeout_s"]["default"] == access.REQUEST_TIMEOUT_S
    assert tracking["request_retries"]["default"] == access.REQUEST_RETRIES


@pytest.mark.integration
def test_ending_the_parent_run_on_a_server_that_is_gone_only_warns(tmp_path, capsys):
    (tmp_path / "parent_run_id").write_text("abc123\n")
    start = time.monotonic()
    end_parent(f"http://127.0.0.1:{free_port()}", tmp_path / "parent_run_id", "FINISHED")
    assert time.monotonic() - start < 30
    assert "warning: could not mark the parent run abc123 FINISHED" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_workflow_with_nothing_at_its_tracking_uri_stops_before_any_job(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = snakemake(
        tmp_path,
        "--cores",
        "all",
        "--configfile",
        str(TINY),
        "--config",
        f'tracking={{"tracking_uri": "{uri}"}}',
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert elapsed < 30, f"{elapsed:.0f} s"
    assert f"no MLflow tracking server answers at {uri}" in output and "tracking.enabled: false" in output
    assert not (tmp_path / "data").exists() and not list((tmp_path / "results").rglob("*.log"))
