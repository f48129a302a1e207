"""Synthetic clips for the video tests, written with PyAV (tiny frames: milliseconds each).

Every frame differs from its neighbours (a moving bar, a colour ramp, its number in the red
channel), so a frame taken at the wrong index shows up as a pixel difference.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_pixels(i: int, width: int, height: int) -> np.ndarray:
    a = np.zeros((height, width, 3), np.uint8)
    a[..., 0] = (i * 37) % 256
    a[:, : (i % width) + 1, 1] = 200
    a[: (i % height) + 1, :, 2] = np.linspace(0, 255, width, dtype=np.uint8)
    return a


def make_clip(
    path: Path | str,
    seconds: float = 3,
    fps: int = 25,
    size: tuple[int, int] = (32, 24),
    codec: str = "libx264",
    gop: int | None = None,
    vfr: bool = False,
    frames: int | None = None,
    rotation: int | None = None,
    times: list[float] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """A clip of `seconds` x `fps` frames of `size` (w, h). `vfr`: frame durations alternate
    between 1/(2 fps) and 3/(2 fps) (same average rate), in a millisecond time base. `times`:
    each frame's time in seconds (one frame each), in a millisecond time base. `options`: the
    encoder's (e.g. `{"bf": "3"}`)."""
    import av

    path = Path(path)
    width, height = size
    count = len(times) if times else frames if frames is not None else int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if vfr or times:
            stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
            if times:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            elif vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += int(1000 / fps * (0.5 if i % 2 == 0 else 1.5))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def without_default_duration(path: Path) -> Path:
    """The Matroska/WebM file with its DefaultDuration element blanked out (a Void element of
    the same size), as browsers' MediaRecorder writes WebM: no frame rate in the header."""
    data = bytearray(path.read_bytes())
    i = data.find(b"\x23\xe3\x83")  # DefaultDuration's id
    assert i > 0, "no DefaultDuration"
    size = 4 + (data[i + 3] & 0x7F)  # id, a one-byte size, the value
    data[i : i + size] = bytes([0xEC, 0x80 | (size - 2)]) + bytes(size - 2)
    path.write_bytes(bytes(data))
    return path


def make_audio_only(path: Path | str, seconds: float = 1.0, cover: bool = False) -> Path:
    """An AAC file; `cover`: with a cover picture (an attached-picture MJPEG stream)."""
    import av

    path = Path(path)
    rate = 8000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        if cover:
            art = container.add_stream("mjpeg")
            art.width, art.height, art.pix_fmt = 16, 16, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            for packet in art.encode(av.VideoFrame.from_ndarray(frame_pixels(0, 16, 16), format="rgb24")):
                container.mux(packet)
        samples = int(seconds * rate)
        chunk = 1024
        for start in range(0, samples, chunk):
            data = np.zeros((1, chunk), np.float32)
            frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
