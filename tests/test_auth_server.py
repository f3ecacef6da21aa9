"""The tracking against a team server with a login: `mlflow server --app-name basic-auth` on 127.0.0.1.

The server runs with its own sqlite stores and an auth config whose admin
password is set in the file, so no password change is needed before use.
The workflow's user (a plain user the admin creates) gives the login only
through MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD: the parent
run and the train stage's wrapper (a child run, its params, metrics, log,
model and registered version) work, and so does Snakemake running the demo
job; without the login, with a wrong password, or without permission on the
experiment, they stop with one error naming what to set; the passwords are
found nowhere in what the server stored nor in what was printed.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.errors import PipelineError
from pipeline.tracking.access import TrackingAccessError, resolve_uri
from pipeline.tracking.parent import start_parent

from helpers import REPO, TINY, free_port, register_flags, running_server, tool_env, trained_run_files

pytest.importorskip("flask_wtf", reason="mlflow[auth] (envs/common.txt) is not installed")

EXPERIMENT = "auth"
MODEL = "alexnet-auth"
# random per run: a fixed one could be found by chance in some unrelated stored text
PASSWORDS = {user: f"{user}-{secrets.token_urlsafe(18)}" for user in ("admin", "alice", "bob")}
LOGIN_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
HEALTH_TIMEOUT_S = 120
# everything the tests saw printed, checked for passwords at the end
PRINTED: list[str] = []


def _env(user: str | None = None, password: str | None = None, **extra: str) -> dict[str, str]:
    env = tool_env(OMP_NUM_THREADS="1", **extra)
    for name in LOGIN_ENV:
        env.pop(name, None)
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
        env["MLFLOW_TRACKING_PASSWORD"] = password if password is not None else PASSWORDS[user]
    return env


@contextmanager
def login(user: str | None, password: str | None = None):
    """This process's MLflow client as `user` (None: no login)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in LOGIN_ENV:
            mp.delenv(name, raising=False)
        if user:
            mp.setenv("MLFLOW_TRACKING_USERNAME", user)
            mp.setenv("MLFLOW_TRACKING_PASSWORD", password if password is not None else PASSWORDS[user])
        yield


def _create_user(uri: str, user: str) -> None:
    """The admin creates `user` through the auth app's REST API."""
    basic = base64.b64encode(f"admin:{PASSWORDS['admin']}".encode()).decode()
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/users/create",
        method="POST",
        data=json.dumps({"username": user, "password": PASSWORDS[user]}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-server")
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root}/auth.db\n"
        "admin_username = admin\n"
        f"admin_password = {PASSWORDS['admin']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # each request checks the password with PBKDF2, a second or two of a busy test CPU;
        # the server's cache of good logins saves it for the next ones
        "auth_cache_ttl_seconds = 600\n"
    )
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    # one worker: each one loads all of mlflow, and this is a test machine's CPU
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # stop_timeout 3: a graceful stop waits half a minute for uvicorn's background job runner,
    # which nothing here needs
    with running_server(cmd, f"{uri}/health", root / "server.log", HEALTH_TIMEOUT_S, stop_timeout=3, cwd=root, env=env):
        for user in ("alice", "bob"):
            _create_user(uri, user)
        yield {"uri": uri, "root": root}


