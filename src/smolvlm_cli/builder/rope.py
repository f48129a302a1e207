"""Rotary embedding tables for GroupQueryAttention, computed as transformers computes them.

transformers makes `inv_freq` and the angles in float32 (`base ** (arange(0, d, 2) / d)`, then
an outer product with the positions); doing the same float32 steps here keeps the tables within
an ulp of its own, which matters at long positions where a float64 angle would differ by 1e-4.
"""

from __future__ import annotations

import math

import numpy as np

from smolvlm_cli.builder.architecture import Rope


def inverse_frequencies(rope: Rope, head_dim: int) -> np.ndarray:
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (
        np.float32(1.0) / np.power(np.float64(rope.theta), exponents.astype(np.float64)).astype(np.float32)
    ).astype(np.float32)
    if rope.type == "linear":
        inv_freq = (inv_freq / np.float32(rope.params["factor"])).astype(np.float32)
    elif rope.type == "llama3":
        inv_freq = _llama3(inv_freq, rope.params)
    # "dynamic" (NTK) equals the default table up to max_position_embeddings, our cache's length
    return inv_freq


def _llama3(inv_freq: np.ndarray, p: dict) -> np.ndarray:
    f32 = np.float32
    factor, low, high = f32(p["factor"]), f32(p["low_freq_factor"]), f32(p["high_freq_factor"])
    old_len = f32(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(f32)
    smooth = ((old_len / wavelen - low) / (high - low)).astype(f32)
    smoothed = ((f32(1) - smooth) * scaled / factor + smooth * scaled).astype(f32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)


def rotary_tables(rope: Rope, head_dim: int, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_positions, head_dim / 2] float32 (GroupQueryAttention's cache layout)."""
    inv_freq = inverse_frequencies(rope, head_dim)
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32
    angles = angles.astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
