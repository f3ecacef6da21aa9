"""MLflow tracking around the stages, from the outside.

Stage code never imports mlflow. Each Snakemake rule runs its stage through

    python -m pipeline.track run --stage pca --log results/logs/pca.log \
        [--metrics FILE.json] [--artifact PATH]... [--jsonl FILE.jsonl] \
        [--model CHECKPOINT --mean-image NPY --classes TSV] [--parent-metrics FILE.json] \
        [--parent-note FILE.md] [--redact-env NAME] \
        [--register NAME --registered-file FILE.json --fingerprints TRAIN.json] \
        [--tag-registered FILE.json --evaluated-checkpoint CHECKPOINT] \
        -- python -m pipeline.pca --stats ... --out-dir ...

which opens a child run under the workflow invocation's parent run, runs the
command with its output written to the log (and echoed to the terminal),
logs every `--flag value` of the stage command as a parameter, streams the
lines of `--jsonl` as step metrics while the command runs (the training
curve shows live in the MLflow UI), and on exit logs the numeric leaves of
`--metrics`, the artifacts, the log and, for training, the model. The run
ends FINISHED or FAILED with the command's exit status.

Imports: mlflow (4 s to import on 2 cores) and pipeline.image_model (torch)
are imported inside the functions that talk to the server, the file's only
imports below its top, so a stage run with tracking off (`--no-tracking`)
starts without them.

The Snakefile's onstart handler calls `start_parent` once per invocation,
before any job runs: that also creates the sqlite database and experiment,
so parallel jobs never race to create them. The parent's id is passed to the
jobs in a file (`--parent-file`), which works for local and cluster jobs.

The value of the environment variable named by `--redact-env` (an auth
token) is replaced by *** in everything written to the log and the terminal.

A tracking server with a login (docs/cluster.md). The credentials come only
from the environment, where MLflow reads them: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN). An http(s) tracking URI
with a user:password@ part is refused, since a URI is printed, stored as a
parameter and seen in process lists. Their values are masked in the stage
logs, and a user:password@ of any URL (a database URI, a download URL) is
replaced by ***@ in what is stored as parameters and tags. A request the
server refuses (HTTP 401: no or wrong login; 403: no permission on the
experiment or registered model) ends in one `error:` line naming the server
and what to set or ask for (TrackingAccessError), not a traceback.

Provenance. `start_parent` records, on the parent run, the workflow's git
commit and whether its work tree had uncommitted changes (tags git_commit,
git_dirty) and the resolved config as the artifact config.yaml; it leaves
both beside the parent run file (config.yaml, code_version.json) for the jobs.

The registry. With `--register NAME --registered-file FILE --fingerprints
TRAIN_JSON`, the train stage's logged model becomes a new version of the
registered model NAME, tagged with that provenance (git_commit, git_dirty,
config: the run's copy of config.yaml) and the fingerprints of the data it
was trained on (inputs.manifest, inputs.shards, ...: train.json's "inputs");
FILE records the version (name, version, the checkpoint's sha256). With
`--tag-registered FILE --evaluated-checkpoint CKPT` the evaluate stage sets
its top-1/top-5 errors as tags on that version, if CKPT is the checkpoint it
was made from. A registry failure leaves the stage's outputs standing: a
warning, and the run's tag tracking_error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from pipeline.errors import PipelineError
from pipeline.fingerprint import file_digest
from pipeline.io import read_json, write_json, write_text

REDACTED = b"***"
DEFAULT_URI = "sqlite:///mlflow.db"
# where MLflow's client reads a tracking server's login; the only place it may come from
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
# the user:password@ (or token@) of a URL anywhere in a text
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
# beside the parent run file: what the invocation ran with, for the jobs' model versions
CONFIG_SNAPSHOT = "config.yaml"
CODE_VERSION = "code_version.json"
# the evaluate stage's headline errors (pipeline/evaluate.py), tags of the registered version
EVALUATION_TAGS = ("val_top1_err_10crop", "val_top5_err_10crop", "val_top1_err_center", "val_top5_err_center")


class TrackingAccessError(PipelineError):
    """The tracking server refused a request: no login, a wrong one, or no permission."""


def _secrets() -> list[str]:
    """The tracking password and token, where set."""
    # a value this short would mask ordinary characters of every text instead of a secret
    return [v for v in (os.environ.get(PASSWORD_ENV, ""), os.environ.get(TOKEN_ENV, "")) if len(v) >= 4]


def redact(text) -> str:
    """`text` with the user:password@ of its URLs and the tracking password or token replaced by ***."""
    text = _USERINFO.sub(r"\1***@", str(text))
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _redact_tree(obj):
    if isinstance(obj, dict):
        return {k: _redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_tree(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def resolve_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use: the given one, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.

    An http(s) URI carrying a login is refused: the environment is the one
    place for it (a database URI keeps its password; it is masked where stored).
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        raise PipelineError(
            f"the tracking URI {redact(uri)} holds a login: remove the user:password@ part from "
            f"tracking.tracking_uri or MLFLOW_TRACKING_URI and export {USERNAME_ENV} and {PASSWORD_ENV} "
            "instead (a URI is printed and recorded with the runs; the environment is not)")
    return uri


def refusal(exc: BaseException, tracking_uri: str, resource: str | None = None) -> TrackingAccessError | None:
    """The error to report for a request the tracking server refused (401 or 403); None for other failures.

    resource: what the request needed permission on, for a 403 (e.g. "experiment 'alexnet'").
    """
    seen = set()
    while exc is not None and id(exc) not in seen:  # artifact uploads wrap requests' HTTPError
        seen.add(id(exc))
        code = getattr(exc, "error_code", None)
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if code == "UNAUTHENTICATED" or status == 401:
            return TrackingAccessError(_login_refused(redact(tracking_uri)))
        if code == "PERMISSION_DENIED" or status == 403:
            user = os.environ.get(USERNAME_ENV)
            who = f"user {user!r}" if user else "this login"
            on = resource or "the experiment or registered model it writes to"
            return TrackingAccessError(
                f"the MLflow tracking server {redact(tracking_uri)} denies {who} permission on {on}: ask its "
                "owner or the server's admin for EDIT permission on it, or (for an experiment) set "
                "tracking.experiment to one of your own")
        exc = exc.__cause__ or exc.__context__
    return None


def _login_refused(server: str) -> str:
    user, password, token = (os.environ.get(n) for n in (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV))
    if user and password:
        return (f"the MLflow tracking server {server} refused the login of user {user!r} given by {USERNAME_ENV} "
                f"and {PASSWORD_ENV}: check both (the server's admin can reset the password)")
    if token and not (user or password):
        return (f"the MLflow tracking server {server} refused the token in {TOKEN_ENV}; with the server's own "
                f"logins, export {USERNAME_ENV} and {PASSWORD_ENV} instead")
    unset = [n for n, v in ((USERNAME_ENV, user), (PASSWORD_ENV, password)) if not v]
    which = f" ({unset[0]} is not set)" if len(unset) == 1 else ""
    return (f"the MLflow tracking server {server} needs a login{which}: export {USERNAME_ENV} and {PASSWORD_ENV} "
            "in the shell that starts the workflow, never in config.yaml or on the command line")


def explain(exc: BaseException, tracking_uri: str, resource: str | None = None) -> str:
    """What a failed tracking request says to the user, with no login in it."""
    refused = refusal(exc, tracking_uri, resource)
    return str(refused) if refused is not None else redact(exc)


@contextmanager
def server_access(tracking_uri: str, resource: str | None = None):
    """Turns a refused request inside the block into TrackingAccessError (see `refusal`)."""
    try:
        yield
    except TrackingAccessError:
        raise
    except Exception as exc:
        refused = refusal(exc, tracking_uri, resource)
        if refused is None:
            raise
        raise refused from None  # MLflow's own text adds only the endpoint


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(tracking_uri))


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """sqlite serialises writers; a concurrent job can hold the lock briefly."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # mlflow wraps sqlalchemy's OperationalError
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        exp = client.get_experiment_by_name(name)  # created by someone else meanwhile
        if exp is None:  # or not: a refusal, say; that is the error to report
            raise
        return exp.experiment_id


