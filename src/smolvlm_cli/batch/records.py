"""The per-image result record every engine produces and every writer stores.

One JSONL line or CSV row per image. `error` is None (JSONL) / empty (CSV) on success; a failed
image has `caption` None / empty and the reason in `error`. Unknown keys read back from a file
are ignored, missing ones take their defaults, so older files stay readable.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, fields
from typing import Any

from smolvlm_cli import jsontext
from smolvlm_cli.batch.discover import ImageItem

FIELDS = (
    "path",
    "caption",
    "error",
    "model",
    "prompt",
    "prompt_tokens",
    "generated_tokens",
    "image_tiles",
    "stop_reason",
    "seconds",
)
_INTS = {"prompt_tokens", "generated_tokens", "image_tiles"}


@dataclass
class ImageRecord:
    path: str
    caption: str | None = None
    error: str | None = None
    model: str = ""
    prompt: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    image_tiles: int = 0
    stop_reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, path: str, error: str, *, model: str = "", prompt: str = "", seconds: float = 0.0) -> ImageRecord:
        return cls(
            path=path,
            caption=None,
            error=error or "unknown error",
            model=model,
            prompt=prompt,
            seconds=round(seconds, 4),
        )

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def to_json(self) -> str:
        """One line (json escapes newlines inside strings)."""
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            raise ValueError("not an image record (no 'path')")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in _INTS & values.keys():
            values[name] = int(values[name] or 0)
        if "seconds" in values:
            values["seconds"] = float(values["seconds"] or 0)
        return cls(**values)

    # -- CSV --------------------------------------------------------------------------------
    def to_row(self) -> list[str]:
        return ["" if v is None else str(v) for v in (getattr(self, n) for n in FIELDS)]

    @classmethod
    def from_row(cls, header: list[str], row: list[str]) -> ImageRecord:
        if len(row) != len(header):
            raise ValueError(f"{len(row)} fields, the header has {len(header)}")
        data: dict[str, Any] = dict(zip(header, row))
        data["error"] = data.get("error") or None
        if data["error"] is not None and not data.get("caption"):
            data["caption"] = None
        return cls.from_dict(data)


def dumps(obj: Any) -> str:
    """JSON as UTF-8 text; a file name that is not UTF-8 survives a write and a read intact."""
    return jsontext.dumps(obj)


def loads(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8", "surrogateescape"))


def csv_line(values: list[str]) -> str:
    """One CSV record (RFC 4180 quoting, CRLF), the unit appended to a CSV file."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


@dataclass(frozen=True)
class Job:
    """An image and its rendered prompt: the unit of work every engine receives."""

    item: ImageItem
    prompt: str
