"""Helpers shared by the export scripts: import path, errors, size table (not a public module)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import smolvlm_cli  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str, hint: str | None = None) -> int:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Hint: {hint}", file=sys.stderr)
    return 1
