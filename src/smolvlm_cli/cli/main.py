"""The `smolvlm` command: one module per command group, errors mapped to `Error: ...` lines.

Exit codes: 0 success, 1 a known error (bad file, missing model, ...), 2 a usage error,
130 Ctrl-C. A closed stdout pipe (`| head`) ends the run quietly. `SMOLVLM_DEBUG=1` shows
tracebacks.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from smolvlm_cli import __version__
from smolvlm_cli.cli import chat, describe, models
from smolvlm_cli.errors import SmolVLMError

app = typer.Typer(
    name="smolvlm",
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
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    pass


describe.register(app)
models.register(app)
chat.register(app)


def _error(message: str, hint: str | None = None) -> None:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Typer handles usage errors (exit 2) and Ctrl-C (exit 130); known errors become one line."""
    debug = os.environ.get("SMOLVLM_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="smolvlm")
    except SmolVLMError as exc:
        if debug:
            raise
        _error(exc.message, exc.hint)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, ValueError, RuntimeError) as exc:
        if debug:
            raise
        text = str(exc).strip()
        _error(text.splitlines()[0] if text else type(exc).__name__,
               "run with SMOLVLM_DEBUG=1 for the full traceback")
        sys.exit(1)
