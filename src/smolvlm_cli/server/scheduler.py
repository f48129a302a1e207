"""Continuous batching for the server: one worker thread owns the model, requests come through a queue.

The worker loops over three kinds of work, always in this order:

1. drop the rows (and waiting requests) whose client has gone: their slot is free at once;
2. one unit of admission for the request at the head of the queue, when a row is free: the
   vision encoder on one tile of its images (tiles already seen are taken from a cache keyed by
   their pixels), or, once every tile is encoded, its prefill and first token;
3. one shared decoder step for every running row (`row_decoding.RowBatch`).

So a running stream waits at most one tile or one prefill for its next token, however large the
newcomer's images are, and a newcomer's admission costs the running rows one step per tile.
With no row running the whole admission runs at once. A finished row's slot goes to the head of
the queue at the next turn. Each row has its own sampler and options, so it gets the tokens it
would get alone (greedy or seeded; int8 decoders aside, see README).

The asyncio side talks to the worker only through `submit` (a thread-safe queue with a cap:
`QueueFull` when it is full) and `Job.cancel`; the worker answers through each job's `emit`
callback, which must be thread-safe (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.reply import Replier
from smolvlm_cli.row_decoding import RowBatch
from smolvlm_cli.values import GenerationStats, PreparedInputs

log = logging.getLogger("smolvlm.server")


class QueueFull(Exception):
    """Every row is busy and the waiting queue is at its cap."""


@dataclass
class SchedulerStats:
    """Counters since start-up (`GET /stats`). A step is one shared decoder run."""

    submitted: int = 0
    rejected: int = 0  # QueueFull
    admitted: int = 0
    completed: int = 0
    cancelled: int = 0  # the client went away
    failed: int = 0
    steps: int = 0
    batched_steps: int = 0  # steps with more than one row
    rows_stepped: int = 0  # rows summed over steps: rows_stepped / steps is the mean batch
    max_rows: int = 0
    generated_tokens: int = 0
    tiles_encoded: int = 0
    tiles_cached: int = 0  # tiles whose features came from the cache

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class StopText:
    """Cuts a reply at the first of its stop strings; holds back a tail that may start one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, delta: str) -> str:
        """The part of `delta` (after what was held back) that is surely before any stop string."""
        if self.stopped or not self.stops:
            return "" if self.stopped else delta
        text = self.pending + delta
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            self.stopped, self.pending = True, ""
            return text[: min(cuts)]
        keep = max(
            (k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])), default=0
        )
        self.pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        tail, self.pending = self.pending, ""
        return tail


@dataclass(eq=False)  # compared by identity (in the queue), never by its arrays
class Job:
    """One request: its prepared prompt and options, and where its answer goes.

    `emit(kind, value)` gets ("delta", text) pieces, then ("done", result dict) or ("error",
    exception); called from the worker thread."""

    prepared: PreparedInputs
    options: GenerationOptions
    emit: Callable[[str, Any], None]
    stops: list[str] = field(default_factory=list)
    id: int = 0
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    # the worker's
    features: list[np.ndarray] = field(default_factory=list)
    tiles: int = 0  # encoded or taken from the cache (video frames included)
    cached_tiles: int = 0
    vision_s: float = 0.0
    started_at: float = 0.0  # its admission's first work (a tile, or its prefill)
    first_token_at: float = 0.0
    sent: int = 0  # row.text pieces emitted so far
    # a prompt with videos: its features one image or frame at a time, and their counts
    media_parts: Iterator[np.ndarray] | None = None
    media_stats: GenerationStats = field(default_factory=GenerationStats)
    media_done: bool = False

    def __post_init__(self):
        self.stop_text = StopText(self.stops)

    def cancel(self) -> None:
        self.cancelled = True

    def release(self) -> None:
        """Stop a half-done video admission (its decoding thread) and drop its features."""
        if self.media_parts is not None:
            self.media_parts.close()
            self.media_parts = None
        self.features = []


class FeatureCache:
    """Vision features per tile, keyed by the tile's pixels (least recently used first out)."""

    def __init__(self, encode: Callable[[np.ndarray, np.ndarray], np.ndarray], max_tiles: int):
        self._encode, self.max_tiles = encode, max_tiles
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def get(self, values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, bool]:
        """The features [tokens, hidden] of one tile ([3, T, T], [T, T]); True when cached."""
        key = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16)
        key.update(np.ascontiguousarray(mask).tobytes())
        digest = key.digest()
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest], True
        features = self._encode(values[None], mask[None])
        features = features.reshape(-1, features.shape[-1])
        if self.max_tiles:
            self._cache[digest] = features
            while len(self._cache) > self.max_tiles:
                self._cache.popitem(last=False)
        return features, False