def _wrap(server, work, *args, env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.track", "run", "--experiment", EXPERIMENT, *args]
    proc = subprocess.run(
        cmd, cwd=work, env={**env, "MLFLOW_TRACKING_URI": server["uri"]}, capture_output=True, text=True, timeout=300
    )
    PRINTED.extend([proc.stdout, proc.stderr])
    return proc


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """alice's workflow: the parent run, then the train stage's wrapper logging and registering a tiny model."""
    work = tmp_path_factory.mktemp("auth-work")
    files = trained_run_files(work, np.random.default_rng(5))
    inputs = files["inputs"]

    parent_file = work / "results" / ".tracking" / "parent_run_id"
    # what the Snakefile's onstart passes, with a database URI holding a password among the params
    db_uri = f"postgresql://mlflow:{PASSWORDS['alice']}@dbhost:5432/mlflow"
    with login("alice"):
        parent = start_parent(
            server["uri"],
            EXPERIMENT,
            parent_file,
            "workflow auth",
            params={"tracking.tracking_uri": server["uri"], "other.db": db_uri},
            tags={"command": f"snakemake --config other.db={db_uri}"},
            config={"tracking": {"tracking_uri": server["uri"]}, "other": {"db": db_uri}},
        )

    # the stage echoes the login it inherited: the wrapper masks it in the log and the terminal
    stage = (
        "import json, os; print('login:', os.environ['MLFLOW_TRACKING_PASSWORD']); "
        f"json.dump({{'inputs': {inputs!r}}}, open('train/train.json', 'w')); "
        "json.dump({'train_loss': 1.25}, open('train/metrics.json', 'w'))"
    )
    record = work / "train" / "registered_model.json"
    proc = _wrap(
        server,
        work,
        "--stage",
        "train",
        "--log",
        "logs/train.log",
        "--parent-file",
        str(parent_file),
        "--metrics",
        "train/metrics.json",
        *register_flags(files, MODEL, record, "train/train.json"),
        "--",
        sys.executable,
        "-c",
        stage,
        "--epochs",
        "2",
        "--url",
        f"http://alice:{PASSWORDS['alice']}@x/",
        env=_env("alice"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warning" not in proc.stderr, proc.stderr[-4000:]
    return {"work": work, "parent": parent, "record": record, "proc": proc}


@pytest.mark.integration
def test_stage_run_and_registered_version_with_the_login_from_the_environment(server, trained):
    record = json.loads(trained["record"].read_text())
    assert (record["name"], record["version"]) == (MODEL, "1")
    with login("alice"):
        client = MlflowClient(server["uri"])
        version = client.get_model_version(MODEL, "1")
        run = client.get_run(version.run_id)
        parent = client.get_run(trained["parent"])
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == trained["parent"]
    assert run.data.params["epochs"] == "2" and run.data.params["url"] == "http://***@x/"
    assert run.data.metrics["train_loss"] == 1.25 and "wall_time_s" in run.data.metrics
    assert version.tags["config"] == f"runs:/{run.info.run_id}/config.yaml"
    assert parent.data.params["tracking.tracking_uri"] == server["uri"]
    assert parent.data.params["other.db"] == "postgresql://***@dbhost:5432/mlflow"
    assert parent.data.tags["command"] == "snakemake --config other.db=postgresql://***@dbhost:5432/mlflow"
    assert (trained["work"] / "logs/train.log").read_text().startswith("login: ***\n")


@pytest.mark.integration
def test_without_a_login_the_wrapper_stops_with_one_error_before_the_stage(server, tmp_path):
    proc = _wrap(server, tmp_path, "--stage", "pca", "--log", "pca.log", "--", "echo", "ran", env=_env())
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: the MLflow tracking server {server['uri']} needs a login: export MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD in the shell that starts the workflow, never in config.yaml or on the command "
        "line\n"
    )
    assert not (tmp_path / "pca.log").exists()  # the stage never ran


@pytest.mark.integration
def test_wrong_password_names_the_user_and_the_variables(server, tmp_path, capsys):
    with login("alice", "not-" + PASSWORDS["alice"]), pytest.raises(TrackingAccessError) as refused:
        start_parent(server["uri"], EXPERIMENT, tmp_path / "parent_run_id", "workflow", {}, {})
    assert str(refused.value) == (
        f"the MLflow tracking server {server['uri']} refused the login of user 'alice' given by "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD: check both (the server's admin can reset the "
        "password)"
    )
    assert isinstance(refused.value, PipelineError)
    assert not (tmp_path / "parent_run_id").exists()
    PRINTED.extend(capsys.readouterr())


@pytest.mark.integration
def test_no_permission_names_the_experiment(server, trained, tmp_path, capsys):
    """bob may read alice's experiment (the server's default permission READ), not add runs to it."""
    with login("bob"), pytest.raises(TrackingAccessError) as refused:
        start_parent(server["uri"], EXPERIMENT, tmp_path / "parent_run_id", "workflow", {}, {})
    assert str(refused.value).startswith(
        f"the MLflow tracking server {server['uri']} denies user 'bob' permission on experiment 'auth': ask its "
        "owner or the server's admin for EDIT permission on it"
    )
    PRINTED.extend(capsys.readouterr())


@pytest.mark.integration
def test_a_login_in_the_uri_is_refused_and_not_repeated(server):
    with pytest.raises(PipelineError) as refused:
        resolve_uri(server["uri"].replace("//", f"//alice:{PASSWORDS['alice']}@"))
    message = str(refused.value)
    assert message.startswith(f"the tracking URI {server['uri'].replace('//', '//***@')} holds a login")
    assert "MLFLOW_TRACKING_USERNAME" in message and PASSWORDS["alice"] not in message


def _snakemake_demo(server, work, env) -> subprocess.CompletedProcess:
    """The workflow's cheapest job, `demo` at test size, tracked on the server (experiment: the config's)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--cores",
        "1",
        "demo",
        "--configfile",
        str(TINY),
    ]
    proc = subprocess.run(
        cmd, cwd=work, env={**env, "MLFLOW_TRACKING_URI": server["uri"]}, capture_output=True, text=True, timeout=300
    )
    PRINTED.extend([proc.stdout, proc.stderr])
    return proc


@pytest.mark.e2e
def test_without_a_login_snakemake_stops_in_onstart_with_the_error(server, tmp_path):
    """The Snakefile's onstart creates the parent run, before any job: that is where a missing login shows."""
    proc = _snakemake_demo(server, tmp_path, _env())
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-4000:]
    assert (
        f"the MLflow tracking server {server['uri']} needs a login: export MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD"
    ) in output, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert not (tmp_path / "data").exists()  # no job ran


@pytest.mark.e2e
def test_snakemake_tracks_on_the_server_with_the_login_from_the_environment(server, tmp_path):
    proc = _snakemake_demo(server, tmp_path, _env("alice"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with login("alice"):
        client = MlflowClient(server["uri"])
        exp = client.get_experiment_by_name("alexnet")
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent, demo = runs["workflow demo"], runs["demo"]
    assert parent.info.status == demo.info.status == "FINISHED"
    assert demo.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert demo.data.params["classes"] == "4" and demo.data.metrics["wall_time_s"] > 0


@pytest.mark.integration
def test_no_password_in_what_the_server_stored_or_anything_printed(server, trained):
    passwords = list(PASSWORDS.values())
    with login("admin"):
        client = MlflowClient(server["uri"])
        stored = []
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                stored += [*run.data.params.items(), *run.data.tags.items()]
        for version in client.search_model_versions(f"name='{MODEL}'"):
            stored += list(version.tags.items())
        log = client.download_artifacts(
            json.loads(trained["record"].read_text())["run_id"], "logs/train.log", str(trained["work"])
        )
    leaked = [(k, v) for k, v in stored for p in passwords if p in k or p in v]
    assert stored and not leaked
    assert open(log).read().startswith("login: ***\n")
    # the server's own run store and artifacts (the auth database keeps only password hashes)
    files = [server["root"] / "mlflow.db", *(p for p in (server["root"] / "artifacts").rglob("*") if p.is_file())]
    leaks = [str(f) for f in files for p in passwords if p.encode() in f.read_bytes()]
    assert not leaks
    assert PRINTED and not [text for text in PRINTED for p in passwords if p in text]
