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
from smolvlm_cli.errors import InputError
from smolvlm_cli.generation import generate_tokens
from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.tokenizer import Tokenizer
from smolvlm_cli.values import GenerationStats, PreparedInputs, ReplyText, TextStream


class Replier:
    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        config: ModelConfig,
        progress: Callable[[int, int], None] | None = None,
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = config.eos_token_ids
        self.image_token_id = config.image_token_id
        self.progress = progress  # (video frames encoded, frames in all) of the current prompt

    @property
    def image_processor(self):
        from smolvlm_cli.image_processing import ImageProcessor

        return ImageProcessor(self.config)

    def image_features(
        self, prepared: PreparedInputs, stats: GenerationStats, cache: dict | None = None
    ) -> np.ndarray | None:
        """Features for the prepared prompt's image tokens ([n, hidden]), None without images.

        Videos' frames are decoded here, ahead of the encoder (`video.encode`); `cache` maps
        frame contents to features (a fresh one per call when None)."""
        if prepared.media:
            return np.concatenate(list(self.media_features(prepared, stats, cache)))
        if prepared.pixel_values is None:
            return None
        t0 = time.perf_counter()
        features = self.backend.encode_images(prepared.pixel_values, prepared.pixel_attention_mask)
        stats.vision_s += time.perf_counter() - t0
        stats.image_tiles += len(prepared.pixel_values)
        stats.image_tokens += int(features.shape[0] * features.shape[1])
        return features.reshape(-1, features.shape[-1])

    def media_features(
        self, prepared: PreparedInputs, stats: GenerationStats, cache: dict | None = None
    ) -> Iterator[np.ndarray]:
        """The features of a prompt with videos (`prepared.media`) in prompt order, one image
        or one video frame at a time ([tokens, hidden] each): a caller may do other work between
        two (the server steps its running replies). Closing it early stops the decoding."""
        from smolvlm_cli.video.encode import frame_features

        cache = {} if cache is None else cache
        done = 0
        for item in prepared.media:
            if isinstance(item, int):  # an image: its tiles are the next `item` of pixel_values
                t0 = time.perf_counter()
                tiles = slice(done, done + item)
                out = self.backend.encode_images(prepared.pixel_values[tiles], prepared.pixel_attention_mask[tiles])
                stats.vision_s += time.perf_counter() - t0
                stats.image_tiles += item
                stats.image_tokens += int(out.shape[0] * out.shape[1])
                yield out.reshape(-1, out.shape[-1])
                done += item
            else:
                yield from frame_features(item, self.backend, self.image_processor, stats, cache, self.progress)

    def stream(self, get_prepared: Callable[[], PreparedInputs], opts: GenerationOptions, started: float) -> TextStream:
        """A fresh reply to the prompt `get_prepared()` gives (called on first iteration)."""
        stats, token_ids = GenerationStats(), []

        def run() -> Iterator[str]:
            prepared = get_prepared()
            self.check_context(prepared, opts)
            stats.preprocess_s += prepared.preprocess_s
            stats.prompt_tokens += len(prepared.input_ids)
            features = self.image_features(prepared, stats)
            state = self.backend.new_state()
            yield from self.reply_on(state, prepared.input_ids, features, opts, stats, token_ids, started)

        return TextStream(run(), stats, token_ids)

    def check_context(self, prepared: PreparedInputs, opts: GenerationOptions) -> None:
        videos = prepared.videos
        check_fits_context(
            len(prepared.input_ids), sum(v.num_frames for v in videos), len(videos), opts.max_new_tokens, self.config
        )

    def stream_prepared(self, prepared: PreparedInputs, opts: GenerationOptions) -> TextStream:
        """`stream` for inputs prepared earlier: time to first token counts their preprocessing,
        wherever it ran."""
        return self.stream(lambda: prepared, opts, time.perf_counter() - prepared.preprocess_s)

    def reply_on(
        self,
        state: DecoderState,
        ids: np.ndarray,
        features: np.ndarray | None,
        opts: GenerationOptions,
        stats: GenerationStats,
        token_ids: list[int],
        started: float | None = None,
    ) -> Iterator[str]:
        """Prefill `ids` onto `state`, then generate: the loop shared by describe, ask and chat.

        Appends each new token to `token_ids` and fills `stats`; yields text deltas."""
        started = started if started is not None else time.perf_counter()
        t0 = time.perf_counter()
        logits = self.backend.forward(state, ids, features)
        stats.prefill_s += time.perf_counter() - t0
        reply = ReplyText(self.tokenizer)
        eos = self.eos_token_ids
        first_token_at = None
        for token in generate_tokens(
            logits, lambda t: self.backend.forward(state, np.array([t])), opts, eos, context_ids=ids
        ):
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


def check_fits_context(
    prompt_tokens: int, frames: int, videos: int, max_new_tokens: int, config: ModelConfig, limit: int | None = None
) -> None:
    """A prompt that does not fit the context with room for `max_new_tokens` is an error raised
    before any generation (the reply would fail at the context's end, its text lost), and with
    videos before any frame is decoded, saying how many frames would fit. (Our choice over
    dropping frames silently: the frames sampled stay transformers'.) `limit`: a context smaller
    than the model's."""
    limit = limit or config.max_position_embeddings
    need = prompt_tokens + max_new_tokens
    if need <= limit:
        return
    if not videos:
        room = limit - prompt_tokens
        advice = f"use -n {room} or fewer" if room > 0 else "use a shorter prompt, fewer images or a lower --detail"
        raise InputError(
            f"the prompt needs {prompt_tokens} tokens plus {max_new_tokens} new ones, "
            f"but the model's context holds {limit}: {advice}"
        )
    per_frame = config.image_seq_len + 13  # its image tokens, 3 markers, ~10 for "\nFrame from MM:SS:"
    fit = frames - -(-(need - limit) // per_frame)
    advice = (
        f"use --max-frames {fit // videos} or fewer (or a lower --fps), or fewer new tokens"
        if fit >= videos
        else "use fewer videos or fewer new tokens"
    )
    raise InputError(
        f"the prompt needs {prompt_tokens} tokens ({frames} video frames) plus {max_new_tokens} "
        f"new ones, but the model's context holds {limit}: {advice}"
    )
