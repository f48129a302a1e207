"""`SampledVideo`: a clip (or a segment of it) with its frames chosen, ready to prompt and encode.

`open_video` probes the file (PyAV, nothing decoded), takes the segment, samples the frames as
transformers does and checks the options. Everything the prompt needs (frame count, timestamps,
duration) is known from then on; the pixels come later, frame by frame, from `tiles()`: each
sampled frame decoded, turned upright and resized in transformers' two steps (longest edge to
the model's `size.longest_edge`, the short one rounded up to even; then straight to one square
tile), with the model's resampling filter (LANCZOS), as uint8.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import VideoError
from smolvlm_cli.video.sampling import VideoInfo, duration_text, sample_indices, timestamps

MAX_FRAME_SIDE = 4096  # transformers' cap on the longest edge of the first resize


@dataclass
class SampledVideo:
    """A clip's sampled frames. `indices` count from the segment's first frame; `numbers` are
    the same frames numbered in the whole stream."""

    path: str
    label: str
    info: VideoInfo  # of the segment: its frame count, average fps, first_frame
    indices: np.ndarray
    fps: float  # sampling asked: frames per second ...
    max_frames: int  # ... and at most this many
    start: float | None = None
    end: float | None = None
    _index: Any = None  # decode.PacketIndex
    _tiles: list[np.ndarray] | None = None  # set by `decoded`: the frames, read from no file

    @property
    def numbers(self) -> list[int]:
        return [self.info.first_frame + int(i) for i in self.indices]

    @property
    def times(self) -> list[float]:
        return timestamps(self.indices, self.info.fps)

    @property
    def duration(self) -> float:
        return self.info.duration

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    def source_key(self) -> tuple:
        """Same file (path, size, modification time) and same frames: same features."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        return ("video", str(Path(self.path).resolve()), stamp, tuple(self.numbers))

    def frames(self) -> Iterator[np.ndarray]:
        """The sampled frames, upright RGB uint8 at full size, one at a time."""
        from smolvlm_cli.video.decode import decode_frames

        return decode_frames(self.path, self.numbers, self._index, self.label)

    def tiles(self, config: ModelConfig) -> Iterator[np.ndarray]:
        """The sampled frames as uint8 [T, T, 3] tiles, one at a time."""
        if self._tiles is not None:
            yield from self._tiles
            return
        for pixels in self.frames():
            yield frame_tile(pixels, config)

    def decoded(self, config: ModelConfig) -> SampledVideo:
        """A copy that holds its frames' tiles (uint8, `config`'s tile size), for a process that
        may not read the file (a Ray actor on another node): its `tiles()` decode nothing."""
        return replace(self, _index=None, _tiles=list(self.tiles(config)))

    def as_dict(self) -> dict[str, Any]:
        """What `inspect` and `--json` report."""
        info = self.info
        return {
            "path": self.label,
            "width": info.width,
            "height": info.height,
            "codec": info.codec,
            "fps": round(info.fps, 4),
            "total_frames": info.total_frames,
            "duration_s": round(info.duration, 4),
            "duration": duration_text(info.duration),
            **({"start": self.start} if self.start is not None else {}),
            **({"end": self.end} if self.end is not None else {}),
            "sampling": {"fps": self.fps, "max_frames": self.max_frames},
            "frames": self.numbers,
            "timestamps": [round(t, 4) for t in self.times],
            **({"notes": info.notes} if info.notes else {}),
        }


