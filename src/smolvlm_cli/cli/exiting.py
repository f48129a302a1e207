"""Leaving after a signal: the exit code is decided, so a further Ctrl-C ends the process at once.

Without this, the interpreter's exit joins the worker threads, and a second Ctrl-C there (users
press it twice) printed a KeyboardInterrupt traceback from `threading` and killed the process by
SIGINT instead of exiting 130.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys


def leave_on_next_signal() -> None:
    """From now on SIGINT / SIGTERM end the process at once, with 128 + the signal's number.
    Once the threads are joined they are ignored: the interpreter's last step puts back the
    default handlers of Python-level ones, and a signal then would kill the process by itself."""

    def leave(signum, _frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed, or a broken pipe
                pass
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, leave)
        except ValueError:  # not the main thread (a library caller): nothing to do
            return
    atexit.register(_ignore_signals)  # runs after the thread joins, before the finalization


def _ignore_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
