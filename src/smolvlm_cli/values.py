"""The values generation passes around: prepared inputs, statistics, finished and streamed replies.

A leaf module (numpy only), so the model, conversations and batched decoding all import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from smolvlm_cli.tokenizer import Tokenizer


@dataclass
class GenerationStats:
    """Counts and timings of one reply; a `TextStream`'s stats fill in as it is consumed."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    image_tiles: int = 0
    image_tokens: int = 0
    video_frames: int = 0  # of image_tiles, the video frames (one tile each)
    preprocess_s: float = 0.0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0  # from the call to the first generated token
    stop_reason: str = ""  # "stop" (an end-of-turn token) or "length" (max_new_tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1  # the first token comes from the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def count_token(self, token: int, eos_token_ids: Collection[int], ignore_eos: bool) -> None:
        """Count a generated token; the stop reason is that of the last one counted."""
        self.generated_tokens += 1
        self.stop_reason = "stop" if token in eos_token_ids and not ignore_eos else "length"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tokens_per_s": round(self.decode_tokens_per_s, 3)}


@dataclass
class PreparedInputs:
    """A prompt ready for the backend: ids and the real (unpadded) tiles of its images."""

    messages: list[dict]
    input_ids: np.ndarray  # [seq] int64
    pixel_values: np.ndarray | None  # [tiles, 3, T, T] float32
    pixel_attention_mask: np.ndarray | None  # [tiles, T, T] bool (the processor gives int64, as transformers)
    preprocess_s: float = 0.0
    # With videos: the media in prompt order, an image as its tile count (its tiles are the next
    # ones of pixel_values), a video as its `SampledVideo` (frames decoded when encoded).
    media: list[Any] = field(default_factory=list)

    @property
    def videos(self) -> list[Any]:
        return [m for m in self.media if not isinstance(m, int)]

    @property
    def num_tiles(self) -> int:
        images = 0 if self.pixel_values is None else len(self.pixel_values)
        return images + sum(v.num_frames for v in self.videos)


@dataclass
class Generation:
    """A finished answer: its text, generated token ids (the stop token included) and stats."""

    text: str
    token_ids: list[int]
    stats: GenerationStats


class ReplyText:
    """Token ids -> text deltas of a reply (the same for a streamed and a batched reply)."""

    def __init__(self, tokenizer: Tokenizer):
        self._detok = tokenizer.stream(skip_special_tokens=True)
        self._at_start = True

    def put(self, token: int) -> str:
        delta = self._detok.put(token)
        if self._at_start:  # the reply starts after "Assistant:", usually with a space
            delta = delta.lstrip()
            self._at_start = not delta
        return delta

    def flush(self) -> str:
        # a reply cut inside a multi-byte character ends in U+FFFD, as the tokenizer's decode does
        tail = self._detok.flush()
        if not tail or (self._at_start and not tail.strip()):
            return ""
        return tail.lstrip() if self._at_start else tail


class TextStream:
    """An iterator of text deltas whose `stats` and `token_ids` fill in as it is consumed."""

    def __init__(self, deltas: Iterator[str], stats: GenerationStats, token_ids: list[int]):
        self._deltas = deltas
        self.stats = stats
        self.token_ids = token_ids

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __next__(self) -> str:
        return next(self._deltas)

    def text(self) -> str:
        """The rest of the reply as one string (consumes the stream)."""
        return "".join(self._deltas)

    def close(self) -> None:
        """Stop the reply here: no more tokens are generated (as when the stream is dropped)."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()
