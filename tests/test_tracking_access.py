"""pipeline.tracking.access: logins kept out of what is stored, refusals explained, sqlite locks waited out."""

import pytest

from pipeline.errors import PipelineError
from pipeline.tracking import access
from pipeline.tracking.access import (
    TrackingAccessError,
    explain,
    redact,
    redact_tree,
    refusal,
    resolve_uri,
    retry,
    server_access,
)

LOGIN_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture
def no_login(monkeypatch):
    for name in LOGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.unit
def test_logins_are_masked_in_what_is_stored(no_login):
    no_login.setenv("MLFLOW_TRACKING_PASSWORD", "pa55-word")
    assert redact("postgresql://u:pw@db/x and https://tok@h/a@b and sqlite:////a@b/c.db, pa55-word") == (
        "postgresql://***@db/x and https://***@h/a@b and sqlite:////a@b/c.db, ***"
    )
    assert redact_tree({"db": ["http://u:p@h/x", 3, {"pw": "pa55-word"}], "n": None}) == {
        "db": ["http://***@h/x", 3, {"pw": "***"}],
        "n": None,
    }
    # a password this short would mask ordinary letters of every text
    no_login.setenv("MLFLOW_TRACKING_PASSWORD", "abc")
    assert redact("abc def") == "abc def"


@pytest.mark.unit
def test_tracking_uri_from_argument_environment_or_default(no_login):
    no_login.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == "sqlite:///mlflow.db"
    no_login.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    assert resolve_uri(None) == "http://h:5000"
    assert resolve_uri("sqlite:///other.db") == "sqlite:///other.db"
    with pytest.raises(PipelineError, match=r"the tracking URI http://\*\*\*@host:5000 holds a login"):
        resolve_uri("http://u:pa55-word@host:5000")
    assert resolve_uri("postgresql://u:pw@db/x") == "postgresql://u:pw@db/x"  # the database's own login


@pytest.mark.unit
def test_refused_requests_become_one_error_naming_what_to_set(no_login):
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED

    unauthenticated = MlflowException("401 != 200", error_code=UNAUTHENTICATED)
    denied = MlflowException("403 != 200", error_code=PERMISSION_DENIED)
    missing = refusal(unauthenticated, "http://h:5000")
    assert isinstance(missing, TrackingAccessError) and isinstance(missing, PipelineError)
    assert str(missing).startswith(
        "the MLflow tracking server http://h:5000 needs a login: export "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    no_login.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    assert "(MLFLOW_TRACKING_PASSWORD is not set)" in str(refusal(unauthenticated, "http://h:5000"))
    no_login.setenv("MLFLOW_TRACKING_PASSWORD", "secret-pw")
    assert "refused the login of user 'bob'" in str(refusal(unauthenticated, "http://h:5000"))
    assert str(refusal(denied, "http://h:5000", "registered model 'alexnet-x'")).startswith(
        "the MLflow tracking server http://h:5000 denies user 'bob' permission on registered model 'alexnet-x'"
    )
    # an artifact upload refused: requests' HTTPError, maybe inside another exception
    response = requests.Response()
    response.status_code = 401
    wrapped = MlflowException("could not upload")
    wrapped.__cause__ = requests.HTTPError("401 Client Error", response=response)
    assert "refused the login of user 'bob'" in str(refusal(wrapped, "http://h:5000"))
    assert refusal(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), "http://h:5000") is None


@pytest.mark.unit
def test_a_token_alone_is_named_when_refused(no_login):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

    no_login.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    message = str(refusal(MlflowException("401", error_code=UNAUTHENTICATED), "http://h:5000"))
    assert message.startswith("the MLflow tracking server http://h:5000 refused the token in MLFLOW_TRACKING_TOKEN")


@pytest.mark.unit
def test_server_access_turns_refusals_into_access_errors_and_lets_others_through(no_login):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    with pytest.raises(TrackingAccessError, match="permission on experiment 'x'") as caught:
        with server_access("http://h:5000", "experiment 'x'"):
            raise MlflowException("403", error_code=PERMISSION_DENIED)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(KeyError):
        with server_access("http://h:5000"):
            raise KeyError("not a refusal")
    # other failures are told with their own words, logins masked
    no_login.setenv("MLFLOW_TRACKING_PASSWORD", "hunter22")
    assert explain(OSError("connect http://u:hunter22@h failed"), "http://h:5000") == "connect http://***@h failed"


@pytest.mark.unit
def test_retry_waits_out_a_locked_database_only(monkeypatch):
    sleeps = []
    monkeypatch.setattr(access.time, "sleep", sleeps.append)
    calls = []

    def locked_twice(value):
        calls.append(value)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return value * 2

    assert retry(locked_twice, 21) == 42
    assert calls == [21, 21, 21] and sleeps == [0.2, 0.4]

    def broken():
        calls.append("broken")
        raise ValueError("no such table")

    calls.clear()
    with pytest.raises(ValueError):
        retry(broken)
    assert calls == ["broken"]  # not a lock: no second try

    def always_locked():
        raise RuntimeError("database is locked")

    sleeps.clear()
    with pytest.raises(RuntimeError):
        retry(always_locked, attempts=3)
    assert len(sleeps) == 2  # the last failure is raised, not slept on


@pytest.mark.integration
def test_experiment_created_once_or_found(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    created = access.experiment_id(client, "e")
    assert access.experiment_id(client, "e") == created
    assert [e.name for e in client.search_experiments()].count("e") == 1
