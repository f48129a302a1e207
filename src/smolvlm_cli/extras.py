"""How to add an optional extra (video, server, torch, ...), in the words that work where
smolvlm-cli is installed: `pip install 'smolvlm-cli[video]'` in an ordinary environment; in a
pipx one (`pipx install .`), where that pip is not on the PATH, `pipx inject smolvlm-cli` with
the extra's own requirements."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

DIST = "smolvlm-cli"


def install_command(extra: str) -> str:
    if in_pipx():
        requirements = extra_requirements(extra)
        if requirements:
            return f"pipx inject {DIST} " + " ".join(shlex.quote(r) for r in requirements)
    return f"pip install '{DIST}[{extra}]'"


def in_pipx(prefix: str | None = None) -> bool:
    """pipx keeps each application's environment in `.../pipx/venvs/NAME`."""
    path = Path(prefix or sys.prefix)
    return path.parent.name == "venvs" and "pipx" in path.parent.parent.name


def extra_requirements(extra: str, _seen: frozenset[str] = frozenset()) -> list[str]:
    """The requirements `extra` adds (extras it names expanded), from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        declared = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return []
    found: list[str] = []
    for text in declared:
        req = Requirement(text)
        if req.marker is None or not req.marker.evaluate({"extra": extra}) or req.marker.evaluate({"extra": ""}):
            continue
        if req.name == DIST:  # `export = ["smolvlm-cli[torch]", ...]`
            for inner in sorted(req.extras - _seen):
                found += extra_requirements(inner, _seen | {extra})
        else:
            found.append(f"{req.name}{req.specifier}")
    return list(dict.fromkeys(found))
