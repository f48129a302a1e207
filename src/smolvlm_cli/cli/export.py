"""`smolvlm export`: a SmolVLM checkpoint -> a model folder with our fast ONNX graphs.

The graphs are built from the checkpoint's safetensors with numpy and onnx alone (no torch): the
same graphs every run builds into its cache by default, written here into a folder you can copy,
upload or point `-m` at. `--check` holds them against transformers (the `export` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smolvlm_cli.cli.output import Status, files_table, log
from smolvlm_cli.cli.options import QuietOpt
from smolvlm_cli.errors import BackendUnavailableError, ModelNotFoundError, SmolVLMError
from smolvlm_cli.extras import install_command

DEFAULT_EXPORT_DTYPES = "fp32,int8"  # the exact variant and the runtime's default


def _check_dtypes(value: str) -> str:
    """A bad --dtype is a usage error (exit 2), as for the other commands."""
    from smolvlm_cli.export.onnx_export import parse_dtypes

    try:
        parse_dtypes(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(export)


def export(
    model: Annotated[
        str, typer.Argument(help="Hub id or local checkpoint directory (config, tokenizer and safetensors weights).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Output folder: the model's config/tokenizer files and onnx/*.onnx.")],
    dtype: Annotated[
        str,
        typer.Option("--dtype", callback=_check_dtypes, help="Comma-separated variants among fp32, fp16, int8, q4."),
    ] = DEFAULT_EXPORT_DTYPES,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also hold the fp32 graphs against transformers in ONNX Runtime (needs "
            "the export extra: torch and transformers).",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Build our fast ONNX graphs from a checkpoint (no torch needed); print the folder."""
    from smolvlm_cli.builder.layout import data_files
    from smolvlm_cli.cli.loading import BuildProgress
    from smolvlm_cli.export.onnx_export import export_onnx, parse_dtypes
    from smolvlm_cli.hub import is_local

    dtypes = parse_dtypes(dtype)  # checked by _check_dtypes
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") != 1
    if looks_local and not is_local(model):
        raise ModelNotFoundError(
            f"model directory {model} not found" if not path.exists() else f"{model} is not a directory"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise SmolVLMError(f"{out_dir} exists and is not a directory")
    if check:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                f"--check needs torch and transformers ({exc})",
                hint=f"{install_command('export')}, or export without --check",
            ) from None

    status = Status(quiet)
    result = export_onnx(
        model,
        out_dir,
        dtypes=dtypes,
        check=check,
        log=(lambda _m: None) if quiet else log,
        progress=BuildProgress(status, model, quiet, announce="Building ONNX graphs from {model}..."),
    )
    out = Path(result["out_dir"])
    graphs = [out / rel for rel in result["files"]]
    graphs += [extra for graph in graphs for extra in data_files(graph)]
    if not quiet:
        log(files_table(out, graphs, result["seconds"], what="export done"))
    print(out)
