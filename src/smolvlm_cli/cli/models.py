"""Model management: `smolvlm download`, `smolvlm models`, `smolvlm inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.options import (BackendOpt, DetailOpt, DtypeOpt, JsonOpt, LongestEdgeOpt,
                                     ModelOpt, NoSplitOpt, check_tiling, tiling)
from smolvlm_cli.hub import CONFIG_FILES, DEFAULT_MODEL

SUPPORTED_TYPES = ("smolvlm", "idefics3")


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(download)
    app.command(name="models")(list_models)
    app.command(no_args_is_help=True)(inspect)


def download(
    model: Annotated[str, typer.Argument(help="Hub id, e.g. HuggingFaceTB/SmolVLM2-256M-Video-Instruct.")],
    dtype: DtypeOpt = None,
    backend: BackendOpt = "onnx",
) -> None:
    """Download only the files a dtype needs into the Hugging Face cache; print the folder."""
    from smolvlm_cli.hub import files_for, resolve_model

    status = output.Status()
    with status.show(f"Downloading {model}"):
        path = resolve_model(model, files_for("torch" if backend == "torch" else "onnx", dtype))
    output.write(f"{path}\n")


def _variants(snapshot: Path) -> dict[str, int]:
    """ONNX file -> bytes (with its external data), for one snapshot folder."""
    found = {}
    for graph in sorted((snapshot / "onnx").glob("*.onnx")):
        size = sum(f.stat().st_size for f in graph.parent.glob(graph.name + "*") if f.is_file())
        found[graph.name] = size
    return found


def list_models(json_out: JsonOpt = False) -> None:
    """List the SmolVLM models in the Hugging Face cache, with their ONNX variants and sizes."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        repos = []
    rows = []
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            snapshot = Path(revision.snapshot_path)
            try:
                model_type = json.loads((snapshot / "config.json").read_text()).get("model_type")
            except (OSError, ValueError):
                continue
            if model_type not in SUPPORTED_TYPES:
                continue
            rows.append({"model": repo.repo_id, "revision": revision.commit_hash[:12],
                         "path": str(snapshot), "size_bytes": revision.size_on_disk,
                         "onnx": _variants(snapshot)})
    if json_out:
        output.write_json(rows)
        return
    if not rows:
        output.log("No SmolVLM models in the cache. Try: smolvlm download " + DEFAULT_MODEL)
        return
    for row in rows:
        output.write(f"{row['model']}  ({row['revision']}, {_mb(row['size_bytes'])})\n")
        for name, size in row["onnx"].items():
            output.write(f"  onnx/{name}  {_mb(size)}\n")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def inspect(
    image: Annotated[str, typer.Argument(help="Image path or URL ('-' for stdin).")],
    model: ModelOpt = DEFAULT_MODEL,
    detail: DetailOpt = None,
    longest_edge: LongestEdgeOpt = None,
    no_split: NoSplitOpt = False,
    json_out: Annotated[bool, typer.Option(
        "--json", rich_help_panel="Output",
        help="Print one JSON object: size, grid, tiles, image tokens.")] = False,
) -> None:
    """Show how an image will be tiled and how many image tokens it costs (no weights needed)."""
    import sys

    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.hub import resolve_model
    from smolvlm_cli.image_processing import image_size, num_tiles, tile_grid

    check_tiling(detail, longest_edge, no_split)
    config = ModelConfig.from_dir(resolve_model(model, list(CONFIG_FILES)))
    if image == "-" and sys.stdin.isatty():
        raise typer.BadParameter("'-' reads image bytes from standard input, which is a "
                                 "terminal: pipe an image in (smolvlm inspect - < photo.jpg)")
    source = sys.stdin.buffer.read() if image == "-" else image
    width, height = image_size(source, name="<stdin>" if image == "-" else None)  # header only
    longest_edge, split = tiling(detail, longest_edge, no_split, lambda: config)
    rows, cols = tile_grid(width, height, config, longest_edge=longest_edge, split=split)
    tiles = num_tiles(rows, cols)
    info = {"image": image, "width": width, "height": height, "rows": rows, "cols": cols,
            "tiles": tiles, "tile_size": config.tile_size, "image_tokens": tiles * config.image_seq_len,
            "longest_edge": longest_edge or config.longest_edge,
            "split": config.do_image_splitting if split is None else split}
    if json_out:
        output.write_json(info)
        return
    grid = f"{rows} x {cols} tiles + 1 global" if rows * cols else "1 tile (not split)"
    output.write(f"{image}: {width}x{height} -> {grid} of {config.tile_size} px = "
                 f"{tiles} tile{'s' if tiles != 1 else ''}, {info['image_tokens']} image tokens\n")
