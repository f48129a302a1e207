"""The two ways of running a KV-cached ONNX decoder, and their cache states.

- `ConcatDecoder` runs any graph of the official contract (Hugging Face's own exports, our
  `--decoder-style official`): numpy pasts in, presents = concat(past, new) out, `position_ids`
  when the graph takes them. Every step reallocates and copies the whole cache.
- `SharedBufferDecoder` runs our GroupQueryAttention graphs (`builder/text.py`) through IO
  binding: one preallocated [1, kv_heads, capacity, head_dim] buffer per past/present pair, bound
  as both input and output, so the attention kernel appends each new row in place; the token's
  embedding is written straight into the decoder's input buffer and the logits into a reused
  output buffer. Positions come from the attention mask, so rewinding is just a shorter mask.

Both states have `length` and `truncate(n)` (the Backend protocol's DecoderState).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

_GROWTH = 1024  # cache capacity grows in steps of this many positions


class OnnxState:
    """The KV cache of the official contract: one numpy array per `past_key_values.*` input."""

    def __init__(self, pasts: dict[str, np.ndarray]):
        self.pasts = pasts
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.pasts = {name: past[:, :, :length] for name, past in self.pasts.items()}
        self.length = length


def grown_capacity(capacity: int, total: int, limit: int) -> int:
    """The cache capacity that holds `total` positions: `capacity` when it does, else `total` plus
    half a growth step rounded up to whole steps (at most `limit`, which `total` may not pass)."""
    if total > limit:
        raise ValueError(f"the prompt and reply need {total} positions; the model holds {limit}")
    if total <= capacity:
        return capacity
    return min(limit, -(-(total + _GROWTH // 2) // _GROWTH) * _GROWTH)


class SharedKVState:
    """Preallocated past/present buffers: rows [0, length) hold the cache, the rest is scratch."""

    def __init__(self, names: list[str], kv_heads: int, head_dim: int, dtype, capacity: int):
        self.names, self.length = names, 0
        self._shape, self._dtype = (kv_heads, head_dim), dtype
        self.capacity = 0
        self.values: dict[str, ort.OrtValue] = {}
        self.binding = None  # the decode-step IO binding, made by the decoder for this state
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        kv_heads, head_dim = self._shape
        # one block for all layers: np.zeros maps fresh pages, so memory is only committed for the
        # rows actually written (capacity is virtual until used)
        block = np.zeros((len(self.names), 1, kv_heads, capacity, head_dim), self._dtype)
        if self.length:
            block[:, :, :, : self.length] = self._block[:, :, :, : self.length]
        self._block, self.capacity = block, capacity
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(block[i]) for i, n in enumerate(self.names)}
        self.binding = None

    def reserve(self, total: int, limit: int) -> None:
        capacity = grown_capacity(self.capacity, total, limit)
        if capacity != self.capacity:
            self._allocate(capacity)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length  # the mask decides what the attention reads; rows past it are rewritten

    def cache_view(self, name: str) -> np.ndarray:
        """The valid rows of one cache tensor (for tests and debugging)."""
        return self._block[self.names.index(name), :, :, : self.length]


def _io_types(session: ort.InferenceSession, ort_types: dict) -> dict[str, type]:
    return {i.name: ort_types.get(i.type, np.float32) for i in session.get_inputs()}


class ConcatDecoder:
    """`sess.run` with numpy pasts: works for every graph of the official contract.

    Public surface (for batched decoding, `onnx_rows.py`): the cache layout (`cache_names`,
    `kv_heads`, `head_dim`, `cache_dtype`), `has_position_ids`, and `run_feeds`."""

    shared = False

    def __init__(
        self,
        session: ort.InferenceSession,
        past_names: list[str],
        present_for: dict[str, str],
        kv_heads: int,
        head_dim: int,
        ort_types: dict,
    ):
        self.session = session
        types = _io_types(session, ort_types)
        self.past_names = past_names
        self.cache_names = list(present_for)  # past names in the order `run_feeds` returns presents
        self.has_position_ids = "position_ids" in types
        self.cache_dtype = types[past_names[0]]
        self.embeds_dtype = types["inputs_embeds"]
        self._output_names = ["logits", *present_for.values()]
        self.kv_heads, self.head_dim = kv_heads, head_dim

    def new_state(self) -> OnnxState:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        return OnnxState({name: empty for name in self.past_names})

    def run_feeds(
        self, embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, pasts: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder run: logits [rows, seq, vocab] and the presents in `cache_names` order.
        `position_ids` is dropped for graphs that derive positions from the mask."""
        feeds = {"inputs_embeds": embeds.astype(self.embeds_dtype, copy=False), "attention_mask": attention_mask}
        if self.has_position_ids:
            feeds["position_ids"] = position_ids
        feeds.update(pasts)
        logits, *presents = self.session.run(self._output_names, feeds)
        return logits, presents

    def run(self, state: OnnxState, embeds: np.ndarray) -> np.ndarray:
        seq, past = embeds.shape[1], state.length
        # the full-length mask: a length-1 mask in decode steps gives garbage
        logits, presents = self.run_feeds(
            embeds,
            np.ones((1, past + seq), dtype=np.int64),
            np.arange(past, past + seq, dtype=np.int64)[None],
            state.pasts,
        )
        state.pasts = dict(zip(self.cache_names, presents))
        state.length = past + seq
        return logits[0, -1].astype(np.float32, copy=True)


