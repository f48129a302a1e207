"""Generation options: every knob of a run and its default, in one dataclass.

Kept free of numpy and onnxruntime so the CLI can show defaults in `--help` without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DEFAULT_PROMPT = "Describe this image in detail."


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
