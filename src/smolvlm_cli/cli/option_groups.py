"""The option groups most commands share, declared once: the model, sampling, tiling and video.

A command asks for a group with a parameter of the group's type (`model: ModelChoice`,
`options: GenerationOptions`, `tiling: TilingChoice`); `@option_groups` puts the group's options
in the signature typer reads, in that parameter's place, and calls the command with one
validated object. Nothing here imports numpy or onnxruntime (`smolvlm --help` stays fast).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import typer

from smolvlm_cli.cli.options import (
    DEFAULTS,
    BackendOpt,
    DetailOpt,
    DtypeOpt,
    EndOpt,
    FpsOpt,
    GraphsOpt,
    LongestEdgeOpt,
    MaxFramesOpt,
    MaxTokensOpt,
    ModelOpt,
    NoSplitOpt,
    RepetitionPenaltyOpt,
    SeedOpt,
    StartOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
)
from smolvlm_cli.hub import DEFAULT_MODEL
from smolvlm_cli.options import GenerationOptions, Tiling


@dataclass(frozen=True)
class ModelChoice:
    """Which model runs, and how: `-m`, `--backend`, `--dtype`, `--graphs`, `--threads`."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    dtype: Optional[str] = None
    graphs: str = "auto"
    threads: Optional[int] = None

    def load(self, quiet: bool = False, status=None):
        """The `SmolVLM`, loaded behind a spinner (see `cli.loading.load_model`)."""
        from smolvlm_cli.cli.loading import load_model

        return load_model(self.model, self.backend, self.dtype, self.threads, self.graphs, quiet, status)


@dataclass(frozen=True)
class TilingChoice:
    """How images are tiled: `--detail` (the simple knob) or `--longest-edge`/`--no-split`."""

    detail: Optional[str] = None
    longest_edge: Optional[int] = None
    no_split: bool = False

    def __post_init__(self):
        if self.detail is not None and (self.longest_edge is not None or self.no_split):
            raise typer.BadParameter(
                "give either --detail or --longest-edge/--no-split, not both", param_hint="'--detail'"
            )

    @property
    def chosen(self) -> bool:
        """Whether the user set any of them (else the model's own tiling applies)."""
        return self.detail is not None or self.longest_edge is not None or self.no_split

    def resolve(self, config: Callable[[], Any]) -> Tiling:
        """The library's `Tiling`; `config()` (the model's config) is asked for only when
        --detail needs it."""
        if self.detail is not None:
            return Tiling.for_detail(self.detail, config())
        return Tiling(self.longest_edge, False if self.no_split else None)


@dataclass(frozen=True)
class VideoChoice:
    """How videos are sampled: `--fps`, `--max-frames` (None: the model's video_sampling) and a
    segment, `--start` / `--end` (seconds)."""

    fps: Optional[float] = None
    max_frames: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None

    def __post_init__(self):
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise typer.BadParameter(
                f"--end ({self.end:g}) must come after --start ({self.start:g})", param_hint="'--end'"
            )

    @property
    def options(self) -> dict[str, Any]:
        """The ones given, as `open_video` keywords."""
        given = {"fps": self.fps, "max_frames": self.max_frames, "start": self.start, "end": self.end}
        return {k: v for k, v in given.items() if v is not None}

    def require_video(self, has_video: bool) -> None:
        """Video options without a video would be ignored: say so."""
        if self.options and not has_video:
            names = ", ".join(f"--{k.replace('_', '-')}" for k in self.options)
            raise typer.BadParameter(f"{names} apply to videos, and none was given")


def _keyword(name: str, alias: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias, default=default)


_GROUPS: dict[type, list[inspect.Parameter]] = {
    ModelChoice: [
        _keyword("model", ModelOpt, DEFAULT_MODEL),
        _keyword("backend", BackendOpt, "auto"),
        _keyword("dtype", DtypeOpt, None),
        _keyword("graphs", GraphsOpt, "auto"),
        _keyword("threads", ThreadsOpt, None),
    ],
    GenerationOptions: [
        _keyword(name, alias, getattr(DEFAULTS, name))
        for name, alias in (
            ("max_new_tokens", MaxTokensOpt),
            ("temperature", TemperatureOpt),
            ("top_k", TopKOpt),
            ("top_p", TopPOpt),
            ("repetition_penalty", RepetitionPenaltyOpt),
            ("seed", SeedOpt),
        )
    ],
    TilingChoice: [
        _keyword("detail", DetailOpt, None),
        _keyword("longest_edge", LongestEdgeOpt, None),
        _keyword("no_split", NoSplitOpt, False),
    ],
    VideoChoice: [
        _keyword("fps", FpsOpt, None),
        _keyword("max_frames", MaxFramesOpt, None),
        _keyword("start", StartOpt, None),
        _keyword("end", EndOpt, None),
    ],
}


def option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with each group parameter spread into its options for typer, and rebuilt as
    one object (validated) when typer calls it."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[inspect.Parameter]]] = {}
    for param in inspect.signature(command).parameters.values():
        kind = hints.get(param.name)
        if kind in _GROUPS:
            groups[param.name] = (kind, _GROUPS[kind])
            params.extend(_GROUPS[kind])
        else:  # typer calls by keyword: every parameter may be keyword-only, in any order
            params.append(
                param.replace(annotation=hints.get(param.name, param.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            )

    @functools.wraps(command)
    def run(**values):
        for name, (kind, members) in groups.items():
            values[name] = kind(**{p.name: values.pop(p.name) for p in members})
        return command(**values)

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}  # resolved, as typer reads them
    del run.__wrapped__  # typer must see this signature, not the command's
    return run
