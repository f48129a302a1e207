"""Model management: `smolvlm download`, `smolvlm models`, `smolvlm inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.option_groups import TilingChoice, VideoChoice, option_groups
from smolvlm_cli.cli.options import BackendOpt, DtypeOpt, GraphsOpt, JsonOpt, ModelOpt, QuietOpt
from smolvlm_cli.config import SUPPORTED_MODEL_TYPES
from smolvlm_cli.hub import CONFIG_FILES, DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(download)
    app.command(name="models")(list_models)
    app.command(no_args_is_help=True)(inspect)


def download(
    model: Annotated[str, typer.Argument(help="Hub id, e.g. HuggingFaceTB/SmolVLM2-256M-Video-Instruct.")],
    dtype: DtypeOpt = None,
    backend: BackendOpt = "onnx",
    graphs: GraphsOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Download what a run needs and build its fast graphs, so later runs work offline.

    Prints the downloaded folder.
    """
    from smolvlm_cli.backends.select import select_backend
    from smolvlm_cli.cli.loading import BuildProgress

    status = output.Status(quiet)
    with status.show(f"Downloading {model}"):
        chosen = select_backend(
            model,
            backend,
            dtype,
            graphs,
            progress=BuildProgress(status, model, quiet),
            notice=output.notices(quiet),
        )
    if not quiet and chosen.graphs_dir is not None and chosen.graphs_dir != chosen.model_dir:
        output.log(f"Graphs: {chosen.graphs_dir / 'onnx'}")
    output.write(f"{chosen.model_dir}\n")


def _variants(snapshot: Path) -> dict[str, int]:
    """ONNX file -> bytes (with its external data), for one snapshot folder."""
    found = {}
    for graph in sorted((snapshot / "onnx").glob("*.onnx")):
        size = sum(f.stat().st_size for f in graph.parent.glob(graph.name + "*") if f.is_file())
        found[graph.name] = size
    return found


def _hub_rows() -> list[dict]:
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
            if model_type not in SUPPORTED_MODEL_TYPES:
                continue
            weights = sum(f.stat().st_size for f in snapshot.glob("*.safetensors") if f.is_file())
            rows.append(
                {
                    "model": repo.repo_id,
                    "revision": revision.commit_hash[:12],
                    "path": str(snapshot),
                    "size_bytes": revision.size_on_disk,
                    "weights_bytes": weights,
                    "onnx": _variants(snapshot),
                    "built": [],
                }
            )
    return rows