def frame_size(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """(w, h) of transformers' first resize: longest edge to `longest_edge` (at most 4096), the
    other side from the aspect ratio, truncated, then rounded up to even."""
    edge = min(MAX_FRAME_SIDE, longest_edge)
    aspect = width / height
    if width >= height:
        width, height = edge, int(edge / aspect)
        height += height % 2
    else:
        height, width = edge, int(edge * aspect)
        width += width % 2
    return max(width, 1), max(height, 1)


def frame_tile(pixels: np.ndarray, config: ModelConfig) -> np.ndarray:
    """One RGB uint8 frame -> the model's square uint8 tile, in transformers' two resizes."""
    from PIL import Image

    image = Image.fromarray(pixels)
    resample = Image.Resampling(config.resample)
    size = frame_size(image.width, image.height, config.longest_edge)
    if config.do_resize:
        if size != image.size:
            image = image.resize(size, resample)
        tile = config.tile_size
        if image.size != (tile, tile):
            image = image.resize((tile, tile), resample)
    return np.asarray(image)


def _check_options(label: str, fps: float, max_frames: int, start: float | None, end: float | None) -> None:
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"--fps must be above 0, got {fps}")
    if max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {max_frames}")
    if start is not None and (start < 0 or not math.isfinite(start)):
        raise ValueError(f"--start must be 0 or more seconds, got {start}")
    if end is not None and (end <= 0 or not math.isfinite(end)):
        raise ValueError(f"--end must be above 0 seconds, got {end}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"--end ({end} s) must come after --start ({start} s)")


def _segment(info: VideoInfo, start: float | None, end: float | None, label: str, index=None) -> VideoInfo:
    """The frames whose presentation time lies in [start, end), as a clip of their own.

    A constant-rate clip's frame n is at `n / fps`; a variable-rate clip's frames are found by
    their times in the packet index, and the segment's rate is its own frames' average (what
    the clip cut there would have), so its timestamps and duration are those of the cut."""
    if start is None and end is None:
        return info
    times = None
    if index is not None and len(index.pts) == info.total_frames > 1 and not index.regular(info.fps):
        times = index.seconds()
    if times is None:
        first = 0 if start is None else math.ceil(start * info.fps - 1e-6)
        stop = info.total_frames if end is None else min(info.total_frames, math.ceil(end * info.fps - 1e-6))
        last = (info.total_frames - 1) / info.fps
    else:
        first = 0 if start is None else bisect.bisect_left(times, start - 1e-6)
        stop = info.total_frames if end is None else bisect.bisect_left(times, end - 1e-6)
        last = times[-1]
    if first >= info.total_frames:
        raise VideoError(
            f"--start {start:g} s is past the last frame of video {label} (at {last:.2f} s; the clip is "
            f"{info.duration:.2f} s long)"
        )
    if stop <= first:
        raise VideoError(f"the segment of video {label} from {start or 0:g} s to {end:g} s holds no frame")
    fps = (index.average_fps(first, stop) if times is not None else None) or info.fps
    return VideoInfo(
        total_frames=stop - first,
        fps=fps,
        width=info.width,
        height=info.height,
        first_frame=first,
        codec=info.codec,
        notes=info.notes,
    )


def open_video(
    source: str | os.PathLike,
    config: ModelConfig,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    label: str | None = None,
    probed: tuple | None = None,
) -> SampledVideo:
    """Probe `source` and sample its frames (the model's `video_sampling` unless `fps` /
    `max_frames` are given); `start` / `end` (seconds) take a segment, sampled as if the clip
    had been cut there (timestamps and duration count from `start`). `probed` is what
    `decode.probe` returned for the file, when it was called already.

    Raises:
        VideoError: no PyAV, a file that is not a readable video, a model without video sampling.
        ValueError: options out of range.
    """
    from smolvlm_cli.video.decode import probe

    label = label or os.fsdecode(source)
    if config.video_fps is None or config.video_max_frames is None:
        raise VideoError(
            f"this model has no video support (no video_sampling in its "
            f"preprocessor_config.json), so it cannot take video {label}",
            hint="use a SmolVLM2 model, e.g. HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        )
    fps = config.video_fps if fps is None else float(fps)
    max_frames = config.video_max_frames if max_frames is None else int(max_frames)
    _check_options(label, fps, max_frames, start, end)
    whole, index = probed or probe(source, label)
    info = _segment(whole, start, end, label, index)
    indices = sample_indices(info.total_frames, info.fps, fps, max_frames)
    return SampledVideo(os.fsdecode(source), label, info, indices, fps, max_frames, start, end, index)
