"""JSON text that is always valid UTF-8, whatever the file names in it.

A file name that is not valid UTF-8 reaches Python as lone surrogates (surrogateescape), which
no UTF-8 writer accepts. They are written as `\\udcXX` escapes instead: valid JSON that
`json.loads` turns back into the same name; everything else stays readable UTF-8.
"""

from __future__ import annotations

import json
import re
from typing import Any

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any, indent: int | None = None) -> str:
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)  # only inside strings
