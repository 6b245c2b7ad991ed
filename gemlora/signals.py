"""Foreground commands stop the same way for `kill` (SIGTERM, what systemd, Kubernetes and
`make demo-stop`-style scripts send) as for Ctrl-C: their `finally` and `with` cleanup runs."""

from __future__ import annotations

import signal


def sigterm_as_ctrl_c() -> None:
    """From now on, SIGTERM raises KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


# `gemlora train` stops at the end of its step with a checkpoint, to be resumed (train/pause.py);
# the jobs API's pause endpoint sends it to a job's worker.
PAUSE_SIGNAL = signal.SIGUSR1
