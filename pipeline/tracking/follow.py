"""Watching a stage command while it runs: its output teed to the log, masked; its JSONL metrics live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from pipeline.tracking.access import TAG_VALUE_LIMIT, log_metrics, login_secrets, redact, retry
from pipeline.tracking.runs import flatten

REDACTED = b"***"


class JsonlFollower(threading.Thread):
    """Logs each complete new line of a JSONL file as metrics at its "step".

    `open_run` gives the run to log to, or None while it cannot be known yet
    (a resumable stage has not said how it starts); lines wait until then.
    When the run continues an earlier attempt from step `resumed_at`, each
    metric is logged only at steps beyond the last one the run holds of it:
    the earlier attempt may have been killed before its last lines were sent
    (the resumed stage's file still has them, up to its checkpoint), or after
    it had sent steps past that checkpoint, which the resumed stage computes
    again; those keep the values first logged, and every step shows once.
    A line with a "warning" key (the stage's health warning) becomes the tag
    warning.<name> instead, which the run list shows.
    """

    def __init__(self, client, open_run, path: str | os.PathLike | None, period: float = 2.0, on_open=None):
        super().__init__(daemon=True)
        self.client, self.open_run, self.path, self.period = client, open_run, Path(path) if path else None, period
        self.on_open = on_open  # called as on_open(run_id, continued) once the run is known
        self.run_id, self.resumed_at, self.logged_up_to = None, 0, {}
        self.offset = 0
        self.done = threading.Event()

    def ensure_run(self, final: bool = False) -> str | None:
        if self.run_id is None:
            opened = self.open_run(final)
            if opened is not None:
                self.run_id, self.resumed_at = opened
                if self.on_open:
                    self.on_open(self.run_id, self.resumed_at > 0)
        return self.run_id

    def already_logged(self, key: str) -> int:
        """The last step of `key` in the run (-1: none): asked once, then kept up to date."""
        if key not in self.logged_up_to:
            history = retry(self.client.get_metric_history, self.run_id, key)
            self.logged_up_to[key] = max((m.step for m in history), default=-1)
        return self.logged_up_to[key]

    def new_lines(self) -> list[tuple[bytes, int]]:
        """The complete lines past `offset` (all of them again after a truncation), each with the offset
        just past it, which `drain` takes once the line is logged."""
        if self.path is None or not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            if self.path.stat().st_size < self.offset:  # truncated by a resume
                self.offset = 0
            f.seek(self.offset)
            data = f.read()
        lines, start = [], 0
        while (newline := data.find(b"\n", start)) >= 0:
            lines.append((data[start:newline], self.offset + newline + 1))
            start = newline + 1
        return lines

    def drain(self) -> None:
        """Log the new lines; a line that fails to log stays new, for the next try (`stop`'s)."""
        if self.run_id is None:
            return
        for line, end in self.new_lines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if row is not None:
                self.log_row(row)
            self.offset = end

    def log_row(self, row: dict) -> None:
        step = int(row.pop("step", 0))
        if "warning" in row:
            retry(
                self.client.set_tag,
                self.run_id,
                f"warning.{row['warning']}",
                str(row.get("message", ""))[:TAG_VALUE_LIMIT],
            )
            return
        metrics = flatten(row)
        if self.resumed_at:
            metrics = {k: v for k, v in metrics.items() if self.already_logged(k) < step}
        if metrics:
            log_metrics(self.client, self.run_id, metrics, step=step)
            if self.resumed_at:
                self.logged_up_to.update(dict.fromkeys(metrics, step))

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


def run_logged(command: list[str], log: Path, secret: bytes | None) -> int:
    """Run `command`, copying its output to `log` and stderr, masked: `secret`, the tracking password and token."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # longest first: a secret that contains another is masked whole
    secrets = sorted({s for s in [secret, *(v.encode() for v in login_secrets())] if s}, key=len, reverse=True)
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
            for sink in (out, sys.stderr.buffer):
                sink.write(ready)
                sink.flush()
            if not chunk:
                break
        return proc.wait()


def tail(path: Path, lines: int = 25) -> str:
    """The last `lines` non-blank lines of a log (progress bars' carriage returns count as line ends)."""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])
