"""`smolvlm batch PATH...`: caption many images, resumable, one model load."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.batch_checks import check_inputs, extensions, resolve_format
from smolvlm_cli.cli.option_groups import ModelChoice, TilingChoice, VideoChoice, option_groups
from smolvlm_cli.cli.options import DEFAULTS, QuietOpt, VerboseOpt
from smolvlm_cli.batch.discover import DEFAULT_EXTENSIONS
from smolvlm_cli.formats import VIDEO_EXTENSIONS
from smolvlm_cli.options import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT, GenerationOptions

_INPUT = "Input"
_OUTPUT = "Output"
_RUN = "Batch run"
_ENGINES = ("local", "ray")
_RAY = "Ray engine (pip install 'smolvlm-cli\\[ray]')"  # \\[ keeps rich from reading [ray] as markup

EXAMPLES = """Examples:\n\n
smolvlm batch photos/   (photos/a.jpg -> photos/a.txt, and so on; re-run to resume)\n\n
smolvlm batch photos/ --prefix 'ohwx,' --detail low -n 60   (training captions, a trigger word)\n\n
smolvlm batch photos/ -o captions.jsonl   (one JSON record per image)\n\n
find . -name '*.png' -mtime -1 | smolvlm batch - -o - | jq -r .caption\n\n
smolvlm batch photos/ -o captions.csv -p 'Describe {filename} in one sentence.'"""

EPILOG = (
    EXAMPLES
    + """\n\n