def list_models(json_out: JsonOpt = False) -> None:
    """List the downloaded SmolVLM models and the graphs built from them, with sizes.

    Models come from the Hugging Face cache, graphs from ours.
    """
    from smolvlm_cli.builder.cache import built_entries, graphs_root

    rows = _hub_rows()
    by_model = {row["model"]: row for row in rows}
    for entry in built_entries():
        row = by_model.get(entry["model"])
        if row is None:  # built from a local folder: one row per folder (two may share a name)
            key = (entry["model"], entry.get("source"))
            row = by_model.get(key)
        if row is None:
            row = by_model[key] = {
                "model": entry["model"],
                "revision": None,
                "path": entry.get("source"),
                "size_bytes": 0,
                "weights_bytes": 0,
                "onnx": {},
                "built": [],
            }
            rows.append(row)
        row["built"].append(entry)
    if json_out:
        output.write_json(rows)
        return
    if not rows:
        output.log("No SmolVLM models in the cache. Try: smolvlm download " + DEFAULT_MODEL)
        return
    for row in rows:
        head = f"{row['model']}"
        if row["revision"]:
            head += f"  ({row['revision']}, {_mb(row['size_bytes'])} downloaded)"
        output.write(head + "\n")
        if row["weights_bytes"]:
            output.write(f"  safetensors  {_mb(row['weights_bytes'])}\n")
        for name, size in row["onnx"].items():
            output.write(f"  onnx/{name}  {_mb(size)}\n")
        for entry in row["built"]:
            graphs = ", ".join(entry["graphs"]) or "none finished"
            output.write(f"  built: {graphs}  ({_mb(entry['bytes'])} in {entry['path']})\n")
    output.log(
        f"Built graphs live in {graphs_root()} (delete a folder there to reclaim its space; it is rebuilt when needed)."
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@option_groups
def inspect(
    image: Annotated[
        str, typer.Argument(metavar="IMAGE|VIDEO", help="Image path or URL ('-' for stdin), or a video file.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    tiling: TilingChoice = TilingChoice(),
    video: VideoChoice = VideoChoice(),
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            rich_help_panel="Output",
            help="Print one JSON object: size, grid, tiles, image tokens (a video: its duration, the "
            "frames sampled, their timestamps, the prompt tokens).",
        ),
    ] = False,
) -> None:
    """Show how an image is tiled or which video frames are seen, and the tokens (no weights).

    Images: the resize, the tile grid and the image tokens; videos: the sampled frames, their timestamps and the prompt tokens.
    """
    import sys

    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.hub import resolve_model
    from smolvlm_cli.image_processing import image_size, num_tiles, tile_grid
    from smolvlm_cli.video import is_video_path

    video.require_video(is_video_path(image))
    if is_video_path(image):
        from smolvlm_cli.cli.media import probe_videos

        probed = probe_videos([image])[image]  # a bad file fails before the model's files are fetched
        _inspect_video(image, resolve_model(model, list(CONFIG_FILES)), probed, video.options, json_out)
        return
    config = ModelConfig.from_dir(resolve_model(model, list(CONFIG_FILES)))
    if image == "-" and sys.stdin.isatty():
        raise typer.BadParameter(
            "'-' reads image bytes from standard input, which is a "
            "terminal: pipe an image in (smolvlm inspect - < photo.jpg)"
        )
    source = sys.stdin.buffer.read() if image == "-" else image
    width, height = image_size(source, name="<stdin>" if image == "-" else None)  # header only
    chosen = tiling.resolve(lambda: config)
    longest_edge, split = chosen.longest_edge, chosen.split
    rows, cols = tile_grid(width, height, config, longest_edge=longest_edge, split=split)
    tiles = num_tiles(rows, cols)
    info = {
        "image": image,
        "width": width,
        "height": height,
        "rows": rows,
        "cols": cols,
        "tiles": tiles,
        "tile_size": config.tile_size,
        "image_tokens": tiles * config.image_seq_len,
        "longest_edge": longest_edge or config.longest_edge,
        "split": config.do_image_splitting if split is None else split,
    }
    if json_out:
        output.write_json(info)
        return
    grid = f"{rows} x {cols} tiles + 1 global" if rows * cols else "1 tile (not split)"
    output.write(
        f"{image}: {width}x{height} -> {grid} of {config.tile_size} px = "
        f"{tiles} tile{'s' if tiles != 1 else ''}, {info['image_tokens']} image tokens\n"
    )


def _inspect_video(path: str, model_dir, probed, options: dict, json_out: bool) -> None:
    from smolvlm_cli.options import DEFAULT_VIDEO_PROMPT
    from smolvlm_cli.processor import Processor
    from smolvlm_cli.prompt import build_messages
    from smolvlm_cli.video.clip import open_video
    from smolvlm_cli.video.sampling import duration_text, frame_header

    processor = Processor.from_pretrained(model_dir)
    config = processor.config
    video = open_video(path, config, probed=probed, **options)
    # the exact prompt of `describe CLIP`: the chat template, the default video prompt, and the
    # video's intro, each frame's timestamp line, markers and image tokens
    messages = build_messages(DEFAULT_VIDEO_PROMPT, ["video"])
    tokens = len(processor.prompt_ids(messages, grids=[], videos=[video]))
    info = {
        **video.as_dict(),
        "tile_size": config.tile_size,
        "image_tokens": video.num_frames * config.image_seq_len,
        "prompt_tokens": tokens,
        "context": config.max_position_embeddings,
    }
    if json_out:
        output.write_json(info)
        return
    segment = ""
    if video.start is not None or video.end is not None:
        end = video.end if video.end is not None else (video.start or 0) + video.duration
        segment = f", segment {video.start or 0:g}-{end:g} s"
    stamps = " ".join(frame_header(t).strip()[len("Frame from ") : -1] for t in video.times)
    output.write(
        f"{path}: {video.info.width}x{video.info.height}, {video.info.fps:g} fps, "
        f"{video.info.total_frames} frames, {duration_text(video.duration)}{segment}\n"
        f"sampling {video.fps:g} fps, at most {video.max_frames} frames -> {video.num_frames} "
        f"frame{'s' if video.num_frames != 1 else ''} of {config.tile_size} px: "
        f"{tokens} prompt tokens (with the default prompt) of the model's {config.max_position_embeddings}\n"
        f"frames: {' '.join(map(str, video.numbers))}\n"
        f"at: {stamps}\n"
    )
