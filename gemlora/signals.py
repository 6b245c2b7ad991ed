"""Signals gemlora's processes answer.

Foreground commands stop the same way for `kill` (SIGTERM, what systemd, Kubernetes and
`make demo-stop`-style scripts send) as for Ctrl-C: their `finally` and `with` cleanup runs.

`gemlora train` pauses on PAUSE_SIGNAL (Ctrl-Z-like, for a run started from a shell): it stops
at the next safe point with a checkpoint, to be resumed (train/pause.py). The jobs API asks its
workers through the run directory instead (`gemlora.rundir.request_pause`), which also reaches a
worker that is still starting.
"""

from __future__ import annotations

import signal
import threading

PAUSE_SIGNAL = signal.SIGUSR1
_pause_requested = threading.Event()


def sigterm_as_ctrl_c() -> None:
    """From now on, SIGTERM raises KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def listen_for_pause() -> None:
    """From now on PAUSE_SIGNAL asks this process to pause (an earlier request is forgotten).
    Main thread only (where Python runs signal handlers)."""
    _pause_requested.clear()
    signal.signal(PAUSE_SIGNAL, lambda _signum, _frame: _pause_requested.set())


def pause_requested() -> bool:
    return _pause_requested.is_set()