class StepBinding:
    """The IO bindings of one decode step over fixed buffers: `tokens` [n, 1] are embedded into
    `embeds` [n, 1, hidden] (in place when the embedding graph's output type allows), which the
    decoder binding reads; the logits land in `logits` [n, 1, vocab]."""

    def __init__(
        self,
        tokens: np.ndarray,
        embeds: np.ndarray,
        logits: np.ndarray,
        embed_binding: ort.IOBinding | None,
        binding: ort.IOBinding,
    ):
        self.tokens, self.embeds, self.logits = tokens, embeds, logits
        self.embed_binding, self.binding = embed_binding, binding


class SharedBufferDecoder:
    """IO binding over preallocated KV buffers, grown on demand (GroupQueryAttention graphs).

    Public surface (for batched decoding, `onnx_rows.py`): the cache layout (`past_names`,
    `kv_heads`, `head_dim`, `cache_dtype`, `max_positions`, `initial_capacity`), `run` for a
    prompt chunk, and `bind_step`/`run_step` for decode steps over caller-owned buffers."""

    shared = True

    def __init__(
        self,
        session: ort.InferenceSession,
        embed: ort.InferenceSession,
        past_names: list[str],
        present_for: dict[str, str],
        kv_heads: int,
        head_dim: int,
        hidden: int,
        vocab: int,
        max_positions: int,
        ort_types: dict,
    ):
        self.session, self.embed = session, embed
        types = _io_types(session, ort_types)
        self.past_names, self._present_for = past_names, present_for
        self.cache_dtype = types[past_names[0]]
        self.embeds_dtype = types["inputs_embeds"]
        self.kv_heads, self.head_dim, self.max_positions = kv_heads, head_dim, max_positions
        self._mask = np.ones((1, max_positions), np.int64)
        self.hidden, self.vocab = hidden, vocab
        embed_out = embed.get_outputs()[0]
        self._embed_in_place = ort_types.get(embed_out.type) == self.embeds_dtype
        self._embed_input, self._embed_output = embed.get_inputs()[0].name, embed_out.name

    def initial_capacity(self) -> int:
        return min(_GROWTH, self.max_positions)

    def new_state(self, capacity: int | None = None) -> SharedKVState:
        return SharedKVState(
            self.past_names,
            self.kv_heads,
            self.head_dim,
            self.cache_dtype,
            min(capacity or _GROWTH, self.max_positions),
        )

    def _binding(self, values: dict[str, ort.OrtValue], logits: ort.OrtValue | None) -> ort.IOBinding:
        binding = self.session.io_binding()
        if logits is None:  # let ONNX Runtime allocate (graphs returning every position's logits)
            binding.bind_output("logits")
        else:
            binding.bind_ortvalue_output("logits", logits)  # first: get_outputs() follows binding order
        for past, present in self._present_for.items():
            binding.bind_ortvalue_input(past, values[past])
            binding.bind_ortvalue_output(present, values[past])
        return binding

    def run(self, state: SharedKVState, embeds: np.ndarray) -> np.ndarray:
        """Append a prompt chunk ([1, seq, hidden]) to the cache; the last position's logits."""
        seq = embeds.shape[1]
        total = state.length + seq
        state.reserve(total, self.max_positions)
        binding = self._binding(state.values, None)
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=self.embeds_dtype))
        binding.bind_cpu_input("attention_mask", self._mask[:, :total])
        self.session.run_with_iobinding(binding)
        state.length = total
        logits = binding.get_outputs()[0].numpy()
        return logits[0, -1].astype(np.float32, copy=True)

    def bind_step(
        self, values: dict[str, ort.OrtValue], tokens: np.ndarray, embeds: np.ndarray, logits: np.ndarray
    ) -> StepBinding:
        """Bindings for decode steps of the caches `values` (past = present, updated in place),
        reading token ids from `tokens` and writing the logits into `logits` [n, 1, vocab]."""
        embeds_value = ort.OrtValue.ortvalue_from_numpy(embeds)
        embed_binding = None
        if self._embed_in_place:  # the lookup writes straight into the decoder's input
            embed_binding = self.embed.io_binding()
            embed_binding.bind_cpu_input(self._embed_input, tokens)
            embed_binding.bind_ortvalue_output(self._embed_output, embeds_value)
        binding = self._binding(values, ort.OrtValue.ortvalue_from_numpy(logits))
        binding.bind_ortvalue_input("inputs_embeds", embeds_value)
        return StepBinding(tokens, embeds, logits, embed_binding, binding)

    def run_step(self, step: StepBinding, attention_mask: np.ndarray) -> None:
        """Embed `step.tokens` and run the decoder over them; the logits land in the bound buffer."""
        if step.embed_binding is not None:
            self.embed.run_with_iobinding(step.embed_binding)
        else:
            (embeds,) = self.embed.run(None, {self._embed_input: step.tokens})
            step.embeds[...] = embeds
        step.binding.bind_cpu_input("attention_mask", attention_mask)
        self.session.run_with_iobinding(step.binding)

    def step(self, state: SharedKVState, token: int) -> np.ndarray:
        """Append one token (embedded in place) and return its logits."""
        total = state.length + 1
        state.reserve(total, self.max_positions)
        if state.binding is None:  # buffers of the state's own: states may step in several threads
            buffers = np.zeros((1, 1), np.int64), np.zeros((1, 1, self.hidden), self.embeds_dtype)
            state.binding = self.bind_step(state.values, *buffers, np.zeros((1, 1, self.vocab), np.float32))
        step = state.binding
        step.tokens[0, 0] = token
        self.run_step(step, self._mask[:, :total])
        state.length = total
        return step.logits[0, 0].copy()  # the buffer is rewritten by the next step
