"""Where smolvlm-cli keeps what it makes (built graphs, optimized sessions): `$SMOLVLM_CACHE`,
else `$XDG_CACHE_HOME/smolvlm-cli`, else `~/.cache/smolvlm-cli`."""

from __future__ import annotations

import os
from pathlib import Path

from smolvlm_cli.errors import SmolVLMError

CACHE_ENV = "SMOLVLM_CACHE"


def cache_root() -> Path:
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if base:
        return Path(base) / "smolvlm-cli"
    try:
        home = Path.home()
    except (RuntimeError, KeyError) as exc:  # no HOME and no passwd entry (a container's UID)
        raise SmolVLMError(
            "no folder for smolvlm-cli's cache: there is no home folder",
            hint=f"set {CACHE_ENV} to a folder you can write",
        ) from exc
    return home / ".cache" / "smolvlm-cli"
