"""Video input for SmolVLM2: sampling, prompt text, PyAV decoding, frame tiles, encoding.

- `sampling`: which frames and the prompt text (numpy only, transformers 5.24's rules).
- `decode`: PyAV probing and seeking decode (PyAV is the optional `video` extra).
- `clip`: `open_video` -> `SampledVideo` (the frames chosen; tiles on demand).
- `encode`: frames -> features with decoding overlapped and a per-frame feature cache.

This module itself imports nothing heavy, so the CLI can tell videos from images cheaply.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from smolvlm_cli.formats import VIDEO_EXTENSIONS, extension


def is_video_path(source: Any) -> bool:
    """A path (not a URL) whose extension is a video container's."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    name = os.fsdecode(source)
    if "://" in name:
        return False
    return extension(name) in VIDEO_EXTENSIONS


def is_video(source: Any) -> bool:
    """A `SampledVideo` or a video path: what the processor treats as a video."""
    clip = sys.modules.get("smolvlm_cli.video.clip")  # loaded whenever a SampledVideo exists
    sampled = getattr(clip, "SampledVideo", None)  # None while another thread imports it
    return is_video_path(source) or (sampled is not None and isinstance(source, sampled))


__all__ = ["VIDEO_EXTENSIONS", "is_video", "is_video_path"]
