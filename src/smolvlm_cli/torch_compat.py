"""transformers' KV-cache keyword across the 5.x releases the torch extra allows: forward's
`past_key_values` argument and output became `cache` (the old names warn from 5.2x and go in
5.40). The torch backend, `export --check` and the traced Hub-contract decoder go through here."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` for `module(...)`, by the keyword its forward takes."""
    return {_cache_keyword(type(module)): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (`out.cache`, or `out.past_key_values` before 5.2x)."""
    return out["cache"] if "cache" in out else out["past_key_values"]
