"""Which frames of a clip the model sees, and the prompt text that introduces them.

Pure functions (numpy only), matching transformers 5.24's SmolVLM video processor and processor:

- `sample_indices`: `min(round(fps x duration), max_frames)` frames (at least one), evenly
  spaced (integer linspace, truncating) over the clip, skipping its first and last second when
  the clip is long enough (duration - 2 s > max_frames / fps), duplicates dropped.
- `timestamps`: `index / average fps`, not the stream's presentation times.
- `video_prompt_string`: the intro (frame count in English words, `H:MM:SS` duration), one
  `\\nFrame from MM:SS:` block per frame, each a single unsplit image, then a blank line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

SKIP_SECONDS = 1  # transformers' skip_secs: the first and last second of long clips are left out

VIDEO_INTRO = "You are provided the following series of {count} frames from a {duration} [H:MM:SS] video.\n"
FRAME_HEADER = "\nFrame from {minutes:02d}:{seconds:02d}:"
VIDEO_OUTRO = "\n\n"


@dataclass
class VideoInfo:
    """What sampling needs of a clip (or of a segment of it), in transformers' terms.

    `total_frames` and `fps` come from the stream (frame count, average rate: the frames' own
    where the header's is only a guess); `duration` is `total_frames / fps`, as transformers'
    PyAV reader computes it. `first_frame` is the index
    of the segment's first frame in the whole stream (0 without `--start`).
    """

    total_frames: int
    fps: float
    width: int
    height: int
    first_frame: int = 0
    codec: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a frame count that had to be counted

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps else 0.0


def sample_indices(
    total_frames: int, video_fps: float, fps: float, max_frames: int, skip_secs: float = SKIP_SECONDS
) -> np.ndarray:
    """Indices (0-based, in the clip) of the frames to show the model, increasing, unique."""
    if total_frames < 1:
        raise ValueError("the clip has no frames")
    duration = total_frames / video_fps if video_fps else 0.0
    wanted = max(1, min(int(round(fps * duration)), int(max_frames)))
    start, end = 0, total_frames - 1
    if skip_secs > 0 and duration - 2 * skip_secs > max_frames * fps:
        start = int(skip_secs * video_fps)
        end = int(total_frames - skip_secs * video_fps)
    start, end = max(0, start), min(end, total_frames - 1)
    if start >= end:
        start, end = 0, total_frames - 1
    return np.unique(np.linspace(start, end, wanted, dtype=int))


def timestamps(indices: Sequence[int], video_fps: float) -> list[float]:
    """Seconds from the clip's start of each sampled frame (`index / fps`)."""
    return [int(i) / video_fps for i in indices]


# -- prompt text ------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion")


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if rest < 20:
        tail = _ONES[rest]
    else:
        tens, ones = divmod(rest, 10)
        tail = _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if not hundreds:
        return tail
    head = f"{_ONES[hundreds]} hundred"
    return f"{head} and {tail}" if rest else head


def number_words(n: int) -> str:
    """A non-negative integer in English words, as the `num2words` package writes it
    ("sixty-four", "one hundred and one", "one thousand, two hundred and thirty-four")."""
    n = int(n)
    if n < 0:
        raise ValueError("number_words takes a non-negative integer")
    if n < 1000:
        return _below_thousand(n)
    groups = []
    while n:
        n, group = divmod(n, 1000)
        groups.append(group)
    if len(groups) > len(_SCALES):
        raise ValueError("number too large")
    words = ""
    for scale in range(len(groups) - 1, -1, -1):
        group = groups[scale]
        if not group:
            continue
        part = _below_thousand(group) + (f" {_SCALES[scale]}" if scale else "")
        if not words:
            words = part
        elif scale == 0 and group < 100:
            words += f" and {part}"
        else:
            words += f", {part}"
    return words


def duration_text(seconds: float) -> str:
    """`H:MM:SS` of the whole seconds, like `str(timedelta(seconds=int(s)))` ("0:01:10")."""
    return str(timedelta(seconds=int(seconds)))


def frame_header(seconds: float) -> str:
    """`\\nFrame from MM:SS:` (minutes zero-padded, beyond 59 when the clip is that long)."""
    return FRAME_HEADER.format(minutes=int(seconds // 60), seconds=int(seconds % 60))


def video_prompt_string(frame_times: Sequence[float], duration: float, frame_prompt: str) -> str:
    """The text that replaces one `<video>`: the intro, then per frame its header followed by
    `frame_prompt` (one unsplit image's tokens), then a blank line."""
    parts = [VIDEO_INTRO.format(count=number_words(len(frame_times)), duration=duration_text(duration))]
    for seconds in frame_times:
        parts.append(frame_header(seconds))
        parts.append(frame_prompt)
    parts.append(VIDEO_OUTRO)
    return "".join(parts)
