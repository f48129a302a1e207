"""Reading clips with PyAV (the `video` extra): probe the stream, then decode only the sampled frames.

`probe` opens the file, checks it (a video stream, a decoder, a sane frame size, at least one
frame) and indexes its packets, decoding only the first frame (for its rotation): the
presentation times of every frame, in order, and which are keyframes. That index gives the true
frame count (the header's may be missing or wrong), the average frame rate when the header's
is a guess (variable-frame-rate MPEG-TS, WebM) and the frame number of any decoded frame, even
in variable frame rate streams, so `decode_frames` can seek to the keyframe before a sampled
frame whenever that skips work, and decode forward from there. Frames are numbered as
transformers' PyAV reader numbers them (the n-th frame the decoder outputs); frames are turned
upright per the stream's rotation (display matrix), as players show them, and the size reported
is the upright one. Only one decoded frame is held at a time.

Every failure is a `VideoError` naming the file.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smolvlm_cli.errors import VideoError
from smolvlm_cli.extras import install_command
from smolvlm_cli.video.sampling import VideoInfo

# Larger than 8K UHD (7680x4320 = 33 MP); a frame is converted to RGB whole before resizing.
MAX_FRAME_PIXELS = 40_000_000


def import_av():
    """PyAV, or a `VideoError` with the install hint."""
    try:
        import av
    except ImportError:
        raise VideoError(
            "reading videos needs PyAV, which is not installed",
            hint=f"install video support: {install_command('video')} (PyAV, with FFmpeg bundled)",
        ) from None
    return av


def av_available() -> bool:
    from importlib.util import find_spec

    return find_spec("av") is not None


@dataclass
class PacketIndex:
    """The frames of a stream in presentation order: their times (stream time base) and the
    positions of the keyframes among them.

    `decode_order`: the times are the packets' decode order, not presentation times (AVI has
    none: FFmpeg numbers its packets, and a decoder that reorders B-frames hands each frame the
    time of another), so decoded frames are numbered by their output order instead.
    """

    pts: list[int] = field(default_factory=list)
    keyframes: list[int] = field(default_factory=list)  # frame numbers, increasing
    tick: float = 0.0  # seconds per pts unit (the stream's time base)
    decode_order: bool = False

    def number_of(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        i = bisect.bisect_left(self.pts, pts)
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def keyframe_before(self, number: int) -> int:
        i = bisect.bisect_right(self.keyframes, number) - 1
        return self.keyframes[i] if i >= 0 else 0

    def seconds(self) -> list[float]:
        """Each frame's presentation time, in seconds from the first frame's."""
        first = self.pts[0] if self.pts else 0
        return [(p - first) * self.tick for p in self.pts]

    def average_fps(self, first: int = 0, stop: int | None = None) -> float | None:
        """Frames / time span of frames [first, stop), the last lasting the average interval:
        (frames - 1) / (last time - first time). None for one frame or unknown times."""
        stop = len(self.pts) if stop is None else stop
        span = (self.pts[stop - 1] - self.pts[first]) * self.tick if stop - first > 1 else 0.0
        return (stop - first - 1) / span if span > 0 else None

    def regular(self, fps: float) -> bool:
        """Whether every frame is at `number / fps` to within a quarter of a frame: a constant
        rate, its times at most rounded to the time base (milliseconds in WebM) or jittered."""
        return all(abs(t - i / fps) <= 0.25 / fps for i, t in enumerate(self.seconds()))


def _one_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_file(path: Path, label: str) -> None:
    try:
        if path.is_dir():
            raise VideoError(f"cannot read video {label}: it is a directory")
        size = path.stat().st_size
    except FileNotFoundError:
        raise VideoError(f"cannot read video {label}: no such file") from None
    except OSError as exc:
        raise VideoError(f"cannot read video {label}: {exc.strerror or exc}") from None
    if path.is_file() and size == 0:
        raise VideoError(f"cannot read video {label}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(f"cannot read video {label}: permission denied")


def open_container(path: str | os.PathLike, label: str | None = None):
    """(container, its first video stream), or a `VideoError` saying what is wrong."""
    av = import_av()
    path, label = Path(path), label or str(path)
    _check_file(path, label)
    try:
        container = av.open(str(path), "r")
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"cannot read video {label}: not a video, or a damaged file ({_one_line(exc)})",
            hint="use an MP4, MOV, MKV, WebM or AVI video",
        ) from None
    except OSError as exc:
        raise VideoError(f"cannot read video {label}: {exc.strerror or _one_line(exc)}") from None
    # a cover picture (album art in an audio file) is a one-frame video stream: not a video
    cover = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not s.disposition & cover]
    if not videos:
        kinds = sorted({s.type for s in container.streams if not s.disposition & cover})
        kinds = kinds or (["a cover picture"] if container.streams.video else [])
        container.close()
        if not kinds:
            raise VideoError(f"cannot read video {label}: it holds no streams at all (an empty, 0-second clip)")
        raise VideoError(f"cannot read video {label}: it has no video stream (only {', '.join(kinds)})")
    stream = videos[0]
    try:
        context = stream.codec_context
    except Exception:  # noqa: BLE001 - PyAV raises several types for a codec it lacks
        context = None
    if context is None or not getattr(context, "is_decoder", True):
        container.close()
        codec = getattr(stream.codec_context, "name", None) if context is not None else None
        raise VideoError(
            f"cannot read video {label}: its codec ({codec or 'unknown'}) cannot be decoded here",
            hint="convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4",
        )
    return container, stream


def _index_packets(container, stream, label: str) -> tuple[PacketIndex, float]:
    """Demux to list every frame's presentation time and the keyframes; decode only until the
    first frame comes out, for the rotation (a stream's display matrix is not exposed by PyAV,
    decoded frames carry it). (index, rotation in degrees)."""
    av = import_av()
    entries: list[tuple[int, bool]] = []
    rotation, tries = None, 64  # a stream whose first packets do not decode is taken unrotated
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None or getattr(packet, "is_discard", False):
                continue
            entries.append((packet.pts, bool(packet.is_keyframe)))
            if rotation is None and tries:
                tries -= 1
                try:
                    rotation = next((f.rotation or 0 for f in packet.decode()), None)
                except av.error.FFmpegError:
                    pass
    except av.error.FFmpegError:
        pass  # a truncated file: the frames read so far are the clip
    # Times that only increase in file (decode) order, from a codec that reorders frames: either
    # no frame was reordered (output order is presentation order) or they are decode-order times
    # (AVI): in both cases the decoder's output order numbers the frames.
    increasing = all(a[0] < b[0] for a, b in zip(entries, entries[1:]))
    decode_order = increasing and bool(getattr(stream.codec_context, "has_b_frames", 0))
    entries.sort()
    tick = float(stream.time_base) if stream.time_base else 0.0
    index = PacketIndex([p for p, _ in entries], [i for i, (_, key) in enumerate(entries) if key], tick, decode_order)
    return index, float(rotation or 0)


def _fps(stream, index: PacketIndex, frames: int, container) -> float | None:
    """The average frame rate: the header's unless the frames' own times disagree with it.

    MPEG-TS and Matroska/WebM headers hold no average rate: FFmpeg guesses one from the first
    frames, or takes WebM's DefaultDuration, both wrong for variable-frame-rate clips (a 9.7 s
    browser recording of 120 frames read as 60 fps, 2 s). The rate is then frames / time span
    (`index.average_fps`). MP4's average rate is already frames / stream duration: kept.
    """
    header = next((float(r) for r in (stream.average_rate, stream.guessed_rate) if r is not None and r > 0), None)
    measured = index.average_fps()
    if header and measured:
        span = (index.pts[-1] - index.pts[0]) * index.tick
        # the header's rate puts the last frame within half a frame of its time ...
        if abs(span - (len(index.pts) - 1) / header) <= 0.5 / header + index.tick:
            return header
        # ... or is the stream's own frame count / duration (MP4)
        own = int(stream.frames or 0) / (stream.duration * index.tick) if stream.duration else 0
        return header if abs(own - header) <= 1e-4 * header else measured
    if header or measured:
        return header or measured
    if container.duration and frames:
        return frames / (container.duration / 1_000_000)
    return None


def probe(path: str | os.PathLike, label: str | None = None) -> tuple[VideoInfo, PacketIndex]:
    """The clip's metadata as transformers reads it (frame count, average rate; the upright
    size) and its packet index, checked; only the first frame is decoded."""
    label = label or str(path)
    container, stream = open_container(path, label)
    try:
        width, height = int(stream.width or 0), int(stream.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError(f"cannot read video {label}: its frame size is unknown ({width}x{height})")
        if width * height > MAX_FRAME_PIXELS:
            raise VideoError(
                f"refusing video {label}: frames of {width}x{height} ({width * height:,} pixels) are too large",
                hint=f"the limit is {MAX_FRAME_PIXELS / 1e6:.0f} megapixels a frame: "
                "scale the video down (ffmpeg -vf scale=1920:-2)",
            )
        index, rotation = _index_packets(container, stream, label)
        if round(rotation / 90) % 2:  # shown turned a quarter: report the size players show
            width, height = height, width
        notes = []
        frames = int(stream.frames or 0)
        if index.pts and frames != len(index.pts):
            if frames:
                notes.append(f"the header says {frames} frames but the stream holds {len(index.pts)}")
            frames = len(index.pts)
        if frames <= 0:
            raise VideoError(f"cannot read video {label}: it has no frames (a 0-second clip)")
        fps = _fps(stream, index, frames, container)
        if not fps:
            raise VideoError(f"cannot read video {label}: its frame rate is unknown")
        info = VideoInfo(
            total_frames=frames, fps=fps, width=width, height=height, codec=stream.codec_context.name, notes=notes
        )
        return info, index
    finally:
        container.close()


def upright(frame, pixels: np.ndarray) -> np.ndarray:
    """The RGB array turned as the stream's display matrix says (`frame.rotation` is the
    counterclockwise angle, in degrees, that players apply)."""
    turns = int(round(getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def decode_frames(
    path: str | os.PathLike, numbers: Sequence[int], index: PacketIndex, label: str | None = None
) -> Iterator[np.ndarray]:
    """The frames numbered `numbers` (increasing) as upright RGB uint8 arrays, one at a time.

    Seeks to the keyframe before a wanted frame when that keyframe lies ahead of the decoder.
    Where a seek lands past the wanted frame, on nothing, or on frame times the packet index does
    not hold (MPEG-TS and MPEG-PS seek by byte position), the file is decoded from its start
    instead, without seeking again: the frames are always the ones a straight decode numbers so.
    A frame that cannot be decoded (a damaged or truncated stream) is replaced by the nearest
    one decoded before it (after it, for the first), so the count always matches the prompt;
    no frame at all is an error.
    """
    av = import_av()
    label = label or str(path)
    container, stream = open_container(path, label)
    stream.thread_type = "AUTO"
    wanted = list(numbers)
    last: np.ndarray | None = None
    seekable = bool(index.pts)
    try:
        position, frames, pending = -1, None, None  # last frame number read; decoder; a frame read ahead
        for target in wanted:
            key = index.keyframe_before(target)
            if seekable and (frames is None or key > position + 1):
                container.seek(index.pts[key], stream=stream, backward=True, any_frame=False)
                frames = _decoded(av, container, stream, index)
                pending = next(frames, None)
                if pending is None or pending[0] > target or index.number_of(pending[1].pts) is None:
                    # an imprecise seek (past the frame, or times the index does not know): start
                    # over and decode straight through
                    seekable, frames = False, None
                    container.close()
                    container, stream = open_container(path, label)
                    stream.thread_type = "AUTO"
                else:
                    position = pending[0]
            if frames is None:
                frames, position, pending = _decoded(av, container, stream, index), -1, None
            found = None
            while True:
                if pending is None:
                    pending = next(frames, None)
                    if pending is None:
                        break
                    position = pending[0]
                number, frame = pending
                if number > target:  # the wanted frame was lost: keep this one for the next
                    break
                pending = None
                if number == target:
                    found = frame
                    break
            if found is None and last is None and pending is not None:
                found = pending[1]  # the first wanted frame was lost: the next one stands in
            if found is not None:
                last = upright(found, found.to_ndarray(format="rgb24"))
            elif last is None:
                raise VideoError(
                    f"cannot decode video {label}: frame {target} could not be decoded (a truncated or damaged file)"
                )
            yield last
    finally:
        container.close()


def _decoded(av, container, stream, index: PacketIndex) -> Iterator[tuple[int, object]]:
    """(frame number, frame) from the current position; numbers come from the packet index
    (counted on from the first frame when a time is unknown, or when the index holds decode-order
    times: then only the first frame, a keyframe, is placed by its time)."""
    number = -1
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            continue  # a damaged packet: its frame is skipped
        for frame in decoded:
            known = index.number_of(frame.pts) if number < 0 or not index.decode_order else None
            number = known if known is not None else number + 1
            yield number, frame
