"""The server's limits and defaults: one dataclass, read by `smolvlm serve`'s options and the app.

No third-party imports, so `smolvlm serve --help` shows the defaults without loading starlette.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from smolvlm_cli.options import Tiling

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing the model is a decision (--host 0.0.0.0)
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ServerSettings:
    """What a server accepts and how much of it; the CLI's defaults come from here."""

    model_id: str = ""  # the name clients send as `model` (and /v1/models lists)
    api_keys: tuple[str, ...] = ()  # empty: no key needed
    max_batch: int = 8  # replies decoded together (rows of the batched decoder)
    max_queue: int = 32  # requests waiting for a row; one more gets 503 at once
    max_image_bytes: int = 10_000_000  # per image, whatever its source (data URI, URL, file)
    max_video_bytes: int = 100_000_000  # per video (`video_url` parts)
    max_images: int = 10  # per request
    max_request_tokens: int | None = None  # prompt + completion; None: the model's context
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    # a request's whole body, then 408: a client that never finishes it would hold its slot
    body_timeout_s: float = 60.0
    local_root: Path | None = None  # images given as paths / file:// URLs only below this folder
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # images' tiling when a request gives no `image_url.detail` (default: the model's own)
    tiling: Tiling = Tiling()
    feature_cache_tiles: int = 256  # vision features kept by tile content (~150 KB each, 256M)

    def __post_init__(self):
        for name in ("max_batch", "max_image_bytes", "max_video_bytes", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_queue < 0 or self.feature_cache_tiles < 0:
            raise ValueError("max_queue and feature_cache_tiles must be >= 0")
        if self.max_request_tokens is not None and self.max_request_tokens < 2:
            raise ValueError("max_request_tokens must be at least 2")
        if not self.body_timeout_s > 0:
            raise ValueError("body_timeout_s must be more than 0")

    @property
    def max_body_bytes(self) -> int:
        """A request body's cap: every image and one video as base64 (4/3), plus 1 MB of text."""
        return (self.max_images * self.max_image_bytes + self.max_video_bytes) * 4 // 3 + 1_000_000
