"""The local engine: one model in this process, decoding/preprocessing overlapped with inference.

Worker threads run `load_image` + `SmolVLM.prepare` (PIL/numpy, thread-safe) for the next images
while the main thread runs the model, `batch_size` images per `generate_batch` call (one image:
`stream_prepared`). A file that cannot be decoded becomes a failed record at once; an inference
error fails only its images (a failed batch is retried image by image), but a model that fails
its first images without a single success stops the run: the model, not the images, is broken.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from smolvlm_cli.batch.records import ImageRecord, Job

FAILURES_BEFORE_GIVING_UP = 3


Emit = Callable[[Job, ImageRecord], None]


def error_message(exc: BaseException) -> str:
    """One line for the record: the message of our errors, `Type: first line` of others."""
    message = getattr(exc, "message", None)
    if message:
        return str(message)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class LocalEngine:
    name = "local"

    def __init__(self, vlm: Any, options: Any, *, model_name: str = "", batch_size: int = 1,
                 workers: int = 2, longest_edge: int | None = None, split: bool | None = None):
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be at least 1")
        self.vlm = vlm
        self.options = options
        self.model_name = model_name or getattr(vlm, "model_id", "") or ""
        self.batch_size = batch_size
        self.workers = workers
        self.longest_edge = longest_edge
        self.split = split
        self._successes = 0
        self._failures_in_a_row = 0

    # -- preprocessing (worker threads) -----------------------------------------------------
    def _prepare(self, job: Job):
        from smolvlm_cli.image_loading import load_image

        t0 = time.perf_counter()
        image = load_image(job.item.path)
        prepared = self.vlm.prepare([image], job.prompt, longest_edge=self.longest_edge,
                                    split=self.split)
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

        try:
            fill()
            batch: list[tuple[Job, Any, float]] = []
            while pending and not should_stop():
                job, future = pending.popleft()
                fill()
                try:
                    prepared, prep_s = future.result()
                except Exception as exc:  # noqa: BLE001 - any undecodable file is that file's failure
                    emit(job, ImageRecord.failure(job.item.path, error_message(exc),
                                                  model=self.model_name, prompt=job.prompt))
                    prepared = None
                if prepared is not None:
                    batch.append((job, prepared, prep_s))
                if batch and (len(batch) >= self.batch_size or not pending):
                    if should_stop():
                        break
                    self._infer(batch, emit)
                    batch = []
            if batch and not should_stop():
                self._infer(batch, emit)
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _infer(self, batch: list[tuple[Job, Any, float]], emit: Emit) -> None:
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
                    self._infer([one], emit)
                return
            self._failures_in_a_row += 1
            if self._successes == 0 and self._failures_in_a_row >= FAILURES_BEFORE_GIVING_UP:
                raise
            job, _, prep_s = batch[0]
            emit(job, ImageRecord.failure(job.item.path, error_message(exc), model=self.model_name,
                                          prompt=job.prompt,
                                          seconds=prep_s + time.perf_counter() - t0))
            return
        share = (time.perf_counter() - t0) / len(batch)
        for (job, _, prep_s), (text, stats) in zip(batch, results):
            self._successes += 1
            self._failures_in_a_row = 0
            emit(job, ImageRecord(
                path=job.item.path, caption=text, model=self.model_name, prompt=job.prompt,
                prompt_tokens=int(getattr(stats, "prompt_tokens", 0)),
                generated_tokens=int(getattr(stats, "generated_tokens", 0)),
                image_tiles=int(getattr(stats, "image_tiles", 0)),
                stop_reason=str(getattr(stats, "stop_reason", "") or ""),
                seconds=round(prep_s + share, 4)))