Re-running skips images that already have a result (--overwrite redoes all, --retry-errors the
failures). A re-run with another prompt or model is refused while results made with the old
one exist: --overwrite redoes them, --resume-any keeps them.
Failures of txt runs are listed in .smolvlm-batch.jsonl beside the sidecars.\n\n
Exit code 0 when every image has a caption, 1 when some failed, 130/143 when stopped by Ctrl-C /
SIGTERM (the images in flight are finished and saved first)."""
)


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True, epilog=EPILOG)(batch)


def _config_at_hand(model: str):
    """The model's config from a local folder or the Hub cache, never the network (a first
    run downloads the model when it loads); None when not at hand."""
    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.hub import CONFIG_FILES, is_local

    try:
        if is_local(model):
            return ModelConfig.from_dir(Path(model).expanduser())
        from huggingface_hub import snapshot_download

        return ModelConfig.from_dir(
            Path(snapshot_download(model, allow_patterns=list(CONFIG_FILES), local_files_only=True))
        )
    except Exception:  # noqa: BLE001 - no estimate then; the model load reports real problems
        return None


@option_groups
def batch(
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="PATH...",
            show_default=False,
            help="Folders (walked recursively), image files, or '-' for a list of paths on stdin "
            "(one per line, e.g. from find). Optional with --manifest.",
        ),
    ] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            "-p",
            show_default=False,
            help=f"The instruction for every image; {{filename}}, {{stem}} and {{parent}} "
            f"are replaced per image. Default: '{DEFAULT_PROMPT}', and for videos "
            f"'{DEFAULT_VIDEO_PROMPT}'.",
        ),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive/--no-recursive", rich_help_panel=_INPUT, help="Walk into subfolders (hidden ones are skipped)."
        ),
    ] = True,
    include: Annotated[
        Optional[list[str]],
        typer.Option(
            "--include",
            rich_help_panel=_INPUT,
            show_default=False,
            help="Only files matching this glob (repeatable; among the --ext extensions). Without "
            "'/' it matches a file or folder name ('*.png'), with '/' the path under the folder "
            "given ('2024/**'). Case-insensitive.",
        ),
    ] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude",
            rich_help_panel=_INPUT,
            show_default=False,
            help="Skip files (and folders) matching this glob (repeatable).",
        ),
    ] = None,
    ext: Annotated[
        Optional[list[str]],
        typer.Option(
            "--ext",
            rich_help_panel=_INPUT,
            show_default=False,
            help=f"Image and video extensions to pick up, comma-separated or repeated (default "
            f"{', '.join(DEFAULT_EXTENSIONS)}, and {', '.join(VIDEO_EXTENSIONS)} when video "
            "support is installed; any case). Files named on the command line are always taken.",
        ),
    ] = None,
    null: Annotated[
        bool,
        typer.Option("--null", "-0", rich_help_panel=_INPUT, help="Paths on stdin are NUL-separated (find -print0)."),
    ] = False,
    fmt: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            "-f",
            rich_help_panel=_OUTPUT,
            show_default=False,
            help="txt (a sidecar per image: photo.jpg -> photo.txt), jsonl, csv, or parquet (a folder; "
            "--engine ray only). Default: from --output's extension, else txt.",
        ),
    ] = None,
    out: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            "-o",
            rich_help_panel=_OUTPUT,
            show_default=False,
            help="The jsonl/csv file ('-' for stdout; default captions.FORMAT under --output-dir, "
            "else stdout). Appended to, so an interrupted run resumes.",
        ),
    ] = None,
    output_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--output-dir",
            "-d",
            rich_help_panel=_OUTPUT,
            show_default=False,
            file_okay=False,
            help="Write the sidecars here, mirroring the input folders, instead of next to the images.",
        ),
    ] = None,
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix",
            rich_help_panel=_OUTPUT,
            help="Text put before every caption (a trigger word); templates as in --prompt.",
        ),
    ] = "",
    suffix: Annotated[
        str, typer.Option("--suffix", rich_help_panel=_OUTPUT, help="Text put after every caption.")
    ] = "",
    single_line: Annotated[
        bool,
        typer.Option(
            "--single-line",
            rich_help_panel=_OUTPUT,
            help="Join the caption's lines into one (for tools that read only the first line).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", rich_help_panel=_RUN, help="Caption every image again, even those with a result."),
    ] = False,
    retry_errors: Annotated[
        bool,
        typer.Option(
            "--retry-errors", rich_help_panel=_RUN, help="Caption again the images that failed in an earlier run."
        ),
    ] = False,
    resume_any: Annotated[
        bool,
        typer.Option(
            "--resume-any",
            rich_help_panel=_RUN,
            help="Keep earlier results even when they were made with another prompt or model "
            "(by default such a re-run is refused).",
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            rich_help_panel=_RUN,
            help="Images decoded together: each decoder step serves them all (8: up to ~2x the "
            "images/min on a CPU), a finished image's place goes to the next one. With int8 "
            "graphs a caption may differ slightly from its -b 1 version.",
        ),
    ] = 1,
    prefetch: Annotated[
        int,
        typer.Option(
            "--prefetch-threads",
            min=1,
            rich_help_panel=_RUN,
            help="Threads decoding and preprocessing the next images during inference.",
        ),
    ] = 2,
    engine_name: Annotated[
        str,
        typer.Option(
            "--engine",
            rich_help_panel=_RAY,
            help="local (this machine) or ray (a Ray Data pipeline: a local Ray, or --ray-address).",
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            rich_help_panel=_RAY,
            help="Join this Ray cluster ('auto' on a cluster node); default: RAY_ADDRESS or a new local Ray.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, rich_help_panel=_RAY, help="Captioning actors, each with its own model.")
    ] = 1,
    threads_per_worker: Annotated[
        Optional[int],
        typer.Option(
            "--threads-per-worker",
            min=1,
            rich_help_panel=_RAY,
            help="ONNX Runtime threads per actor (default: --threads, else CPUs / workers).",
        ),
    ] = None,
    manifest: Annotated[
        Optional[str],
        typer.Option(
            "--manifest", rich_help_panel=_RAY, help="A JSONL or Parquet file listing image paths (ray engine)."
        ),
    ] = None,
    model: ModelChoice = ModelChoice(),
    options: GenerationOptions = DEFAULTS,
    tiling: TilingChoice = TilingChoice(),
    video: VideoChoice = VideoChoice(),
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Caption many images and videos: sidecar .txt files, JSONL or CSV; resumable, one model load."""
    from smolvlm_cli.batch.discover import STDIN
    from smolvlm_cli.batch.progress import Reporter
    from smolvlm_cli.batch.runner import BatchConfig, run_batch
    from smolvlm_cli.batch.templates import CaptionStyle, unknown_fields

    paths = list(paths or [])
    check_inputs(paths, manifest, null, overwrite, retry_errors, resume_any)
    fmt, target = resolve_format(fmt, out, output_dir)
    reporter = Reporter(quiet=quiet, verbose=verbose)
    if prompt is not None and not prompt.strip():
        raise typer.BadParameter(
            "the prompt is empty: give some text, or leave it out for the default prompts", param_hint="'--prompt'"
        )
    for text in (prompt or "", prefix, suffix):
        for name in unknown_fields(text):
            reporter.warn(
                f"{{{name}}} is not a template field (use {{filename}}, {{stem}} or {{parent}}); it stays as written"
            )
    config = BatchConfig(
        inputs=paths,
        prompt=prompt,
        recursive=recursive,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        extensions=extensions(ext),
        null=null,
        fmt=fmt,
        output=target,
        output_dir=output_dir,
        style=CaptionStyle(prefix, suffix, single_line),
        overwrite=overwrite,
        retry_errors=retry_errors,
        resume_any=resume_any,
        model=model.model,
    )

    def engine():
        from smolvlm_cli.batch.local import LocalEngine

        vlm = model.load(quiet)
        return LocalEngine(
            vlm,
            options,
            model_name=model.model,
            batch_size=batch_size,
            workers=prefetch,
            tiling=tiling.resolve(lambda: vlm.config),
            video_options=video.options,
        )

    def advise(items) -> Optional[str]:
        """The slow-default warning, for runs that left the tiling to the model."""
        if tiling.chosen:
            return None
        from smolvlm_cli.batch.estimate import slow_run_line

        config = _config_at_hand(model.model)
        return slow_run_line(items, config) if config is not None else None

    engine_name = engine_name.lower()
    if engine_name not in _ENGINES:
        raise typer.BadParameter(f"{engine_name!r} is not one of {', '.join(_ENGINES)}", param_hint="'--engine'")
    if engine_name != "ray" and (workers != 1 or threads_per_worker is not None):
        raise typer.BadParameter(
            "--workers and --threads-per-worker are for --engine ray (the "
            "local engine's knobs are --threads and --prefetch-threads)",
            param_hint="'--engine'",
        )
    if engine_name == "ray":
        from smolvlm_cli.batch.ray_engine import RaySettings, run_ray

        from smolvlm_cli.config import ModelConfig
        from smolvlm_cli.hub import CONFIG_FILES, resolve_model

        settings = RaySettings(
            model=model.model,
            options=options,
            backend=model.backend,
            dtype=model.dtype,
            batch_size=batch_size,
            address=ray_address,
            tiling=tiling.resolve(lambda: ModelConfig.from_dir(resolve_model(model.model, list(CONFIG_FILES)))),
            workers=workers,
            threads_per_worker=threads_per_worker or model.threads,
            manifest=manifest,
            video_options=video.options,
        )
        summary = run_ray(
            config, settings, reporter=reporter, stdin=sys.stdin if STDIN in paths else None, out=output.write
        )
        if summary.exit_code:
            raise typer.Exit(summary.exit_code)
        return
    if fmt == "parquet" or manifest or ray_address:
        raise typer.BadParameter(
            "--format parquet, --manifest and --ray-address need --engine ray", param_hint="'--engine'"
        )
    if STDIN in paths and sys.stdin.isatty() and not quiet:
        output.log("Reading image paths from the terminal, one per line; end with Ctrl-D.")
    summary = run_batch(
        config, engine, reporter=reporter, stdin=sys.stdin if STDIN in paths else None, out=output.write, advise=advise
    )
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)
