"""Per-image prompt templates and caption decoration (`--prefix`, `--suffix`, `--single-line`).

Only `{filename}` (`photo.jpg`), `{stem}` (`photo`) and `{parent}` (the folder's name) are
replaced; any other brace text (a JSON example in a prompt) stays as written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FIELDS = ("filename", "stem", "parent")
_FIELD = re.compile(r"\{(filename|stem|parent)\}")
_LOOKS_LIKE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fields_for(path: str) -> dict[str, str]:
    absolute = os.path.abspath(path)
    name = os.path.basename(absolute)
    return {"filename": name, "stem": os.path.splitext(name)[0], "parent": os.path.basename(os.path.dirname(absolute))}


def render(template: str, path: str) -> str:
    """`template` with the image's fields filled in."""
    if "{" not in template:
        return template
    values = fields_for(path)
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def unknown_fields(template: str) -> list[str]:
    """`{word}` placeholders that are not fields (probably typos, left as written)."""
    return sorted({m.group(1) for m in _LOOKS_LIKE_FIELD.finditer(template or "")} - set(FIELDS))


@dataclass(frozen=True)
class CaptionStyle:
    """How the model's text becomes the stored caption."""

    prefix: str = ""
    suffix: str = ""
    single_line: bool = False

    def apply(self, text: str, path: str) -> str:
        text = text.strip()
        if self.single_line:
            text = " ".join(text.split())
        prefix, suffix = render(self.prefix, path), render(self.suffix, path)
        if prefix:
            text = prefix + ("" if prefix[-1].isspace() or not text else " ") + text
        if suffix:
            joiner = "" if suffix[0].isspace() or suffix[0] in ",.;:!?)" or not text else " "
            text = text + joiner + suffix
        return text
