"""`smolvlm export`: a SmolVLM checkpoint -> ONNX graphs in the Hub's `onnx/` layout.

Our graph styles by default (fused GroupQueryAttention decoder, fused vision attention: the fast
path of the ONNX backend); `--decoder-style official --vision-style plain` writes exactly the
contract of Hugging Face's own exports. Needs the `export` extra (torch, transformers, onnx).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli.output import files_table, log
from smolvlm_cli.errors import BackendUnavailableError, ModelNotFoundError, SmolVLMError
from smolvlm_cli.export.onnx_export import DEFAULT_DECODER_STYLE, DEFAULT_VISION_STYLE  # torch-free

DEFAULT_EXPORT_DTYPES = "fp32,int8"  # the exact variant and the runtime's default


class DecoderStyle(str, Enum):
    gqa = "gqa"
    official = "official"


class VisionStyle(str, Enum):
    fused = "fused"
    plain = "plain"


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(export)


def export(
    model: Annotated[str, typer.Argument(
        help="Hub id or local checkpoint directory (config, tokenizer and safetensors weights).")],
    out_dir: Annotated[Path, typer.Argument(
        help="Output folder: the model's config/tokenizer files and onnx/*.onnx.")],
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Comma-separated variants among fp32, fp16, int8, q4.")] = DEFAULT_EXPORT_DTYPES,
    check: Annotated[bool, typer.Option(
        "--check/--no-check", help="Check the fp32 graphs against transformers in ONNX Runtime.")] = True,
    decoder_style: Annotated[DecoderStyle, typer.Option(
        "--decoder-style", help="gqa: fused GroupQueryAttention decoder with shared KV buffers "
                                "(fast); official: the Hub's contract.")] = DecoderStyle(DEFAULT_DECODER_STYLE),
    vision_style: Annotated[VisionStyle, typer.Option(
        "--vision-style", help="fused: MultiHeadAttention and fused GELU (fast); plain: standard "
                               "operators.")] = VisionStyle(DEFAULT_VISION_STYLE),
    last_logits: Annotated[Optional[bool], typer.Option(
        "--last-logits/--all-logits", show_default=False,
        help="Whether the decoder returns only the last position's logits (default: yes for gqa, "
             "no for official).")] = None,
) -> None:
    """Export a SmolVLM checkpoint to ONNX (the fast graph styles by default); print the folder."""
    from smolvlm_cli.dtypes import EXPORT_DTYPES
    from smolvlm_cli.hub import is_local

    wanted = [d.strip().lower() for d in dtype.split(",") if d.strip()]
    bad = [d for d in wanted if d not in EXPORT_DTYPES]
    if bad or not wanted:
        raise SmolVLMError(f"unknown dtype {bad[0]!r}" if bad else "no dtype given",
                           hint=f"choose from {', '.join(EXPORT_DTYPES)}")
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") != 1
    if looks_local and not is_local(model):
        raise ModelNotFoundError(f"model directory {model} not found" if not path.exists()
                                 else f"{model} is not a directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise SmolVLMError(f"{out_dir} exists and is not a directory")
    try:
        import onnx  # noqa: F401 - with torch and transformers, what the exporter needs
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from smolvlm_cli.export.onnx_export import data_files, export_onnx
    except ImportError as exc:
        raise BackendUnavailableError(f"the exporter needs torch, transformers and onnx ({exc})",
                                      hint="pip install 'smolvlm-cli[export]'") from None

    try:
        result = export_onnx(model, out_dir, dtypes=tuple(wanted), check=check, log=log,
                             decoder_style=decoder_style.value, vision_style=vision_style.value,
                             last_logits=last_logits)
    except ValueError as exc:
        raise SmolVLMError(str(exc)) from None
    out = Path(result["out_dir"])
    graphs = [out / rel for rel in result["files"]]
    graphs += [extra for graph in graphs for extra in data_files(graph)]
    timings = result["timings"]
    shown = {graph.name for graph in graphs}
    steps = ", ".join(f"{step} {s:.1f} s" for step, s in timings.items() if step not in shown)
    log(files_table(out, graphs, result["seconds"], timings, what="export done")
        + (f"\n({steps})" if steps else ""))
    print(out)
