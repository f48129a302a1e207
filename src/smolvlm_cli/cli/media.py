"""Images and videos on the command line: told apart by extension, videos checked early.

A video is probed (PyAV: its streams, frame count and packet index, nothing decoded) before
the model loads, so a bad file fails at once; once the model's config is known it is sampled.
"""

from __future__ import annotations

import os
from typing import Any

from smolvlm_cli.cli import output
from smolvlm_cli.video import is_video_path


def probe_videos(sources: list[Any], labels: dict[str, str] | None = None) -> dict[str, tuple]:
    """{video path: its probe} for the video paths among `sources` (errors as VideoError, naming
    a path by its `labels` entry if any; a video URL is one: videos are read from files)."""
    from smolvlm_cli.formats import VIDEO_EXTENSIONS, extension

    probed = {}
    for source in sources:
        if isinstance(source, str) and "://" in source and extension(source.split("?")[0]) in VIDEO_EXTENSIONS:
            from smolvlm_cli.errors import VideoError

            raise VideoError(
                f"cannot read video {source}: videos are read from files, not URLs",
                hint="download it first (e.g. curl -LO URL) and give the file",
            )
        if is_video_path(source) and source not in probed:
            from smolvlm_cli.video.decode import probe

            probed[source] = probe(source, (labels or {}).get(source))
    return probed


def open_media(
    sources: list[Any],
    config,
    probed: dict[str, tuple],
    options: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> list[Any]:
    """`sources` with each video path replaced by its `SampledVideo` (sampled per `options`)."""
    from smolvlm_cli.video.clip import open_video

    labels = labels or {}
    return [
        open_video(s, config, probed=probed.get(s), label=labels.get(s), **options) if is_video_path(s) else s
        for s in sources
    ]


def stdin_video(data: bytes, extension: str) -> str:
    """Piped video bytes as a file PyAV can seek in, removed when the command exits."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="smolvlm-stdin-")
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, f"stdin.{extension}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def frame_progress(status: output.Status):
    """A progress callback for `SmolVLM.progress`: the spinner counts the frames encoded."""
    return lambda done, total: status.update(f"Encoding video frames {done}/{total}")


def media_label(media: list[Any]) -> str:
    """The spinner's words for the media of a prompt."""
    videos = sum(1 for m in media if hasattr(m, "num_frames"))
    if not videos:
        return "Looking at the image(s)"
    frames = sum(m.num_frames for m in media if hasattr(m, "num_frames"))
    return f"Encoding {frames} video frame{'s' if frames != 1 else ''}"
