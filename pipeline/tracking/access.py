"""Talking to the tracking server: where it is, what may be written to it, and why it refused.

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

The client, its retries while sqlite is locked, and batched logging live here
too. mlflow is imported inside the functions that call it: the rest serves a
stage run with tracking off, which should not pay mlflow's import time.

Requests to a tracking server are bounded. MLflow's client reads its HTTP
timeout and retries from the environment at every request; its defaults (120 s,
7 retries with a backoff that doubles up to 2 min) spend about 4 minutes on
each request to a server that is gone. `bound_requests` sets them (the config's
tracking.request_timeout_s and tracking.request_retries; a value already in the
environment wins), and `check_reachable` asks an http(s) server once, within
seconds, before a workflow starts: a URI nothing answers at stops it there
(TrackingUnreachable) with the two ways on.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from urllib.parse import urlsplit

from pipeline.errors import PipelineError

DEFAULT_URI = "sqlite:///mlflow.db"
# where MLflow's client reads a tracking server's login; the only place it may come from
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
# the user:password@ (or token@) of a URL anywhere in a text
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")
PARAM_VALUE_LIMIT = 6000  # MLflow's longest parameter value
TAG_VALUE_LIMIT = 5000  # what is kept of a tag: a note or an error message, not a log
# log_batch takes at most 100 params and 1000 metrics a call
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 500
# a value this short would mask ordinary characters of every text instead of a secret
_SHORTEST_SECRET = 4
# what MLflow's HTTP client reads for every request (mlflow.environment_variables)
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"  # seconds to connect, and to wait for each reply
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"  # retries wait 0, 2x, 4x, ... this many seconds
# the schema's defaults of tracking.request_timeout_s and tracking.request_retries, for the wrapper run by hand
REQUEST_TIMEOUT_S, REQUEST_RETRIES, REQUEST_BACKOFF_S = 30, 2, 1
# the check before a workflow starts: one try, this long
CHECK_TIMEOUT_S = 5


class TrackingAccessError(PipelineError):
    """The tracking server refused a request: no login, a wrong one, or no permission."""


class TrackingUnreachable(PipelineError):
    """Nothing answers at the tracking URI (or not as an MLflow server does)."""


def login_secrets() -> list[str]:
    """The tracking password and token, where set."""
    values = (os.environ.get(PASSWORD_ENV, ""), os.environ.get(TOKEN_ENV, ""))
    return [v for v in values if len(v) >= _SHORTEST_SECRET]


def redact(text) -> str:
    """`text` with the user:password@ of its URLs and the tracking password or token replaced by ***."""
    text = _USERINFO.sub(r"\1***@", str(text))
    for secret in login_secrets():
        text = text.replace(secret, "***")
    return text


def redact_tree(obj):
    """`obj` (dicts, lists, scalars) with every string in it redacted."""
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def resolve_uri(tracking_uri: str | None) -> str:
    """The tracking URI to use: the given one, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.

    An http(s) URI carrying a login is refused: the environment is the one
    place for it (a database URI keeps its password; it is masked where stored).
    Called once where a command starts; everything below takes its result.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        raise PipelineError(
            f"the tracking URI {redact(uri)} holds a login: remove the user:password@ part from "
            f"tracking.tracking_uri or MLFLOW_TRACKING_URI and export {USERNAME_ENV} and {PASSWORD_ENV} "
            "instead (a URI is printed and recorded with the runs; the environment is not)"
        )
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
            return TrackingAccessError(_permission_denied(redact(tracking_uri), resource))
        exc = exc.__cause__ or exc.__context__
    return None


def _login_refused(server: str) -> str:
    user, password, token = (os.environ.get(n) for n in (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV))
    if user and password:
        return (
            f"the MLflow tracking server {server} refused the login of user {user!r} given by {USERNAME_ENV} "
            f"and {PASSWORD_ENV}: check both (the server's admin can reset the password)"
        )
    if token and not (user or password):
        return (
            f"the MLflow tracking server {server} refused the token in {TOKEN_ENV}; with the server's own "
            f"logins, export {USERNAME_ENV} and {PASSWORD_ENV} instead"
        )
    unset = [n for n, v in ((USERNAME_ENV, user), (PASSWORD_ENV, password)) if not v]
    which = f" ({unset[0]} is not set)" if len(unset) == 1 else ""
    return (
        f"the MLflow tracking server {server} needs a login{which}: export {USERNAME_ENV} and {PASSWORD_ENV} "
        "in the shell that starts the workflow, never in config.yaml or on the command line"
    )


def _permission_denied(server: str, resource: str | None) -> str:
    user = os.environ.get(USERNAME_ENV)
    who = f"user {user!r}" if user else "this login"
    on = resource or "the experiment or registered model it writes to"
    return (
        f"the MLflow tracking server {server} denies {who} permission on {on}: ask its "
        "owner or the server's admin for EDIT permission on it, or (for an experiment) set "
        "tracking.experiment to one of your own"
    )


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


def bound_requests(
    timeout_s: int = REQUEST_TIMEOUT_S, retries: int = REQUEST_RETRIES, environ: MutableMapping | None = None
) -> None:
    """Bound every later MLflow HTTP request: `timeout_s` per wait, `retries` retries 0, 2, 4... s apart.

    Set in `environ` (this process's environment), which jobs inherit; a value
    already there wins, as MLFLOW_TRACKING_URI does over the config.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(TIMEOUT_ENV, str(int(timeout_s)))
    environ.setdefault(RETRIES_ENV, str(int(retries)))
    environ.setdefault(BACKOFF_ENV, str(REQUEST_BACKOFF_S))


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` inside the block, as it was after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unreachable(tracking_uri: str, exc: BaseException | str) -> str:
    """What to say when nothing answers at the tracking URI: which URI, why, and the two ways on."""
    text = redact(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)  # "Connection refused", not three wrapped layers
    why = errno.group(0) if errno else text[:300]
    return (
        f"no MLflow tracking server answers at {redact(tracking_uri)} ({why}). Start the server there, "
        "or run without tracking: tracking.enabled: false in the config, or "
        "--config 'tracking={\"enabled\": false}' on the command line"
    )


def check_reachable(client, tracking_uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """For an http(s) URI: one request, `timeout_s` long and not retried, that an MLflow server answers.

    Raises TrackingUnreachable (nothing answers, or not as MLflow does) or
    TrackingAccessError (it refuses the login). A database URI is not checked:
    there is no server to be down, and the first write creates the database.
    """
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return
    with _environ({TIMEOUT_ENV: str(max(1, round(timeout_s))), RETRIES_ENV: "0"}):
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:
            refused = refusal(exc, tracking_uri)
            if refused is not None:
                raise refused from None
            raise TrackingUnreachable(unreachable(tracking_uri, exc)) from None


def open_client(tracking_uri: str):
    """MLflow's client for a URI that `resolve_uri` has already checked; its requests bounded."""
    bound_requests()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def retry(fn, *args, attempts: int = 8, **kwargs):
    """`fn(*args, **kwargs)`, again after a pause while sqlite reports its database locked.

    sqlite serialises writers; a concurrent job can hold the lock briefly.
    """
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # mlflow wraps sqlalchemy's OperationalError
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if it does not exist yet."""
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


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(items), METRICS_PER_BATCH):
        retry(client.log_batch, run_id, metrics=items[i : i + METRICS_PER_BATCH])


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log `params` as they are: redacting and cutting them to length is the caller's part."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        retry(client.log_batch, run_id, params=items[i : i + PARAMS_PER_BATCH])
