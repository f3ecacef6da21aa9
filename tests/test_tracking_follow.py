"""pipeline.tracking.follow: the JSONL metrics follower and the masked tee, against a recording client."""

import sys
import types

import pytest

from pipeline.tracking.follow import JsonlFollower, run_logged, tail

pytestmark = pytest.mark.unit


class RecordingClient:
    """The part of MlflowClient the follower calls, keeping what it was asked to log."""

    def __init__(self, history=None):
        self.metrics, self.tags, self.history = [], {}, history or {}

    def log_batch(self, run_id, metrics=(), params=()):
        self.metrics += [(run_id, m.key, m.value, m.step) for m in metrics]

    def set_tag(self, run_id, key, value):
        self.tags[key] = value

    def get_metric_history(self, run_id, key):
        return [types.SimpleNamespace(step=s) for s in self.history.get(key, [])]


def follower(client, path, opened=("run-1", 0)):
    return JsonlFollower(client, lambda final: opened, path, period=60)


def test_complete_lines_are_logged_at_their_step_and_a_partial_line_waits(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"step": 1, "loss": 2.5, "lr": {"fc": 0.01}}\n{"step": 2, "loss"')
    client = RecordingClient()
    f = follower(client, jsonl)
    assert f.ensure_run() == "run-1"
    f.drain()
    assert client.metrics == [("run-1", "loss", 2.5, 1), ("run-1", "lr.fc", 0.01, 1)]
    with open(jsonl, "a") as out:
        out.write(': 2.0}\nnot json\n{"step": 3, "warning": "dead_units", "message": "fc7 93% dead"}\n')
    f.drain()
    assert client.metrics[2:] == [("run-1", "loss", 2.0, 2)]
    assert client.tags == {"warning.dead_units": "fc7 93% dead"}


def test_a_truncated_file_is_read_again_from_its_start(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    client = RecordingClient()
    f = follower(client, jsonl)
    f.ensure_run()
    f.drain()
    jsonl.write_text('{"step": 1, "loss": 9.0}\n')  # a training started over
    f.drain()
    assert [m[2:] for m in client.metrics] == [(3.0, 1), (2.0, 2), (9.0, 1)]


def test_a_resumed_run_logs_only_what_the_earlier_attempt_had_not(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"step": 4, "loss": 1.0, "acc": 0.5}\n{"step": 5, "loss": 0.9, "acc": 0.6}\n'
        '{"step": 6, "loss": 0.8, "acc": 0.7}\n'
    )
    # the earlier attempt sent loss up to step 5 and acc up to step 4 before it was killed
    client = RecordingClient(history={"loss": [4, 5], "acc": [4]})
    f = follower(client, jsonl, opened=("run-1", 5))
    f.ensure_run()
    f.drain()
    assert [m[1:] for m in client.metrics] == [("acc", 0.6, 5), ("loss", 0.8, 6), ("acc", 0.7, 6)]


def test_steps_the_killed_attempt_logged_past_the_checkpoint_are_not_logged_again(tmp_path):
    """Killed at step 9 after logging it, resumed from the checkpoint at step 7: the stage's file holds
    steps up to 7 and then 8, 9, ... again; MLflow gets 10 and on, and a re-read file adds nothing."""
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("".join(f'{{"step": {s}, "loss": {10 - s}}}\n' for s in range(1, 12)))
    client = RecordingClient(history={"loss": list(range(1, 10))})
    f = follower(client, jsonl, opened=("run-1", 7))
    f.ensure_run()
    f.drain()
    assert [m[2:] for m in client.metrics] == [(0, 10), (-1, 11)]
    jsonl.write_text('{"step": 8, "loss": 5.0}\n')  # truncated again: still nothing new
    f.drain()
    assert [m[3] for m in client.metrics] == [10, 11]


def test_a_line_that_fails_to_log_is_tried_again(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    client = RecordingClient()
    calls = []

    def log_batch(run_id, metrics=(), params=()):
        calls.append(metrics[0].step)
        if len(calls) == 2:
            raise ConnectionError("the server went away")
        client.metrics += [(run_id, m.key, m.value, m.step) for m in metrics]

    client.log_batch = log_batch
    f = follower(client, jsonl)
    f.ensure_run()
    with pytest.raises(ConnectionError):
        f.drain()
    f.drain()
    assert calls == [1, 2, 2] and [m[3] for m in client.metrics] == [1, 2]


def test_lines_wait_until_the_run_is_known(tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"step": 1, "loss": 3.0}\n')
    client, answers = RecordingClient(), []

    def open_run(final):
        answers.append(final)
        return ("run-2", 0) if final else None

    f = JsonlFollower(client, open_run, jsonl, period=60)
    assert f.ensure_run() is None
    f.drain()
    assert client.metrics == []
    f.start()
    assert f.stop() == "run-2"
    assert answers[-1] is True and client.metrics == [("run-2", "loss", 3.0, 1)]


def test_run_logged_tees_and_masks_the_secret_and_tracking_password(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "tracking-pw")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    script = "import sys; print('token=my-secret pw=tracking-pw'); sys.stderr.write('err line\\n'); sys.exit(4)"
    log = tmp_path / "logs" / "s.log"
    assert run_logged([sys.executable, "-c", script], log, b"my-secret") == 4
    assert log.read_text() == "token=*** pw=***\nerr line\n"
    assert capfd.readouterr().err == "token=*** pw=***\nerr line\n"


@pytest.mark.parametrize("lines, expected", [(2, "b\nc"), (25, "a\nb\nc")])
def test_tail_counts_progress_bar_updates_as_lines(tmp_path, lines, expected):
    log = tmp_path / "x.log"
    log.write_text("a\n\n  \nb\rc\n")
    assert tail(log, lines) == expected
