"""The `smolvlm` command: one module per command group, errors mapped to `Error: ...` lines.

Exit codes: 0 success, 1 a known error (bad file, missing model, ...), 2 a usage error,
130 Ctrl-C. A closed stdout pipe (`| head`) ends the run quietly. `SMOLVLM_DEBUG=1` shows
tracebacks.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from typing import Annotated, Optional

import typer

from smolvlm_cli import __version__
from smolvlm_cli.cli import batch, chat, describe, export, models, serve
from smolvlm_cli.cli.exiting import leave_on_next_signal
from smolvlm_cli.cli.help import Group
from smolvlm_cli.cli.streams import standard_streams
from smolvlm_cli.errors import SmolVLMError

app = typer.Typer(
    name="smolvlm",
    cls=Group,
    help="Caption images and answer questions about them with SmolVLM, fast, on a CPU.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"smolvlm-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    pass


describe.register(app)
models.register(app)
chat.register(app)
batch.register(app)
export.register(app)
serve.register(app)


def _error(message: str, hint: str | None = None) -> None:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Hint: {hint}", file=sys.stderr)


_OS_HINTS = {
    errno.ENOSPC: "free some disk space (or write elsewhere) and run the command again: a batch "
    "run keeps its finished results and resumes",
    errno.EDQUOT: "the disk quota is used up: free some space and run the command again",
    errno.EACCES: "check the permissions of that file or folder",
    errno.EPERM: "check the permissions of that file or folder",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENAMETOOLONG: "the name is too long for the file system: rename the file",
}


def _os_error(exc: OSError) -> tuple[str, str]:
    """An OS error as (message, hint): the reason, the file when known, what to do."""
    if exc.errno == errno.ENOENT and exc.filename is None and not _cwd_exists():
        return "the current folder no longer exists", "cd to a folder that exists (paths are read from there)"
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    name = exc.filename if exc.filename is not None else None
    message = f"{reason}: {os.fsdecode(name)}" if name is not None else reason
    if exc.filename2 is not None:
        message += f" -> {os.fsdecode(exc.filename2)}"
    return message, _OS_HINTS.get(exc.errno, "run with SMOLVLM_DEBUG=1 for the full traceback")


def _from_a_closed_pipe(exc: SystemExit) -> bool:
    """rich's exit for output into a closed pipe (help text: `smolvlm --help | head -1`); it has
    already pointed stdout at /dev/null."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "on_broken_pipe"


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """Typer handles usage errors (exit 2) and Ctrl-C (exit 130); known errors become one line."""
    with standard_streams():
        try:
            _main(argv)
        except KeyboardInterrupt:  # a Ctrl-C while an exit was being reported (users press it twice)
            leave_on_next_signal()
            sys.exit(130)


def _main(argv: list[str] | None) -> None:
    debug = os.environ.get("SMOLVLM_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    if not debug:
        # Pillow's notes on images it still decodes ("Corrupt EXIF data", ...) would print its
        # source file and line on stderr; a bad image is reported as an Error when it matters.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        # ... and its logger's errors ("More samples per pixel than can be decoded") would reach
        # stderr through logging's last-resort handler, before our own Error line.
        logging.getLogger("PIL").addHandler(logging.NullHandler())
    try:
        app(args=argv, prog_name="smolvlm")
    except SystemExit as exc:
        if exc.code in (130, 143):  # after Ctrl-C / SIGTERM (typer's or a batch run's stop)
            leave_on_next_signal()
        if exc.code == 1 and _from_a_closed_pipe(exc):
            sys.exit(0)  # help into `| head`: the reader has what it wanted, as for results
        raise
    except SmolVLMError as exc:
        if debug:
            raise
        _error(exc.message, exc.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        leave_on_next_signal()
        sys.exit(130)
    except OSError as exc:
        if debug:
            raise
        _error(*_os_error(exc))
        sys.exit(1)
    except (ValueError, RuntimeError) as exc:
        if debug:
            raise
        text = str(exc).strip()
        _error(text.splitlines()[0] if text else type(exc).__name__, "run with SMOLVLM_DEBUG=1 for the full traceback")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime's own error types: still one line
        if debug:
            raise
        text = str(exc).strip()
        _error(
            f"{type(exc).__name__}: {text.splitlines()[0] if text else 'unexpected error'}",
            "an unexpected failure (a model file that does not fit its config?); run with "
            "SMOLVLM_DEBUG=1 for the full traceback",
        )
        sys.exit(1)
