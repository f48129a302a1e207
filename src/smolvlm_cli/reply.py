"""`Replier`: what a reply needs of a model, and nothing more (no prompts, no files).

It holds the backend, the tokenizer and the stop ids, and runs the parts of a reply: the image
features of a prompt, then the prefill and token loop that stream text deltas. `SmolVLM`,
`Conversation` and batched decoding all reply through it, so none of them needs the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from smolvlm_cli.backends.base import Backend, DecoderState
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.generation import generate_tokens
from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.tokenizer import Tokenizer
from smolvlm_cli.values import GenerationStats, PreparedInputs, ReplyText, TextStream


class Replier:
    def __init__(self, backend: Backend, tokenizer: Tokenizer, config: ModelConfig):
        self.backend = backend
        self.tokenizer = tokenizer
        self.eos_token_ids = config.eos_token_ids
        self.image_token_id = config.image_token_id

    def image_features(self, prepared: PreparedInputs, stats: GenerationStats) -> np.ndarray | None:
        """Features for the prepared prompt's image tokens ([n, hidden]), None without images."""
        if prepared.pixel_values is None:
            return None
        t0 = time.perf_counter()
        features = self.backend.encode_images(prepared.pixel_values, prepared.pixel_attention_mask)
        stats.vision_s += time.perf_counter() - t0
        stats.image_tiles += len(prepared.pixel_values)
        stats.image_tokens += int(features.shape[0] * features.shape[1])
        return features.reshape(-1, features.shape[-1])

    def stream(self, get_prepared: Callable[[], PreparedInputs], opts: GenerationOptions,
               started: float) -> TextStream:
        """A fresh reply to the prompt `get_prepared()` gives (called on first iteration)."""
        stats, token_ids = GenerationStats(), []

        def run() -> Iterator[str]:
            prepared = get_prepared()
            stats.preprocess_s += prepared.preprocess_s
            stats.prompt_tokens += len(prepared.input_ids)
            features = self.image_features(prepared, stats)
            state = self.backend.new_state()
            yield from self.reply_on(state, prepared.input_ids, features, opts, stats,
                                           token_ids, started)

        return TextStream(run(), stats, token_ids)

    def stream_prepared(self, prepared: PreparedInputs, opts: GenerationOptions) -> TextStream:
        """`stream` for inputs prepared earlier: time to first token counts their preprocessing,
        wherever it ran."""
        return self.stream(lambda: prepared, opts, time.perf_counter() - prepared.preprocess_s)

    def reply_on(self, state: DecoderState, ids: np.ndarray, features: np.ndarray | None,
                       opts: GenerationOptions, stats: GenerationStats, token_ids: list[int],
                       started: float | None = None) -> Iterator[str]:
        """Prefill `ids` onto `state`, then generate: the loop shared by describe, ask and chat.

        Appends each new token to `token_ids` and fills `stats`; yields text deltas."""
        started = started if started is not None else time.perf_counter()
        t0 = time.perf_counter()
        logits = self.backend.forward(state, ids, features)
        stats.prefill_s += time.perf_counter() - t0
        reply = ReplyText(self.tokenizer)
        eos = self.eos_token_ids
        first_token_at = None
        for token in generate_tokens(logits, lambda t: self.backend.forward(state, np.array([t])),
                                     opts, eos, context_ids=ids):
            now = time.perf_counter()
            if first_token_at is None:
                stats.ttft_s = now - started
                first_token_at = now
            else:
                stats.decode_s = now - first_token_at
            token_ids.append(token)
            stats.count_token(token, eos, opts.ignore_eos)
            delta = reply.put(token)
            if delta:
                yield delta
        tail = reply.flush()
        if tail:
            yield tail
