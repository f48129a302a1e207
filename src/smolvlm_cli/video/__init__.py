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

from smolvlm_cli.formats import AVIF_BRANDS, HEIF_BRANDS, VIDEO_EXTENSIONS, extension


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


def video_extension_of(data: bytes) -> str | None:
    """The container of video bytes (an extension of VIDEO_EXTENSIONS) from their first bytes,
    None for anything else (images included): how `describe -` tells a piped video."""
    head = bytes(data[:64])
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in HEIF_BRANDS or brand in AVIF_BRANDS:  # still images
            return None
        return "mov" if brand == b"qt  " else "3gp" if brand.startswith(b"3g") else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM (its DocType)
        return "webm" if b"webm" in head else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if head[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c":  # ASF
        return "wmv"
    if head[:4] == b"\x00\x00\x01\xba":  # MPEG program stream
        return "mpg"
    if len(data) > 376 and data[0] == data[188] == data[376] == 0x47:  # MPEG-TS: a sync byte every 188
        return "ts"
    return None


__all__ = ["VIDEO_EXTENSIONS", "is_video", "is_video_path", "video_extension_of"]
