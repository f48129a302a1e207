"""The local engine: one model in this process, decoding/preprocessing overlapped with inference.

Worker threads run `load_image` + `SmolVLM.prepare` (PIL/numpy, thread-safe) for the next images
while the main thread runs the model. With `batch_size` > 1 the model decodes that many images
together, refilling a finished image's place at once (`SmolVLM.generate_many`; a model without it
gets fixed groups through `generate_batch`); one image at a time goes through `stream_prepared`.
A file that cannot be decoded becomes a failed record; an inference error fails only its images
(the images of a failed batch step are retried one by one), but a model that fails its first
images without a single success stops the run: the model, not the images, is broken.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from smolvlm_cli.batch.records import ImageRecord, Job
from smolvlm_cli.errors import SmolVLMError, error_message
from smolvlm_cli.options import Tiling

FAILURES_BEFORE_GIVING_UP = 3


Emit = Callable[[Job, ImageRecord], None]


class _ReorderBuffer:
    """Emits records in job order (`seq` 0, 1, 2, ...): a finished one waits for those before it."""

    def __init__(self, emit: Emit):
        self._emit = emit
        self._waiting: dict[int, tuple[Job, ImageRecord]] = {}
        self._next = 0

    def put(self, seq: int, job: Job, record: ImageRecord) -> None:
        self._waiting[seq] = (job, record)
        while self._next in self._waiting:
            self._emit(*self._waiting.pop(self._next))
            self._next += 1


@dataclass
class _InFlight:
    """An image handed to `generate_many` and not finished yet."""

    job: Job
    prepared: Any
    prep_s: float  # its preprocessing time
    inference_s: float = 0.0  # its share of the wall time while in flight


class LocalEngine:
    name = "local"

    def __init__(
        self,
        vlm: Any,
        options: Any,
        *,
        model_name: str = "",
        batch_size: int = 1,
        workers: int = 2,
        tiling: Tiling | None = None,
        video_options: dict | None = None,
    ):
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be at least 1")
        self.vlm = vlm
        self.options = options
        self.model_name = model_name or getattr(vlm, "model_id", "") or ""
        self.batch_size = batch_size
        self.workers = workers
        self.tiling = tiling
        self.video_options = video_options or {}  # fps, max_frames, start, end
        self._successes = 0
        self._failures_in_a_row = 0

    # -- preprocessing (worker threads) -----------------------------------------------------
    def _prepare(self, job: Job):
        from smolvlm_cli.image_loading import load_image
        from smolvlm_cli.video import is_video_path

        t0 = time.perf_counter()
        if is_video_path(job.item.path):  # probed and sampled here; frames decoded while encoding
            prepared = self.vlm.prepare([], job.prompt, videos=[job.item.path], video_options=self.video_options)
            return prepared, time.perf_counter() - t0
        image = load_image(job.item.path)
        prepared = self.vlm.prepare([image], job.prompt, tiling=self.tiling)
        return prepared, time.perf_counter() - t0

    # -- the loop ---------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], emit: Emit, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Caption every job (in order) and `emit` its record; return early once `should_stop`."""
        source = iter(jobs)
        lookahead = 2 * self.batch_size + self.workers
        pending: deque[tuple[Job, Future]] = deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="smolvlm-prepare")

        def fill() -> None:
            while len(pending) < lookahead and not should_stop():
                job = next(source, None)
                if job is None:
                    return
                pending.append((job, pool.submit(self._prepare, job)))

        def ready(failed: Emit) -> Iterator[tuple[Job, Any, float]]:
            """Prepared jobs in order; an undecodable file goes to `failed` at once."""
            fill()
            while pending and not should_stop():
                job, future = pending.popleft()
                fill()
                try:
                    prepared, prep_s = future.result()
                except Exception as exc:  # noqa: BLE001 - any undecodable file is that file's failure
                    failed(
                        job,
                        ImageRecord.failure(
                            job.item.path, error_message(exc), model=self.model_name, prompt=job.prompt
                        ),
                    )
                    continue
                yield job, prepared, prep_s

        try:
            if self.batch_size > 1 and hasattr(self.vlm, "generate_many"):
                self._continuous(ready, emit)
                return
            batch: list[tuple[Job, Any, float]] = []
            for item in ready(emit):
                batch.append(item)
                if len(batch) >= self.batch_size or not pending:
                    if should_stop():
                        return
                    self.caption_prepared(batch, emit)
                    batch = []
            if batch and not should_stop():
                self.caption_prepared(batch, emit)
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _continuous(self, ready: Callable[[Emit], Iterator[tuple[Job, Any, float]]], emit: Emit) -> None:
        """Continuous batching (`SmolVLM.generate_many`): a finished image's place in the batch goes
        to the next one at once. Records still go out in job order (finished ones wait for their
        predecessors), so every batch size writes the same files."""
        out = _ReorderBuffer(emit)
        seqs = itertools.count()  # job order, undecodable files included
        feed = ((next(seqs), *item) for item in ready(lambda job, record: out.put(next(seqs), job, record)))
        inflight: dict[int, _InFlight] = {}
        feed_errors: list[BaseException] = []
        while self._generate_many(feed, inflight, out, feed_errors):
            pass  # a shared step failed: its images went one by one, the rest start a new run
        if feed_errors:
            raise feed_errors[0]

    def _generate_many(
        self,
        feed: Iterator[tuple[int, Job, Any, float]],
        inflight: dict[int, _InFlight],
        out: _ReorderBuffer,
        feed_errors: list[BaseException],
    ) -> bool:
        """One `generate_many` run over `feed`; True when a failed shared step cut it short."""
        fed: list[int] = []  # generate_many's index -> seq

        def items() -> Iterator[Any]:
            while True:
                try:
                    seq, job, prepared, prep_s = next(feed)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - raised once the rows in flight are done
                    feed_errors.append(exc)
                    return
                fed.append(seq)
                inflight[seq] = _InFlight(job, prepared, prep_s)
                yield prepared

        results = self.vlm.generate_many(items(), self.options, batch_size=self.batch_size, return_exceptions=True)
        mark = time.perf_counter()
        while True:
            try:
                item = next(results, None)
            except Exception:  # noqa: BLE001 - a failed shared step: its images go one by one
                for seq in sorted(inflight):
                    one = inflight.pop(seq)
                    self.caption_prepared(
                        [(one.job, one.prepared, one.prep_s)], lambda job, record, seq=seq: out.put(seq, job, record)
                    )
                return True
            if item is None:
                return False
            index, result = item
            # the wall time since the last result, shared by the images in flight during it
            now = time.perf_counter()
            share, mark = (now - mark) / len(inflight), now
            for one in inflight.values():
                one.inference_s += share
            seq = fed[index]
            one = inflight.pop(seq)
            seconds = one.prep_s + one.inference_s
            if isinstance(result, Exception):
                out.put(seq, one.job, self._failure(one.job, result, seconds))
            else:
                out.put(seq, one.job, self._success(one.job, result.text, result.stats, seconds))

    def caption_prepared(self, batch: list[tuple[Job, Any, float]], emit: Emit) -> None:
        """One call for `batch` (`generate_batch`), retried image by image if it fails."""
        t0 = time.perf_counter()
        try:
            if len(batch) == 1:
                stream = self.vlm.stream_prepared(batch[0][1], self.options)
                text = stream.text()
                results = [(text, stream.stats)]
            else:
                generations = self.vlm.generate_batch([p for _, p, _ in batch], self.options)
                results = [(g.text, g.stats) for g in generations]
        except Exception as exc:  # noqa: BLE001
            if len(batch) > 1:
                for one in batch:
                    self.caption_prepared([one], emit)
                return
            job, _, prep_s = batch[0]
            emit(job, self._failure(job, exc, prep_s + time.perf_counter() - t0))
            return
        share = (time.perf_counter() - t0) / len(batch)
        for (job, _, prep_s), (text, stats) in zip(batch, results):
            emit(job, self._success(job, text, stats, prep_s + share))

    def _failure(self, job: Job, exc: Exception, seconds: float) -> ImageRecord:
        """The failed record of one image; raises instead when the model itself looks broken.
        An input's own error (a file that cannot be read, a prompt too long for the context)
        says nothing about the model: however many come first, the run goes on."""
        if not isinstance(exc, SmolVLMError):
            self._failures_in_a_row += 1
            if self._successes == 0 and self._failures_in_a_row >= FAILURES_BEFORE_GIVING_UP:
                raise exc
        return ImageRecord.failure(
            job.item.path, error_message(exc), model=self.model_name, prompt=job.prompt, seconds=seconds
        )

    def _success(self, job: Job, text: str, stats: Any, seconds: float) -> ImageRecord:
        self._successes += 1
        self._failures_in_a_row = 0
        return ImageRecord(
            path=job.item.path,
            caption=text,
            model=self.model_name,
            prompt=job.prompt,
            prompt_tokens=int(getattr(stats, "prompt_tokens", 0)),
            generated_tokens=int(getattr(stats, "generated_tokens", 0)),
            image_tiles=int(getattr(stats, "image_tiles", 0)),
            stop_reason=str(getattr(stats, "stop_reason", "") or ""),
            seconds=round(seconds, 4),
        )
