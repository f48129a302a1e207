"""What a backend must provide. Backends speak numpy at their edges and know nothing of prompts.

A backend runs the three parts of the model: the vision encoder (tiles -> image features), and
the text decoder over a growing KV cache held in a `DecoderState`. `forward` appends tokens to
the state and returns the logits of the last one; `truncate` rewinds the state to a prefix, so
several questions can share one encoded image and a chat can keep its history.

Batched decoding is part of the protocol: `new_rows` gives `DecoderRows` whose rows advance
together, one shared decoder step per token, or None when the backend answers one at a time
(the torch reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DecoderState(Protocol):
    @property
    def length(self) -> int:
        """Number of positions held in the KV cache."""

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on."""


@runtime_checkable
class DecoderRows(Protocol):
    """Up to `rows` replies in slots 0..n-1, kept contiguous by the caller (`move`, `truncate`)."""

    rows: int

    def prefill(self, slot: int, input_ids: np.ndarray, image_features: np.ndarray | None = None) -> np.ndarray:
        """Start a reply in `slot` (at most n), as `Backend.forward` on a new state: its logits."""

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each of slots 0..n-1 (n = len(tokens)): logits [n, vocab]."""

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s cache into slot `dst`."""

    def truncate(self, n: int) -> None:
        """Keep slots 0..n-1."""


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnx" or "torch"
    dtype: str  # what was loaded, e.g. "fp32" or "vision=fp32,decoder=int8"

    def encode_images(self, pixel_values: np.ndarray, pixel_attention_mask: np.ndarray) -> np.ndarray:
        """[tiles, 3, T, T] float32 + [tiles, T, T] mask (int64 or bool) -> [tiles, tokens_per_tile, hidden].

        Tiles whose mask is all False (batch padding) must be dropped by the caller first.
        """

    def new_state(self) -> DecoderState:
        """An empty KV cache."""

    def forward(
        self, state: DecoderState, input_ids: np.ndarray, image_features: np.ndarray | None = None
    ) -> np.ndarray:
        """Append `input_ids` ([seq] int64) to `state` and return the last position's logits [vocab].

        `image_features` ([n_image_tokens, hidden]) replace the embeddings at the image-token
        positions of `input_ids`, in order.
        """

    def new_rows(self, rows: int) -> DecoderRows | None:
        """Empty rows for up to `rows` replies, or None without batched decoding."""
