"""Batched decoding on the two ONNX decoders: several replies share every decode step.

A decode step is memory-bound: it reads every decoder weight (~0.54 GB in fp32, ~0.14 GB in
int8 for the 256M model) to produce one token. Stepping N rows at once reads them once for all
N. Prefills stay one row at a time: they are compute-bound (no gain from batching), and a
batch-1 prefill is exactly the single-reply one.

The rows live in slots 0..n-1 and the caller keeps them contiguous (`move` a tail row
into a finished row's slot, then `truncate`), so a step binds one contiguous [n, ...] view and
finished rows cost nothing.

- `SharedKVRows` (our GroupQueryAttention graphs, `SharedBufferDecoder`): one block
  [2*layers, rows, kv_heads, capacity, head_dim]. Slot b's prefill binds the contiguous view
  block[i, b:b+1] as past *and* present (a plain one-row prefill); a step binds block[i, :n] with
  a right-padded mask (row b: ones over its own length + 1). GroupQueryAttention takes each
  row's length from the mask (seqlens_k = sum - 1) and writes that row's new K/V at its own
  position, so every row computes what it would alone (bit-identical in fp32, see the tests).
- `ConcatRows` (`ConcatDecoder`, e.g. Hugging Face's official graphs): the rows' caches padded
  into [n, kv_heads, width, head_dim] arrays, fed as pasts; presents come back one column wider.
  Graphs taking `position_ids` get left padding (positions per row, pads masked); graphs that
  derive positions from the mask (GroupQueryAttention without shared buffers) need right
  padding. The padded arrays are rebuilt only when the set of rows changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from smolvlm_cli.backends.onnx_decoder import ConcatDecoder, SharedBufferDecoder, StepBinding, grown_capacity

# (input_ids [seq], image features or None) -> the prompt's embeddings [1, seq, hidden]
PromptEmbeds = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


class _RowView:
    """Slot b of a `SharedKVRows` as an empty one-row state: `SharedBufferDecoder.run` prefills
    it unchanged (`SharedKVRows` has already reserved the capacity)."""

    binding = None

    def __init__(self, values: dict[str, ort.OrtValue]):
        self.values, self.length = values, 0

    def reserve(self, total: int, limit: int) -> None:
        pass


class SharedKVRows:
    """Up to `rows` replies over one shared KV block (GroupQueryAttention graphs)."""

    def __init__(self, decoder: SharedBufferDecoder, rows: int, hidden: int, vocab: int, prompt_embeds: PromptEmbeds):
        self.decoder, self.rows, self._prompt_embeds = decoder, rows, prompt_embeds
        self.lengths: list[int] = []  # cached positions of slots 0..n-1
        self._tokens = np.zeros((rows, 1), np.int64)
        self._embeds = np.zeros((rows, 1, hidden), decoder.embeds_dtype)
        self._logits = np.zeros((rows, 1, vocab), np.float32)
        self._steps: dict[int, StepBinding] = {}  # n -> the step bindings for slots 0..n-1
        self._block: np.ndarray | None = None
        self.capacity = 0
        self._allocate(decoder.initial_capacity())

    def _allocate(self, capacity: int) -> None:
        d = self.decoder
        # np.zeros maps fresh pages: only the rows actually written commit memory
        block = np.zeros((len(d.past_names), self.rows, d.kv_heads, capacity, d.head_dim), d.cache_dtype)
        if self._block is not None and self.lengths:
            used = max(self.lengths)
            block[:, : len(self.lengths), :, :used] = self._block[:, : len(self.lengths), :, :used]
        self._block, self.capacity = block, capacity
        self._steps.clear()  # their views point into the old block

    def _reserve(self, total: int) -> None:
        capacity = grown_capacity(self.capacity, total, self.decoder.max_positions)
        if capacity != self.capacity:
            self._allocate(capacity)

    def _values(self, rows: slice) -> dict[str, ort.OrtValue]:
        # views of self._block: they stay valid while the block lives (bindings are dropped with it)
        return {
            name: ort.OrtValue.ortvalue_from_numpy(self._block[i, rows])
            for i, name in enumerate(self.decoder.past_names)
        }

    def prefill(self, slot: int, input_ids: np.ndarray, image_features: np.ndarray | None = None) -> np.ndarray:
        """Replace slot `slot` (at most n) by a new prompt; its last logits."""
        embeds = self._prompt_embeds(input_ids, image_features)
        self._reserve(embeds.shape[1])
        row = _RowView(self._values(slice(slot, slot + 1)))
        logits = self.decoder.run(row, embeds)
        self._set_length(slot, row.length)
        return logits

    def _set_length(self, slot: int, length: int) -> None:
        if slot == len(self.lengths):
            self.lengths.append(length)
        else:
            self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s cache into slot `dst` (once per finished row: ~0.5 ms at 150 positions)."""
        length = self.lengths[src]
        self._block[:, dst, :, :length] = self._block[:, src, :, :length]
        self.lengths[dst] = length

    def truncate(self, n: int) -> None:
        del self.lengths[n:]

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each of slots 0..n-1 (n = len(tokens)); logits [n, vocab]."""
        n = len(tokens)
        if n != len(self.lengths):
            raise ValueError(f"{n} tokens for {len(self.lengths)} rows")
        lengths = np.asarray(self.lengths, np.int64)
        width = int(lengths.max()) + 1
        self._reserve(width)
        step = self._steps.get(n)
        if step is None:
            step = self._steps[n] = self.decoder.bind_step(
                self._values(slice(0, n)), self._tokens[:n], self._embeds[:n], self._logits[:n]
            )
        self._tokens[:n, 0] = tokens
        mask = (np.arange(width) <= lengths[:, None]).astype(np.int64)  # right padding
        self.decoder.run_step(step, mask)
        self.lengths = [length + 1 for length in self.lengths]
        return self._logits[:n, 0].copy()  # the buffer is rewritten by the next step


class ConcatRows:
    """Up to `rows` replies through `sess.run` with padded numpy caches (official contract)."""

    def __init__(
        self, decoder: ConcatDecoder, rows: int, prompt_embeds: PromptEmbeds, embed: Callable[[np.ndarray], np.ndarray]
    ):
        self.decoder, self.rows = decoder, rows
        self._prompt_embeds, self._embed = prompt_embeds, embed
        self.left = decoder.has_position_ids
        self._names = decoder.cache_names  # the order presents come back in
        self.lengths: list[int] = []
        self._cache: list[np.ndarray] = []  # per past name [n, kv_heads, width, head_dim]
        self._width = 0
        self._pieces: dict[int, list[np.ndarray]] = {}  # slot -> its cache, not yet in self._cache
        self._dirty = True

    def prefill(self, slot: int, input_ids: np.ndarray, image_features: np.ndarray | None = None) -> np.ndarray:
        state = self.decoder.new_state()
        logits = self.decoder.run(state, self._prompt_embeds(input_ids, image_features))
        self._pieces[slot] = [state.pasts[name][0] for name in self._names]
        if slot == len(self.lengths):
            self.lengths.append(state.length)
        else:
            self.lengths[slot] = state.length
        self._dirty = True
        return logits

    def _row(self, slot: int) -> list[np.ndarray]:
        if slot in self._pieces:
            return self._pieces[slot]
        length, width = self.lengths[slot], self._width
        cols = slice(width - length, width) if self.left else slice(0, length)
        return [a[slot, :, cols] for a in self._cache]

    def move(self, src: int, dst: int) -> None:
        self._pieces[dst] = self._row(src)  # views of the current arrays, copied at the rebuild
        self._pieces.pop(src, None)
        self.lengths[dst] = self.lengths[src]
        self._dirty = True

    def truncate(self, n: int) -> None:
        del self.lengths[n:]
        for slot in [s for s in self._pieces if s >= n]:
            del self._pieces[slot]
        self._dirty = True

    def _rebuild(self) -> None:
        rows = [self._row(b) for b in range(len(self.lengths))]
        width = max(self.lengths)  # all-padding columns left behind by finished rows go
        d = self.decoder
        arrays = []
        for j in range(len(self._names)):
            a = np.zeros((len(rows), d.kv_heads, width, d.head_dim), d.cache_dtype)
            for b, row in enumerate(rows):
                length = self.lengths[b]
                if self.left:
                    a[b, :, width - length :] = row[j]
                else:
                    a[b, :, :length] = row[j]
            arrays.append(a)
        self._cache, self._width = arrays, width
        self._pieces.clear()
        self._dirty = False

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        if n != len(self.lengths):
            raise ValueError(f"{n} tokens for {len(self.lengths)} rows")
        if self._dirty:
            self._rebuild()
        lengths = np.asarray(self.lengths, np.int64)
        cols = np.arange(self._width + 1)
        # left: a row's cached positions end at the new column; right: the graph writes each row's
        # new K/V right after its own positions (seqlens_k), so the mask is a prefix of ones
        valid = cols >= (self._width - lengths)[:, None] if self.left else cols <= lengths[:, None]
        embeds = self._embed(np.asarray(tokens, np.int64).reshape(n, 1))
        logits, self._cache = self.decoder.run_feeds(
            embeds, valid.astype(np.int64), lengths[:, None], dict(zip(self._names, self._cache))
        )
        self._width += 1
        self.lengths = [length + 1 for length in self.lengths]
        return logits[:, -1].astype(np.float32, copy=True)
