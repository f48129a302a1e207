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


def human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def print_table(root: Path, paths: list[Path], seconds: float, timings: dict[str, float] | None = None,
                what: str = "done") -> None:
    rows = []
    for path in sorted(paths):
        rel = str(path.relative_to(root))
        size = path.stat().st_size
        took = (timings or {}).get(path.name)
        rows.append((rel, human(size), f"{took:.1f} s" if took is not None else ""))
    width = max([len(r[0]) for r in rows] + [4])
    timed = any(r[2] for r in rows)
    print(f"{'file':<{width}}  {'size':>9}" + (f"  {'time':>7}" if timed else ""))
    for rel, size, took in rows:
        print(f"{rel:<{width}}  {size:>9}" + (f"  {took:>7}" if timed else ""))
    total = sum(p.stat().st_size for p in paths)
    print(f"{'total':<{width}}  {human(total):>9}")
    print(f"{what} in {seconds:.1f} s: {root}")
