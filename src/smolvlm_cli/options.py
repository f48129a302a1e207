"""Generation options: every knob of a run and its default, in one dataclass.

Kept free of numpy and onnxruntime so the CLI can show defaults in `--help` without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_PROMPT = "Describe this image in detail."
DEFAULT_VIDEO_PROMPT = "Describe this video in detail."


FLOAT32_MAX = 3.4028234663852886e38  # sampling runs in float32: larger factors overflow to inf


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
        if not 0 <= self.temperature <= FLOAT32_MAX:  # NaN and inf fail too
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 < self.repetition_penalty <= FLOAT32_MAX:
            raise ValueError("repetition_penalty must be a finite number > 0")

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


@dataclass(frozen=True)
class Tiling:
    """How images are cut into tiles: one value for the library, the CLI and the server.

    `longest_edge`: the longest side is resized to this many pixels before tiling (None: the
    model's, 2048 for the 256M/500M models). `split`: cut it into tiles (None: the model's
    setting; False: one downscaled view). `Tiling()` is the model's own preprocessing.
    """

    longest_edge: int | None = None
    split: bool | None = None

    @classmethod
    def for_detail(cls, detail: str, config: Any) -> Tiling:
        """A detail level's tiling (`low`, `auto`, `high`) for a model `config` (its
        `longest_edge` and `tile_size`)."""
        if detail == "low":
            return cls(split=False)
        if detail == "high":
            edge = int(config.longest_edge * HIGH_DETAIL_FACTOR)
            return cls(longest_edge=-(-edge // config.tile_size) * config.tile_size)  # whole tiles
        if detail == "auto":
            return cls()
        raise ValueError(f"detail must be one of {', '.join(DETAIL_LEVELS)}, not {detail!r}")

    @classmethod
    def of(cls, tiling: Tiling | str | None, config: Any) -> Tiling:
        """What the library's `tiling=` arguments take, as a `Tiling`: a `Tiling` as it is, a
        detail level (`"low"`, `"auto"`, `"high"`) for `config`, None for the model's own."""
        if tiling is None:
            return cls()
        if isinstance(tiling, str):
            return cls.for_detail(tiling.lower(), config)
        if not isinstance(tiling, Tiling):
            raise TypeError(f"tiling must be a Tiling, a detail level or None, not {type(tiling).__name__}: {tiling!r}")
        return tiling
