"""The standard streams as the CLI needs them, whatever state the caller left them in.

- A closed stdin or stderr (`<&-`, `2>&-`: Python then sets it to None) reads as empty and
  writes nowhere, instead of failing on `None.isatty()` or sending errors to stdout.
- A stderr that stops taking writes (a reader that went away, a full disk) is dropped, never
  the run: it carries only progress and messages, and a batch run must not stop for them.
- Text goes out as UTF-8 whatever the locale (JSON is UTF-8), with the bytes of names and
  arguments that are not UTF-8 written back as they came; text read from stdin never fails on
  an invalid byte.
- A `COLUMNS` too small to lay anything out (0, 1, junk) is widened, so help and usage errors
  still show.

`standard_streams()` sets this up for one run of the CLI and puts everything back after (the
CLI's `main` may be called from Python).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

MIN_COLUMNS = 40  # below this rich's help boxes are a character per line


class ForgivingStream:
    """A text stream whose failed writes end its output, not the program."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._dead = False

    def write(self, text: str) -> int:
        if not self._dead:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._give_up()
        return len(text)

    def flush(self) -> None:
        if not self._dead:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._give_up()

    def isatty(self) -> bool:
        return not self._dead and self._stream.isatty()

    def _give_up(self) -> None:
        self._dead = True
        point_at_devnull(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def point_at_devnull(stream: Any) -> None:
    """Point `stream`'s descriptor at /dev/null after its reader went away or its disk filled:
    what is still buffered would fail again in the interpreter's exit flush (an "Exception
    ignored" line and exit 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _utf8(stream: Any, errors: str) -> None:
    if hasattr(stream, "reconfigure"):
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            stream.reconfigure(encoding="utf-8", errors=errors)


@contextlib.contextmanager
def standard_streams() -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr, os.environ.get("COLUMNS")
    try:
        if sys.stdin is None:
            sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        if sys.stderr is None:
            sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        _utf8(sys.stdin, "replace")
        _utf8(sys.stdout, "surrogateescape")
        _utf8(sys.stderr, "backslashreplace")
        sys.stderr = ForgivingStream(sys.stderr)
        columns = saved[3]
        if columns is not None and not (columns.strip().isdigit() and int(columns) >= MIN_COLUMNS):
            os.environ["COLUMNS"] = str(MIN_COLUMNS)
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved[:3]
        if saved[3] is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved[3]