class Scheduler:
    """The model's worker thread. `submit` jobs; `close` stops it (waiting jobs get errors)."""

    def __init__(
        self, vlm: Any, max_batch: int, max_queue: int, feature_cache_tiles: int = 256, tiles_per_turn: int | None = 1
    ):
        """`tiles_per_turn`: tiles a newcomer may encode between two decoder steps while rows run
        (None: its whole admission at once, the running streams waiting for all of it)."""
        self.vlm, self.max_batch, self.max_queue = vlm, max_batch, max_queue
        self.tiles_per_turn = tiles_per_turn
        self.stats = SchedulerStats()
        self._replier = Replier(vlm.backend, vlm.tokenizer, vlm.config)
        self._cache = FeatureCache(vlm.backend.encode_images, feature_cache_tiles)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()  # guarded by _lock
        self._running: dict[int, tuple[Job, Any]] = {}  # id -> (job, row); the worker's
        self._stopping = False
        self._batch = self._new_batch()
        self._thread = threading.Thread(target=self._run, name="smolvlm-model", daemon=True)

    def _new_batch(self) -> RowBatch:
        slots = self.vlm.backend.new_rows(self.max_batch)
        if slots is None:
            raise ValueError(
                f"the {self.vlm.backend.name} backend has no batched decoding: the server runs on the ONNX backend"
            )
        return RowBatch(self._replier, slots)

    # -- the asyncio side -------------------------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread.start()
        return self

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> Job:
        """Queue `job`; `QueueFull` at once when every row is busy and max_queue jobs wait."""
        with self._lock:
            free_rows = max(0, self.max_batch - len(self._running))
            if self._stopping or len(self._waiting) >= self.max_queue + free_rows:
                self.stats.rejected += 1
                raise QueueFull(f"{len(self._running)} requests running and {len(self._waiting)} waiting")
            job.id = next(self._ids)
            self._waiting.append(job)
            self.stats.submitted += 1
            self._lock.notify()
        return job

    def wake(self) -> None:
        """Let the worker see a cancelled job at once (it may be waiting for work)."""
        with self._lock:
            self._lock.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._running:
                    self._lock.wait()
                if self._stopping:
                    waiting, self._waiting = list(self._waiting), deque()
                    break
                dropped = self._drop_cancelled()
                head = self._waiting[0] if self._waiting else None
            try:
                for job in dropped:  # outside the lock: closing a video joins its decode thread
                    job.release()
                if head is not None and self._batch.has_room:
                    self._admit_some(head, None if not self._running else self.tiles_per_turn)
                if self._running:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one failure
                log.exception("model worker: %s", exc)
        for job in [*waiting, *(job for job, _ in self._running.values())]:
            job.emit("error", RuntimeError("the server is shutting down"))

    def _drop_cancelled(self) -> list[Job]:
        """Take the cancelled jobs out (under the lock); the waiting ones are returned, for the
        caller to release once the lock is free."""
        dropped = [j for j in self._waiting if j.cancelled]
        for job in dropped:
            self._waiting.remove(job)
            self.stats.cancelled += 1
        for job_id, (job, row) in list(self._running.items()):
            if job.cancelled:
                del self._running[job_id]
                self._batch.drop(row)
                self.stats.cancelled += 1
        return dropped

    def _admit_some(self, job: Job, tiles_left: int | None) -> None:
        """Up to `tiles_left` tiles of `job`'s images not in the cache (None: all), then, once
        every tile is encoded, its prefill and first token."""
        prepared = job.prepared
        tiles = prepared.num_tiles
        job.started_at = job.started_at or time.perf_counter()
        try:
            if prepared.media and not job.media_done:  # videos: one image or frame a turn
                if job.media_parts is None:
                    job.media_parts = self._replier.media_features(prepared, job.media_stats)
                for part in job.media_parts:
                    if job.cancelled or self._stopping:  # the client left: no more frames for nobody
                        return
                    job.features.append(part)
                    encoded = job.media_stats.image_tiles - job.tiles
                    job.vision_s, job.tiles = job.media_stats.vision_s, job.media_stats.image_tiles
                    self.stats.tiles_encoded += encoded
                    if tiles_left is not None:
                        tiles_left -= encoded
                        if tiles_left <= 0:
                            return
                job.media_parts, job.media_done = None, True
            while not prepared.media and len(job.features) < tiles:
                if job.cancelled or self._stopping:  # dropped (and released) at the next turn
                    return
                t0 = time.perf_counter()
                i = len(job.features)
                features, cached = self._cache.get(prepared.pixel_values[i], prepared.pixel_attention_mask[i])
                job.features.append(features)
                job.tiles += 1
                job.vision_s += time.perf_counter() - t0
                job.cached_tiles += cached
                self.stats.tiles_cached += cached
                self.stats.tiles_encoded += not cached
                if not cached and tiles_left is not None:
                    tiles_left -= 1
                    if tiles_left <= 0:
                        return
            with self._lock:
                self._waiting.remove(job)
            if job.cancelled:
                self.stats.cancelled += 1
                job.release()
                return
            self._prefill(job)
        except Exception as exc:  # noqa: BLE001 - this request's vision or prefill failed
            with self._lock:
                if job in self._waiting:
                    self._waiting.remove(job)
            self._fail(job, exc)

    def _image_features(self, job: Job) -> Callable[[PreparedInputs, GenerationStats], np.ndarray | None]:
        def features(prepared: PreparedInputs, stats: GenerationStats) -> np.ndarray | None:
            if not job.features:
                return None
            stats.vision_s, stats.image_tiles = job.vision_s, job.tiles
            joined = np.concatenate(job.features)
            stats.image_tokens = len(joined)
            return joined

        return features

    def _prefill(self, job: Job) -> None:
        self.stats.admitted += 1
        row = self._batch.admit(job.id, job.prepared, job.options, self._image_features(job))
        job.first_token_at = time.perf_counter()
        # in the KV cache now: the pixels (~3 MB a tile) and features go
        job.prepared.pixel_values = job.prepared.pixel_attention_mask = None
        job.features = []
        if row.loop.done:  # stopped at its first token (RowBatch.step finishes the others)
            row.finish()
        self._running[job.id] = (job, row)
        self._send(job, row)
        if row.loop.done or job.stop_text.stopped:
            self._finish(job, row)

    def _step(self) -> None:
        rows = len(self._running)
        try:
            finished = self._batch.step(return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - a failed shared step fails every row in it
            for job, _ in list(self._running.values()):
                self._fail(job, exc)
            self._running.clear()
            self._batch = self._new_batch()
            return
        stats = self.stats
        stats.steps += 1
        stats.batched_steps += rows > 1
        stats.rows_stepped += rows
        stats.max_rows = max(stats.max_rows, rows)
        done = {row.index: result for row, result in finished}
        for job_id, (job, row) in list(self._running.items()):
            if isinstance(done.get(job_id), Exception):
                del self._running[job_id]
                self._fail(job, done[job_id])
                continue
            self._send(job, row)
            if job_id in done or job.stop_text.stopped:
                self._finish(job, row)

    def _send(self, job: Job, row: Any) -> None:
        """The row's new text (cut at a stop string) to the client."""
        stop_text = job.stop_text
        pieces, job.sent = row.text[job.sent :], len(row.text)
        text = stop_text.feed("".join(pieces))
        if row.loop.done and not stop_text.stopped:
            text += stop_text.flush()
        if text:
            job.emit("delta", text)

    def _finish(self, job: Job, row: Any) -> None:
        self._running.pop(job.id, None)
        if not row.loop.done:
            self._batch.drop(row)  # cut by a stop string
        now = time.perf_counter()
        stats = row.stats
        self.stats.completed += 1
        self.stats.generated_tokens += len(row.tokens)
        stopped = job.stop_text.stopped
        job.emit(
            "done",
            {
                "finish_reason": "stop" if stopped or stats.stop_reason == "stop" else "length",
                "prompt_tokens": len(job.prepared.input_ids),
                "completion_tokens": len(row.tokens),
                "timings": timings(job, stats, now),
            },
        )

    def _fail(self, job: Job, exc: Exception) -> None:
        self.stats.failed += 1
        job.release()
        job.emit("error", exc)


def timings(job: Job, stats: GenerationStats, now: float) -> dict[str, Any]:
    """llama-server's `timings` object, plus where the time went before the first token."""
    prompt_ms = (job.vision_s + stats.prefill_s) * 1000
    predicted_ms = (now - job.first_token_at) * 1000
    predicted_n = max(0, stats.generated_tokens - 1)  # the first token came with the prefill

    def per(n: float, ms: float) -> tuple[float, float]:
        return (round(ms / n, 3) if n else 0.0), (round(1000 * n / ms, 3) if ms > 0 else 0.0)

    prompt_per_token, prompt_per_s = per(stats.prompt_tokens, prompt_ms)
    predicted_per_token, predicted_per_s = per(predicted_n, predicted_ms)
    return {
        "prompt_n": stats.prompt_tokens,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": prompt_per_token,
        "prompt_per_second": prompt_per_s,
        "predicted_n": predicted_n,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": predicted_per_token,
        "predicted_per_second": predicted_per_s,
        "queue_ms": round((job.started_at - job.submitted_at) * 1000, 3),
        "preprocess_ms": round(job.prepared.preprocess_s * 1000, 3),
        "vision_ms": round(job.vision_s * 1000, 3),
        "image_tiles": job.tiles,
        "cached_tiles": job.cached_tiles,
        "ttft_ms": round((job.first_token_at - job.submitted_at + job.prepared.preprocess_s) * 1000, 3),
    }
