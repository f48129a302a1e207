"""Video frames -> image features, decoding ahead while the vision encoder runs.

A producer thread decodes and resizes the sampled frames (PyAV and PIL release the GIL) into a
small bounded queue while the calling thread runs the vision encoder on the frames before them:
at most `AHEAD` tiles wait, never the whole clip. Features are cached by the tile's content, so
a frame seen before (the same clip asked again, a chat turn, a still scene) is not encoded twice.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping

import numpy as np

from smolvlm_cli.values import GenerationStats

AHEAD = 4  # decoded tiles waiting for the encoder (4 x 0.8 MB at 512 px)
_DONE = object()

Progress = Callable[[int, int], None]  # (frames encoded, frames in all)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(items: Iterator, ahead: int = AHEAD, timer: list[float] | None = None) -> Iterator:
    """`items` produced by a background thread, at most `ahead` in advance; an exception in the
    producer is raised here, in order. Leaving the loop early stops the producer. `timer[0]`
    accumulates the producer's busy time."""
    q: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    break
                finally:
                    if timer is not None:
                        timer[0] += time.perf_counter() - t0
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="smolvlm-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


def encode_video(
    video,
    backend,
    image_processor,
    stats: GenerationStats,
    cache: MutableMapping[bytes, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Features of every sampled frame of `video` (a `SampledVideo`), [frames x tokens, hidden].

    `cache` maps a tile's content digest to its features (a fresh one per call when None).
    `stats` gets the producer's decode-and-resize time (`preprocess_s`, overlapped with vision),
    the vision time and the frame and token counts; `progress(done, total)` is called per frame.
    """
    return np.concatenate(list(frame_features(video, backend, image_processor, stats, cache, progress)))


def frame_features(
    video,
    backend,
    image_processor,
    stats: GenerationStats,
    cache: MutableMapping[bytes, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
    """`encode_video` one frame at a time: each frame's features [tokens, hidden], in order, so
    a caller can do other work between frames (the server steps its running replies). Closing
    the generator early stops the decoding thread."""
    cache = {} if cache is None else cache
    tile_size = image_processor.config.tile_size
    mask = np.ones((1, tile_size, tile_size), dtype=np.bool_)
    pixels = np.empty((1, 3, tile_size, tile_size), dtype=np.float32)
    busy, total = [0.0], video.num_frames
    for done, tile in enumerate(prefetched(video.tiles(image_processor.config), timer=busy), 1):
        digest = hashlib.blake2b(tile.tobytes(), digest_size=16).digest()
        found = cache.get(digest)
        if found is None:
            t0 = time.perf_counter()
            image_processor.normalize(tile, out=pixels[0])
            out = backend.encode_images(pixels, mask)
            found = out.reshape(-1, out.shape[-1])
            stats.vision_s += time.perf_counter() - t0
            cache[digest] = found
        stats.image_tiles += 1
        stats.image_tokens += len(found)
        stats.video_frames += 1
        if progress is not None:
            progress(done, total)
        yield found
    stats.preprocess_s += busy[0]
