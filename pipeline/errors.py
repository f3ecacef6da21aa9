"""One base class for the errors a stage reports to its user, and the CLI ending that reports them.

A stage raises a PipelineError subclass when its input or settings cannot
work; the message names the file, key or value and says what to do. The
stages' CLIs print it as one `error: ...` line and exit 1, so a Snakemake log
shows the cause rather than a traceback. An OSError (disk full, permission
denied, a file that vanished) is the machine's rather than the code's and is
reported the same way; its message names the file. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class PipelineError(Exception):
    """An input or setting a stage cannot work with (the message says which and what to do)."""


def run_cli(stage: Callable, *args, **kwargs) -> int:
    """Run a stage function for a CLI: 0 on success, 1 with an `error:` line on a PipelineError or OSError."""
    try:
        stage(*args, **kwargs)
    except (PipelineError, OSError) as exc:
        print(f"error: {exc}{_disk_full_hint(exc)}", file=sys.stderr)
        return 1
    return 0


def _disk_full_hint(exc: BaseException) -> str:
    """What to do after a full disk that a writer reported without the file (pipeline.io names it where it writes)."""
    if not isinstance(exc, OSError) or isinstance(exc, PipelineError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    return "; free some space (or move paths.results to a larger disk) and rerun: the rerun continues from what is done"