def flatten(obj, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {'a.b': x}; bools, strings, lists skipped."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix[:-1]] = float(obj)
    return out


def cli_params(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a stage command; a bare flag counts as 'true'."""
    params: dict[str, str] = {}
    i = 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(command) and not command[i + 1].startswith("--"):
                    value = command[i + 1]
                    i += 1
                else:
                    value = "true"
            params[name.replace("-", "_")] = redact(value)[:6000]  # mlflow's param value limit
        i += 1
    return params


def code_version(directory: str | os.PathLike) -> dict[str, str]:
    """Tags naming the code in `directory`: git_commit, and git_dirty when it is a git checkout.

    git_dirty is "true" when the work tree differs from the commit, untracked
    files included (a new module changes what runs as much as an edited one);
    ignored files (results, caches) do not count.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=120)

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


def start_parent(tracking_uri: str, experiment: str, parent_file: str | os.PathLike,
                 run_name: str, params: dict[str, str], tags: dict[str, str],
                 code_dir: str | os.PathLike | None = None, config: dict | None = None) -> str:
    """Create the invocation's parent run; returns its id, also written to `parent_file`.

    code_dir: the workflow's folder, whose git commit and state become tags;
    config: the resolved config, logged as the artifact config.yaml. Both are
    also left beside `parent_file` (CODE_VERSION, CONFIG_SNAPSHOT), where the
    train job reads them for its registered model version.

    A user:password@ in the params, tags or config (the tracking or a
    download URI; the command line in a tag) is stored as ***@.
    A refused request raises TrackingAccessError.
    """
    uri = resolve_uri(tracking_uri)
    path = Path(parent_file)
    tags = {k: redact(v) for k, v in tags.items()}
    if code_dir is not None:
        code = code_version(code_dir)
        tags.update(code)
        if "git_dirty" in code and not code["git_commit"].startswith(("unknown", "no commit")):
            tags["mlflow.source.git.commit"] = code["git_commit"]  # shown by the MLflow UI
        write_json(path.with_name(CODE_VERSION), code)
    snapshot = None
    if config is not None:
        snapshot = path.with_name(CONFIG_SNAPSHOT)
        # through JSON: Snakemake's config may hold dict subclasses that safe_dump refuses
        config = _redact_tree(json.loads(json.dumps(config)))
        write_text(snapshot, yaml.safe_dump(config, sort_keys=False))
    client = _client(uri)
    from mlflow.entities import Param

    with server_access(uri, f"experiment {experiment!r}"):
        exp = experiment_id(client, experiment)
        run = _retry(client.create_run, exp, run_name=run_name, tags=tags)
        items = [Param(k, redact(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(client.log_batch, run.info.run_id, params=items[i:i + 100])
        if snapshot is not None:
            try:
                client.log_artifact(run.info.run_id, str(snapshot))
            except Exception as exc:  # an unreachable artifact store must not stop the workflow
                message = explain(exc, uri, f"experiment {experiment!r}")
                print(f"warning: could not log {snapshot} on the parent run: {message}", file=sys.stderr)
                _retry(client.set_tag, run.info.run_id, "tracking_error", message[:5000])
    write_text(path, run.info.run_id + "\n")
    return run.info.run_id


def end_parent(tracking_uri: str, parent_file: str | os.PathLike, status: str) -> None:
    path = Path(parent_file)
    if path.exists():
        uri = resolve_uri(tracking_uri)
        with server_access(uri, "the workflow's parent run"):
            _retry(_client(uri).set_terminated, path.read_text().strip(), status)


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        _retry(client.log_batch, run_id, metrics=items[i:i + 500])


class JsonlFollower(threading.Thread):
    """Logs each complete new line of a JSONL file as metrics at its "step".

    `open_run` gives the run to log to, or None while it cannot be known yet
    (a resumable stage has not said how it starts); lines wait until then.
    When the run continues an earlier attempt from step `resumed_at`, a line at
    or below that step is logged only for the metrics the earlier attempt had
    not logged yet (it may have been killed before its last lines were sent).
    """

    def __init__(self, client, open_run, path: str | None, period: float = 2.0):
        super().__init__(daemon=True)
        self.client, self.open_run, self.path, self.period = client, open_run, Path(path) if path else None, period
        self.run_id, self.resumed_at, self.logged_up_to = None, 0, {}
        self.offset = 0
        self.done = threading.Event()

    def ensure_run(self, final: bool = False) -> str | None:
        if self.run_id is None:
            opened = self.open_run(final)
            if opened is not None:
                self.run_id, self.resumed_at = opened
        return self.run_id

    def already_logged(self, key: str) -> int:
        """The last step of `key` in the run (-1: none)."""
        if key not in self.logged_up_to:
            history = _retry(self.client.get_metric_history, self.run_id, key)
            self.logged_up_to[key] = max((m.step for m in history), default=-1)
        return self.logged_up_to[key]

    def drain(self) -> None:
        if self.run_id is None or self.path is None or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            if self.path.stat().st_size < self.offset:  # truncated by a resume
                self.offset = 0
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = int(row.pop("step", 0))
            if "warning" in row:  # a health warning of the stage: a tag the run list shows
                _retry(self.client.set_tag, self.run_id, f"warning.{row['warning']}",
                       str(row.get("message", ""))[:5000])
                continue
            metrics = flatten(row)
            if self.resumed_at and step <= self.resumed_at:
                metrics = {k: v for k, v in metrics.items() if self.already_logged(k) < step}
            if metrics:
                log_metrics(self.client, self.run_id, metrics, step=step)

    def run(self) -> None:
        try:
            while not self.done.wait(self.period):
                if self.ensure_run():
                    self.drain()
        except Exception as exc:
            # no traceback from this thread: stop() tries again from the wrapper's own thread,
            # which reports a lasting failure (a refused login) as one error
            print(f"warning: live metrics stopped until the stage ends: {redact(exc)}", file=sys.stderr)

    def stop(self) -> str:
        self.done.set()
        self.join()
        self.ensure_run(final=True)
        self.drain()
        return self.run_id


ATTEMPT_RECORD = "mlflow_run.json"  # beside the stage's attempt file: which MLflow run its training uses


def read_json_or_none(path: Path):
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


class StageRunOpener:
    """Creates the stage's MLflow child run, or reopens the run of the training it continues.

    Without an attempt file the run is created at once. With one (the train
    stage's attempt.json: action resume | extend | start, reason, uid, from_step),
    the run is opened once the stage has written it: a resumed or extended
    training whose uid matches the recorded run continues that run (its metrics
    go on at the same steps); anything else gets a new run. The decision is
    set as tags (start, start_reason) and the run id recorded in mlflow_run.json.
    """

    def __init__(self, client, exp: str, args, parent: str | None, command: list[str]):
        self.client, self.exp, self.args, self.parent, self.command = client, exp, args, parent, command
        self.attempt_file = Path(args.attempt) if args.attempt else None
        if self.attempt_file:
            self.attempt_file.unlink(missing_ok=True)  # the stage writes this attempt's own

    def __call__(self, final: bool = False) -> tuple[str, int] | None:
        attempt = read_json_or_none(self.attempt_file) if self.attempt_file else None
        if self.attempt_file and attempt is None and not final:
            return None
        run_id, skip = None, 0
        record_path = self.attempt_file.with_name(ATTEMPT_RECORD) if self.attempt_file else None
        record = read_json_or_none(record_path) if record_path else None
        if attempt and attempt.get("action") in ("resume", "extend") and record and record.get("uid") == attempt["uid"]:
            run_id = self._reopen(record["run_id"])
            skip = int(attempt.get("from_step", 0)) if run_id else 0
        if run_id is None:
            tags = {"stage": self.args.stage}
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent
            run_id = _retry(self.client.create_run, self.exp, run_name=self.args.stage, tags=tags).info.run_id
        self._log_params(run_id)
        if attempt:
            for key, value in (("start", attempt.get("action")), ("start_reason", attempt.get("why")),
                               ("run_uid", attempt.get("uid"))):
                _retry(self.client.set_tag, run_id, key, str(value)[:5000])
            if record_path:
                tmp = record_path.with_name(record_path.name + f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps({"run_id": run_id, "uid": attempt.get("uid")}) + "\n")
                os.replace(tmp, record_path)
        return run_id, skip

    def _reopen(self, run_id: str) -> str | None:
        try:
            run = self.client.get_run(run_id)
        except Exception:  # deleted, or another tracking store: start a new run
            return None
        if run.info.lifecycle_stage != "active":
            return None
        _retry(self.client.update_run, run_id, status="RUNNING")
        attempts = int(run.data.tags.get("attempts", "1")) + 1
        _retry(self.client.set_tag, run_id, "attempts", str(attempts))
        if self.parent and self.parent != run.data.tags.get("mlflow.parentRunId"):
            _retry(self.client.set_tag, run_id, "resumed_under_parent", self.parent)
        return run_id

    def _log_params(self, run_id: str) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        # a continued run keeps its first values (MLflow params are write-once); the
        # settings that decide resuming are equal by construction, runtime ones may differ
        params = [Param(k, v) for k, v in cli_params(self.command).items() if k not in have]
        for i in range(0, len(params), 100):
            _retry(self.client.log_batch, run_id, params=params[i:i + 100])


def run_logged(command: list[str], log: Path, secret: bytes | None) -> int:
    """Run `command`, copying its output to `log` and stderr, masked: `secret`, the tracking password and token."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # longest first: a secret that contains another is masked whole
    secrets = sorted({s for s in [secret, *(v.encode() for v in _secrets())] if s}, key=len, reverse=True)
    keep = len(secrets[0]) - 1 if secrets else 0
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pending = b""
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            pending += chunk
            for s in secrets:
                pending = pending.replace(s, REDACTED)
            # hold back a tail that could be the start of a split secret
            cut = len(pending) if not chunk else max(0, len(pending) - keep)
            ready, pending = pending[:cut], pending[cut:]
            out.write(ready)
            out.flush()
            sys.stderr.buffer.write(ready)
            sys.stderr.flush()
            if not chunk:
                break
        return proc.wait()


def tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])


def log_model(tracking_uri: str | None, run_id: str, checkpoint: str, mean_image: str, classes: str) -> None:
    """The checkpoint's network as the run's pyfunc model "model", which takes images (pipeline/image_model.py)."""
    # four local copies at logging time would each draw a progress bar in the job's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    from pipeline.image_model import log_image_model

    mlflow.set_tracking_uri(resolve_uri(tracking_uri))
    with mlflow.start_run(run_id=run_id):
        return log_image_model(checkpoint, mean_image, classes, name="model")


class RegistryError(Exception):
    """A registry record or input file that cannot be used, named with its key."""


def _read_record(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise RegistryError(f"{path} holds {type(record).__name__}; expected an object with keys {list(keys)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise RegistryError(f"{path} has no key {missing[0]!r}; expected keys {list(keys)}")
    return record


def version_provenance(client, run_id: str, parent_file: str | None, fingerprints: str) -> dict[str, str]:
    """Tags for a model version: the code and config of the invocation, the data's fingerprints.

    The code version and config are the ones `start_parent` left beside the
    parent run file; the config is logged on `run_id` (a version holds tags,
    not files) and the tag `config` points at it. Without them (the wrapper
    run by hand) the code version is that of the repository holding this module.
    """
    tags: dict[str, str] = {}
    folder = Path(parent_file).parent if parent_file else None
    code_file = folder / CODE_VERSION if folder else None
    if code_file and code_file.exists():
        tags.update(json.loads(code_file.read_text()))
    else:
        tags.update(code_version(Path(__file__).resolve().parents[1]))
    config = folder / CONFIG_SNAPSHOT if folder else None
    if config and config.exists():
        client.log_artifact(run_id, str(config))
        tags["config"] = f"runs:/{run_id}/{CONFIG_SNAPSHOT}"
    else:
        tags["config"] = "not recorded: the workflow's onstart did not leave " + (
            str(config) if config else f"{CONFIG_SNAPSHOT} (no --parent-file)")
    record = _read_record(Path(fingerprints), ("inputs",))
    inputs = record["inputs"]
    if not isinstance(inputs, dict) or not inputs:
        raise RegistryError(f"{fingerprints}: key 'inputs' is {inputs!r}; expected the training data's "
                            "fingerprints {manifest, shards, pca, mean_image, classes}")
    tags.update({f"inputs.{k}": str(v) for k, v in inputs.items()})
    return tags


def register_version(client, run_id: str, args: argparse.Namespace, model_info) -> dict:
    """Register the run's logged model as a new version of `args.register`; record it in args.registered_file."""
    import mlflow

    digest = file_digest(args.model)
    tags = {**version_provenance(client, run_id, args.parent_file, args.fingerprints), "checkpoint_sha256": digest}
    mlflow.set_tracking_uri(resolve_uri(args.tracking_uri))
    version = _retry(mlflow.register_model, model_info.model_uri, args.register, tags=tags)
    record = {"name": version.name, "version": str(version.version), "model_uri": model_info.model_uri,
              "run_id": run_id, "checkpoint": str(args.model), "checkpoint_sha256": digest}
    write_json(Path(args.registered_file), record)
    _retry(client.set_tag, run_id, "registered_model", f"{version.name}/{version.version}")
    print(f"MLflow: registered {version.name} version {version.version}", file=sys.stderr)
    return record


def tag_registered_version(client, run_id: str, args: argparse.Namespace) -> dict | None:
    """Set the evaluation's errors as tags on the version recorded in args.tag_registered.

    Only when the evaluated checkpoint is the one that version was made from:
    evaluate.checkpoint may name last.pt or any other file. Returns the tags set.
    """

    path = Path(args.tag_registered)
    if not path.exists():
        print(f"note: no registered model version recorded in {path} (registration off or failed in the "
              "train stage); the evaluation is tagged on no version", file=sys.stderr)
        return None
    record = _read_record(path, ("name", "version", "checkpoint_sha256"))
    if file_digest(args.evaluated_checkpoint) != record["checkpoint_sha256"]:
        print(f"note: {args.evaluated_checkpoint} is not the checkpoint of {record['name']} version "
              f"{record['version']} ({path}); its tags are left as they are", file=sys.stderr)
        return None
    tags = {}
    for metrics_file in args.metrics or []:
        metrics = _read_record(Path(metrics_file), ())
        tags.update({k: str(metrics[k]) for k in EVALUATION_TAGS if k in metrics})
    missing = [k for k in EVALUATION_TAGS if k not in tags]
    if missing:
        raise RegistryError(f"no {missing[0]!r} in the --metrics files {args.metrics}; the registered version "
                            f"is tagged with {list(EVALUATION_TAGS)}")
    tags["evaluate_run"] = run_id
    for key, value in tags.items():
        _retry(client.set_model_version_tag, record["name"], record["version"], key, value)
    print(f"MLflow: tagged {record['name']} version {record['version']} with the evaluation's errors",
          file=sys.stderr)
    return tags


def run_stage(args: argparse.Namespace) -> int:
    log = Path(args.log)
    secret = os.environ.get(args.redact_env, "").encode() if args.redact_env else None
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("error: no stage command given after --")
    if args.registered_file:
        # a record left by an earlier training must not be taken for this one's
        Path(args.registered_file).unlink(missing_ok=True)
    if args.no_tracking:
        return run_logged(command, log, secret or None)

    uri = resolve_uri(args.tracking_uri)
    args.tracking_uri = uri
    client = _client(uri)
    experiment = args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "alexnet")
    # checked before the command runs: a refused login should not wait for days of training
    on_experiment = f"experiment {experiment!r}"
    with server_access(uri, on_experiment):
        exp = experiment_id(client, experiment)
        parent = None
        if args.parent_file and Path(args.parent_file).exists():
            parent = Path(args.parent_file).read_text().strip()
        follower = JsonlFollower(client, StageRunOpener(client, exp, args, parent, command), args.jsonl)
        follower.ensure_run()
    follower.start()
    start = time.time()
    status = run_logged(command, log, secret or None)
    wall = time.time() - start
    with server_access(uri, on_experiment):
        run_id = follower.stop()

    ok = status == 0

    def failed(what: str, exc: Exception, resource: str = on_experiment) -> None:
        _tracking_failed(client, run_id, what, explain(exc, uri, resource))

    try:
        model_info = None
        try:
            model_info = log_outcome(client, run_id, args, ok, parent, wall, log)
        except Exception as exc:  # the stage's outputs stand even when the store misbehaves
            failed(f"{args.stage} succeeded but MLflow logging failed", exc)
        if ok and args.register:
            try:
                if model_info is None:
                    raise RegistryError("no model was logged")
                register_version(client, run_id, args, model_info)
            except Exception as exc:
                failed(f"{args.stage} succeeded but registering its model as {args.register} failed", exc,
                       f"registered model {args.register!r}")
        if ok and args.tag_registered:
            try:
                tag_registered_version(client, run_id, args)
            except Exception as exc:
                failed(f"{args.stage} succeeded but tagging the registered model version failed", exc,
                       f"the registered model recorded in {args.tag_registered}")
    finally:
        with server_access(uri, on_experiment):
            _retry(client.set_terminated, run_id, "FINISHED" if ok else "FAILED")
    if not ok:
        print(f"\n{args.stage} failed (exit {status}); last lines of {log}:\n{tail(log)}", file=sys.stderr)
    return status


def _tracking_failed(client, run_id: str, what: str, why: str) -> None:
    print(f"warning: {what}: {why}", file=sys.stderr)
    try:
        _retry(client.set_tag, run_id, "tracking_error", f"{what}: {why}"[:5000])
    except Exception as exc:  # the same refusal, most likely; the warning above says it
        print(f"warning: could not set the tag tracking_error on run {run_id} either: {redact(exc)}", file=sys.stderr)


def log_outcome(client, run_id: str, args: argparse.Namespace, ok: bool, parent: str | None,
                wall: float, log: Path):
    """Metrics, artifacts and model of a finished stage command; returns the logged model's ModelInfo or None."""
    model_info = None
    metrics = {"wall_time_s": wall}
    if ok and args.metrics:
        for path in args.metrics:
            metrics.update(flatten(json.loads(Path(path).read_text())))
    log_metrics(client, run_id, metrics)
    if ok and parent and args.parent_metrics:
        for path in args.parent_metrics:
            log_metrics(client, parent, flatten(json.loads(Path(path).read_text())))
    if ok and parent and args.parent_note:  # the run's description: the first thing its page shows
        client.set_tag(parent, "mlflow.note.content", Path(args.parent_note).read_text()[:5000])
    if ok:
        for artifact in args.artifact or []:
            if Path(artifact).is_dir():
                client.log_artifacts(run_id, artifact, Path(artifact).name)
            elif Path(artifact).exists():
                client.log_artifact(run_id, artifact)
        if args.model:
            model_info = log_model(args.tracking_uri, run_id, args.model, args.mean_image, args.classes)
    if log.exists():
        client.log_artifact(run_id, str(log), "logs")
    return model_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.track", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="run one stage command inside an MLflow child run")
    run.add_argument("--stage", required=True)
    run.add_argument("--log", required=True, help="file that receives the command's output")
    run.add_argument("--metrics", action="append", help="JSON file whose numeric leaves are logged as metrics")
    run.add_argument("--parent-metrics", action="append", help="JSON file logged on the parent run too")
    run.add_argument("--parent-note", help="markdown file that becomes the parent run's description")
    run.add_argument("--artifact", action="append", help="file or folder logged as an artifact")
    run.add_argument("--jsonl", help="JSONL file of step metrics, followed while the command runs")
    run.add_argument("--model", help="training checkpoint logged as an MLflow model that classifies images "
                                     "(needs --mean-image and --classes)")
    run.add_argument("--mean-image", help="the pca stage's mean image, packed with --model")
    run.add_argument("--classes", help="the fetch stage's class table, packed with --model")
    run.add_argument("--parent-file", help="file holding the parent run id (written by the Snakefile)")
    run.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    run.add_argument("--experiment", default=None, help="default: $MLFLOW_EXPERIMENT_NAME or alexnet")
    run.add_argument("--redact-env", help="environment variable whose value is masked in the log")
    run.add_argument("--attempt", help="the stage's attempt file (train: attempt.json); a resumed training "
                                       "continues its MLflow run")
    run.add_argument("--register", metavar="NAME", help="register the --model as a new version of the registered "
                                                        "model NAME (needs --registered-file, --fingerprints)")
    run.add_argument("--registered-file", help="JSON that records the registered version (written with --register)")
    run.add_argument("--fingerprints", help="the train stage's train.json, whose 'inputs' (the training data's "
                                            "fingerprints) become tags of the registered version")
    run.add_argument("--tag-registered", metavar="FILE", help="a --registered-file: the --metrics' top-1/top-5 "
                                                              "errors become tags of that version")
    run.add_argument("--evaluated-checkpoint", help="the checkpoint the stage evaluates; with --tag-registered, "
                                                    "the version is tagged only if it was made from this file")
    run.add_argument("--no-tracking", action="store_true", help="only run and log the command")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.model and not (args.mean_image and args.classes):
        run.error("--model needs --mean-image and --classes: the logged model preprocesses and names classes itself")
    if args.register and not (args.model and args.registered_file and args.fingerprints):
        run.error("--register needs --model (what is registered), --registered-file (where the version is "
                  "recorded) and --fingerprints (the training data it records)")
    if args.tag_registered and not (args.evaluated_checkpoint and args.metrics):
        run.error("--tag-registered needs --evaluated-checkpoint and --metrics (the errors it sets as tags)")
    try:
        return run_stage(args)
    except PipelineError as exc:  # a refused login or permission: one line, as the stages report theirs
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
