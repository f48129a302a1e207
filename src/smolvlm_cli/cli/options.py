"""Options shared by several commands, declared once as `Annotated` aliases.

Defaults come from `GenerationOptions` and `hub`, the single source of truth; nothing here
imports numpy or onnxruntime, so `smolvlm --help` stays fast.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Optional

import typer

from smolvlm_cli.backends import BACKENDS, GRAPH_SOURCES
from smolvlm_cli.dtypes import DEFAULT_DTYPE, parse_dtype
from smolvlm_cli.hub import MODEL_ENV
from smolvlm_cli.options import DETAIL_LEVELS, FLOAT32_MAX, GenerationOptions

_DEFAULTS = GenerationOptions()
_MODEL_PANEL = "Model"
_SAMPLING_PANEL = "Sampling"
_IMAGE_PANEL = "Image tiling (speed vs detail)"
_OUTPUT_PANEL = "Output"
_VIDEO_PANEL = "Video"


def _check_dtype(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            parse_dtype(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _check_top_p(value: float) -> float:
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]")
    return value


def _check_penalty(value: float) -> float:
    if not 0 < value <= FLOAT32_MAX:  # NaN and inf fail too
        raise typer.BadParameter(f"{value:g} is not a number in (0, {FLOAT32_MAX:.2g}]")
    return value


def _check_temperature(value: float) -> float:
    if not 0 <= value <= FLOAT32_MAX:
        raise typer.BadParameter(f"{value:g} is not a number in [0, {FLOAT32_MAX:.2g}]")
    return value


def _check_positive(name: str, value: Optional[float]) -> Optional[float]:
    if value is not None and not 0 < value < math.inf:  # NaN fails too
        raise typer.BadParameter(f"{value:g} is not a finite number above 0")
    return value


def _check_finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):  # `min` lets NaN and inf through
        raise typer.BadParameter(f"{value:g} is not a finite number")
    return value


def _check_graphs(value: str) -> str:
    value = value.lower()
    if value not in GRAPH_SOURCES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(GRAPH_SOURCES)}")
    return value


def _check_backend(value: str) -> str:
    value = value.lower()
    if value not in BACKENDS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(BACKENDS)}")
    return value


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar=MODEL_ENV,
        show_envvar=True,
        rich_help_panel=_MODEL_PANEL,
        help="Hub id or local directory (Hugging Face layout: config, tokenizer and safetensors "
        "weights, or ONNX graphs under onnx/).",
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        callback=_check_backend,
        rich_help_panel=_MODEL_PANEL,
        help="auto (ONNX when the model has the graphs, else torch), onnx or torch.",
    ),
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        callback=_check_dtype,
        rich_help_panel=_MODEL_PANEL,
        help=f"ONNX variant: fp32, fp16, int8, q4 (default {DEFAULT_DTYPE}), or per component, "
        "e.g. 'vision=fp32,decoder=int8'. The torch backend takes fp32, bf16 or fp16.",
    ),
]
GraphsOpt = Annotated[
    str,
    typer.Option(
        "--graphs",
        callback=_check_graphs,
        rich_help_panel=_MODEL_PANEL,
        help="Which ONNX graphs run: auto (our fast graphs, built once from the model's safetensors "
        "and cached; a folder from `smolvlm export` runs its own), build (always ours), or hub "
        "(the repo's own onnx/ graphs: a smaller download, slower).",
    ),
]


def _check_threads(value: Optional[int]) -> Optional[int]:
    """Far more threads than cores only slow ONNX Runtime down (5000 ran for minutes on 2 cores)."""
    limit = max(16, 4 * (os.cpu_count() or 1))
    if value is not None and value > limit:
        raise typer.BadParameter(f"{value} is more than {limit} (4 per core of this machine, and at least 16)")
    return value


ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        min=1,
        callback=_check_threads,
        rich_help_panel=_MODEL_PANEL,
        help="CPU threads (default: all cores).",
    ),
]

MaxTokensOpt = Annotated[
    int,
    typer.Option(
        "--max-new-tokens", "-n", min=1, rich_help_panel=_SAMPLING_PANEL, help="Stop after this many generated tokens."
    ),
]
TemperatureOpt = Annotated[
    float,
    typer.Option(
        "--temperature",
        "-t",
        min=0.0,
        callback=_check_temperature,  # min lets NaN through
        rich_help_panel=_SAMPLING_PANEL,
        help="0 is greedy (deterministic); higher samples more freely.",
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", min=0, rich_help_panel=_SAMPLING_PANEL, help="Sample among the k likeliest (0: off).")
]
TopPOpt = Annotated[
    float,
    typer.Option(
        "--top-p", callback=_check_top_p, rich_help_panel=_SAMPLING_PANEL, help="Nucleus sampling mass (1: off)."
    ),
]
RepetitionPenaltyOpt = Annotated[
    float,
    typer.Option(
        "--repetition-penalty",
        callback=_check_penalty,
        rich_help_panel=_SAMPLING_PANEL,
        help="Above 1 discourages repeating tokens (1: off).",
    ),
]
SeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", rich_help_panel=_SAMPLING_PANEL, help="Seed for sampling: same seed, same text."),
]


def _check_detail(value: Optional[str]) -> Optional[str]:
    if value is not None and value.lower() not in DETAIL_LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DETAIL_LEVELS)}")
    return value.lower() if value else value


# Measured figures (README: Performance, where this VM's own table is): the 256M model, int8,
# on the 2-core AVX2 laptop of issue #19.
DETAIL_HELP = (
    "How closely to look, the main speed knob. low: one 512-px view; auto: the model's "
    "own tiling, as transformers does it (any 4:3 photo, even a thumbnail: 13 "
    "tiles; a square one 17); high: a 1.5x longer edge, up to 37 tiles, for small "
    "print. Measured with the 256M model (int8) on a 2-core AVX2 laptop: auto 13.8 s "
    "to the first token and 3.3 images/min in batch, low 43-48 images/min."
)
DetailOpt = Annotated[
    Optional[str],
    typer.Option(
        "--detail",
        metavar="low|auto|high",
        callback=_check_detail,
        show_default="auto",
        rich_help_panel=_IMAGE_PANEL,
        help=DETAIL_HELP,
    ),
]
LongestEdgeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--longest-edge",
        min=1,
        rich_help_panel=_IMAGE_PANEL,
        help="Fine control instead of --detail: resize the image so its longest side is this many "
        "pixels before tiling (model default 2048; 512 gives a single tile).",
    ),
]
NoSplitOpt = Annotated[
    bool,
    typer.Option(
        "--no-split", rich_help_panel=_IMAGE_PANEL, help="Do not cut the image into tiles (the same as --detail low)."
    ),
]
SystemOpt = Annotated[
    Optional[str],
    typer.Option(
        "--system",
        "-s",
        metavar="PROMPT",
        help="A system prompt: instructions that frame every answer (e.g. 'Answer in French.').",
    ),
]

FpsOpt = Annotated[
    Optional[float],
    typer.Option(
        "--fps",
        callback=lambda v: _check_positive("--fps", v),
        rich_help_panel=_VIDEO_PANEL,
        show_default="the model's, 1",
        help="Frames per second to show the model from a video (default: the model's video_sampling).",
    ),
]
MaxFramesOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-frames",
        min=1,
        rich_help_panel=_VIDEO_PANEL,
        show_default="the model's, 64",
        help="At most this many frames of a video; each is one tile through the vision encoder and 77 "
        "prompt tokens with the 256M/500M models (64 frames: 4,960 of their 8,192).",
    ),
]
StartOpt = Annotated[
    Optional[float],
    typer.Option(
        "--start",
        min=0.0,
        callback=_check_finite,
        metavar="SECONDS",
        rich_help_panel=_VIDEO_PANEL,
        help="Take a video from this time on (seconds); sampled as if the clip began there.",
    ),
]
EndOpt = Annotated[
    Optional[float],
    typer.Option(
        "--end",
        callback=lambda v: _check_positive("--end", v),
        metavar="SECONDS",
        rich_help_panel=_VIDEO_PANEL,
        help="Take a video up to this time (seconds).",
    ),
]


JsonOpt = Annotated[bool, typer.Option("--json", rich_help_panel=_OUTPUT_PANEL, help="Print JSON instead of text.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", rich_help_panel=_OUTPUT_PANEL, help="No status or progress on stderr.")
]
# `ask` uses -q for its questions.
QuietLongOpt = Annotated[
    bool, typer.Option("--quiet", rich_help_panel=_OUTPUT_PANEL, help="No status or progress on stderr.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", rich_help_panel=_OUTPUT_PANEL, help="Timings and details on stderr.")
]

DEFAULTS = _DEFAULTS
