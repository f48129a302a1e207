"""Several replies decoded together: one shared decoder step per token for all active rows.

A decode step on a CPU is bound by reading the decoder's weights, so a step of N rows costs
little more than a step of one (256M model, 2 threads: 8 rows per step gave ~3.8x the tokens/s
of one-by-one decoding in fp32, ~3.7x in int8). The loop here is backend-agnostic; the
backend's `DecoderRows` (`backends/onnx_rows.py`) holds the rows' KV caches in slots 0..n-1:

- a row is admitted alone: its images through the vision encoder (one tile per call, as for a
  single reply: batching tiles was no faster) and its prompt through a one-row prefill into a
  free slot; then it advances one token per shared `step`;
- each row has its own `TokenLoop` (sampler seeded as a single run would be, its own history
  for the repetition penalty, its own stop), so it picks exactly the tokens it would get alone
  (fp32, fp16, q4; int8 graphs quantize a step's activations per tensor, over all its rows, so
  their rows differ from single runs by about as much as int8 differs from fp32);
- a finished row leaves at once. Its slot goes to the next prompt when there is one
  (continuous batching); otherwise the tail row moves into it and the batch shrinks, because
  stepping a finished row with a dummy token would cost ~1 ms (fp32 and int8, 4-8 rows) in
  every later step, while a move is one copy of that row's cache, once (~0.5 ms at 150
  positions).

`RowBatch` holds the rows and these rules; `generate_many` feeds it from an iterable of prompts
(`batch`), the server's scheduler from a queue of requests, with each row's own options.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smolvlm_cli.backends.base import DecoderRows
from smolvlm_cli.generation import TokenLoop
from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.reply import Replier
from smolvlm_cli.values import Generation, GenerationStats, PreparedInputs, ReplyText

if TYPE_CHECKING:
    import numpy as np

# (prompt, its stats) -> the features of its image tokens [n, hidden] or None (`Replier.image_features`)
ImageFeatures = Callable[[PreparedInputs, GenerationStats], "np.ndarray | None"]


@dataclass
class Row:
    index: int
    loop: TokenLoop
    reply: ReplyText
    stats: GenerationStats
    started: float  # as `stream_prepared`: the row's admission minus its preprocessing time
    eos: frozenset
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def add(self, token: int, now: float) -> None:
        stats = self.stats
        if not self.tokens:
            stats.ttft_s = now - self.started
        self.tokens.append(token)
        stats.count_token(token, self.eos, self.loop.options.ignore_eos)
        self.text.append(self.reply.put(token))

    def finish(self) -> Generation:
        self.text.append(self.reply.flush())
        return Generation("".join(self.text), self.tokens, self.stats)


def _admit(
    replier: Replier,
    slots: DecoderRows,
    slot: int,
    index: int,
    prepared: PreparedInputs,
    opts: GenerationOptions,
    image_features: ImageFeatures | None = None,
) -> Row:
    """Vision and prefill of one prompt into `slot`, and its first token."""
    started = time.perf_counter() - prepared.preprocess_s
    replier.check_context(prepared, opts)  # a prompt too long fails before any work (a video: before its frames)
    stats = GenerationStats(preprocess_s=prepared.preprocess_s, prompt_tokens=len(prepared.input_ids))
    features = (image_features or replier.image_features)(prepared, stats)
    t0 = time.perf_counter()
    logits = slots.prefill(slot, prepared.input_ids, features)
    stats.prefill_s = time.perf_counter() - t0
    eos = replier.eos_token_ids
    row = Row(
        index, TokenLoop(opts, eos, prepared.input_ids), ReplyText(replier.tokenizer), stats, started, frozenset(eos)
    )
    row.add(row.loop.pick(logits), time.perf_counter())
    return row


def _compact(rows: list[Row | None], slots: DecoderRows) -> None:
    """Move tail rows into the holes left by finished rows: slots 0..n-1 stay contiguous."""
    while rows and rows[-1] is None:
        rows.pop()
    for dst in range(len(rows)):
        if dst >= len(rows):
            break
        if rows[dst] is None:
            slots.move(len(rows) - 1, dst)
            rows[dst] = rows.pop()
            while rows and rows[-1] is None:
                rows.pop()
    slots.truncate(len(rows))


class RowBatch:
    """The rows decoding together in a backend's `DecoderRows`: admit one prompt at a time into a
    free slot, advance every row by one shared `step`, drop a row whenever its reader is gone.

    `generate_many` drives one over an iterable of prompts; the server (`server/scheduler.py`)
    over a queue of requests, with per-row options. Rows are `Row`s: `index` names the prompt,
    `text` the deltas so far, `loop.done` says when it has finished.
    """

    def __init__(self, replier: Replier, slots: DecoderRows):
        self.replier, self.slots = replier, slots
        self._rows: list[Row | None] = []  # rows[slot]; None: a finished row's slot, free until refilled

    @property
    def active(self) -> int:
        return sum(row is not None for row in self._rows)

    @property
    def has_room(self) -> bool:
        return None in self._rows or len(self._rows) < self.slots.rows

    def admit(
        self, index: int, prepared: PreparedInputs, opts: GenerationOptions, image_features: ImageFeatures | None = None
    ) -> Row:
        """Vision (`image_features`, default the replier's), prefill and first token of a prompt
        in a free slot (holes first, then the tail). A row already done (stopped at its first
        token) leaves its slot free."""
        slot = self._rows.index(None) if None in self._rows else len(self._rows)
        row = _admit(self.replier, self.slots, slot, index, prepared, opts, image_features)
        if not row.loop.done:
            if slot == len(self._rows):
                self._rows.append(row)
            else:
                self._rows[slot] = row
        return row

    def drop(self, row: Row) -> None:
        """Free `row`'s slot (its reader went away); the batch is compacted at the next step."""
        self._rows = [None if r is row else r for r in self._rows]

    def step(self, return_exceptions: bool = False) -> list[tuple[Row, Generation | Exception]]:
        """One shared decoder step for every row; the rows that finished in it (or failed alone
        in sampling, with `return_exceptions`). A failed shared step raises."""
        rows = self._rows
        _compact(rows, self.slots)
        if not rows:
            return []
        stepped = list(rows)
        t0 = time.perf_counter()
        logits = self.slots.step([row.tokens[-1] for row in stepped])
        finished: list[tuple[Row, Generation | Exception]] = []
        for slot, row in enumerate(stepped):
            try:
                row.add(row.loop.pick(logits[slot]), time.perf_counter())
            except Exception as exc:  # noqa: BLE001 - e.g. sampling from NaN logits
                if not return_exceptions:
                    raise
                rows[slot] = None
                finished.append((row, exc))
                continue
            if row.loop.done:
                rows[slot] = None
                finished.append((row, row.finish()))
        # decode_s: the summed wall time of the steps a row took part in. Rows share each step,
        # so the whole step is counted for every row in it (their decode_s add up to more than
        # the wall time); other rows' vision and prefill in between are not counted.
        step_s = time.perf_counter() - t0
        for row in stepped:
            row.stats.decode_s += step_s
        return finished


def _one_by_one(
    replier: Replier, prepared: Iterable[PreparedInputs], opts: GenerationOptions, return_exceptions: bool
) -> Iterator[tuple[int, Generation | Exception]]:
    for index, item in enumerate(prepared):
        try:
            stream = replier.stream_prepared(item, opts)
            text = stream.text()
        except Exception as exc:  # noqa: BLE001 - one prompt's failure, reported with its index
            if not return_exceptions:
                raise
            yield index, exc
            continue
        yield index, Generation(text, stream.token_ids, stream.stats)


def generate_many(
    replier: Replier,
    prepared: Iterable[PreparedInputs],
    opts: GenerationOptions,
    batch_size: int,
    return_exceptions: bool = False,
) -> Iterator[tuple[int, Generation | Exception]]:
    """`SmolVLM.generate_many`: (index, Generation or exception) in the order replies finish."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    # None: the backend (torch, the reference) has no batched decoding
    slots = replier.backend.new_rows(batch_size) if batch_size > 1 else None
    if slots is None:
        yield from _one_by_one(replier, prepared, opts, return_exceptions)
        return

    batch = RowBatch(replier, slots)
    source = enumerate(prepared)
    exhausted = False
    while True:
        # admit new prompts into free slots; a prompt is only read from `prepared` when there
        # is room for it
        while not exhausted and batch.has_room:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            index, one = item
            try:
                row = batch.admit(index, one, opts)
            except Exception as exc:  # noqa: BLE001 - vision/prefill of one prompt
                if not return_exceptions:
                    raise
                yield index, exc
                continue
            if row.loop.done:  # stopped at its first token: the slot stays free
                yield index, row.finish()
        if not batch.active:
            return
        for row, result in batch.step(return_exceptions):
            yield row.index, result
