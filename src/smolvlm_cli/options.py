"""Generation options: every knob of a run and its default, in one dataclass.

Kept free of numpy and onnxruntime so the CLI can show defaults in `--help` without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DEFAULT_PROMPT = "Describe this image in detail."
DEFAULT_VIDEO_PROMPT = "Describe this video in detail."


@dataclass(frozen=True)
class GenerationOptions:
    """Every generation knob in one place; the CLI and the library share these defaults."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    repetition_penalty: float = 1.0  # 1 disables
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # besides the model's eos
    ignore_eos: bool = False  # benchmarks force exactly max_new_tokens

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(self, **changes) -> GenerationOptions:
        """A copy with the given fields replaced; None values keep the current setting."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# -- image detail -------------------------------------------------------------------------------
# Like the OpenAI `detail` parameter: `auto` is the model's own preprocessing (captions equal
# transformers'), `low` one 512-px view, `high` a longer edge than the model's default, so more
# tiles. The factor is a trade-off: 1.5x turns the 256M model's 4x4 grid into at most 6x6.
DETAIL_LEVELS = ("low", "auto", "high")
HIGH_DETAIL_FACTOR = 1.5


def detail_tiling(detail: str, model_longest_edge: int, tile_size: int) -> tuple[int | None, bool | None]:
    """(longest_edge, split) for a detail level; None keeps the model's setting."""
    if detail == "low":
        return None, False
    if detail == "high":
        edge = int(model_longest_edge * HIGH_DETAIL_FACTOR)
        return -(-edge // tile_size) * tile_size, None  # whole tiles
    if detail == "auto":
        return None, None
    raise ValueError(f"detail must be one of {', '.join(DETAIL_LEVELS)}, not {detail!r}")
