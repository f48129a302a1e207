"""`smolvlm describe IMAGE|VIDEO... [PROMPT]`: one answer about images and videos, streamed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.option_groups import ModelChoice, TilingChoice, VideoChoice, option_groups
from smolvlm_cli.cli.options import DEFAULTS, QuietOpt, SystemOpt, VerboseOpt
from smolvlm_cli.formats import looks_like_image
from smolvlm_cli.options import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT, GenerationOptions
from smolvlm_cli.video import is_video_path

STDIN = "-"


PROMPT_RULE = (
    "The last argument is the prompt when it is not '-', a URL or an existing file (not a folder), "
    "and it contains a space or does not end in an image or video extension: "
    "`describe sign.png 'Read the text in sign.png'` works."
)


def is_prompt(arg: str) -> bool:
    """Whether the last positional argument is the prompt (see PROMPT_RULE)."""
    from smolvlm_cli.image_loading import is_url

    if not arg.strip():
        return True  # an empty prompt (refused by split_images_and_prompt), not the folder "."
    # os.path, not Path.exists: a prompt longer than a file name may be (255 bytes) is not an
    # error; a folder is no image, so a one-word prompt named like one is still the prompt
    if arg == STDIN or is_url(arg) or (os.path.exists(arg) and not os.path.isdir(arg)):
        return False
    name = Path(arg).name
    return any(c.isspace() for c in arg.strip()) or not (looks_like_image(name) or is_video_path(name))


def split_images_and_prompt(args: list[str], prompt: str | None) -> tuple[list[str], str | None]:
    images = list(args)
    if prompt is None and len(images) > 1 and is_prompt(images[-1]):
        prompt = images.pop()
    if prompt is not None and not prompt.strip():
        raise typer.BadParameter(
            "the prompt is empty: give some text, or leave it out for the default prompt",
            param_hint="'PROMPT' / '--prompt'",
        )
    return images, prompt


def read_stdin_inputs(
    images: list[str], prompt: str | None, quiet: bool = False
) -> tuple[list, str | None, dict[str, str]]:
    """stdin is read only when asked for: `-` as an image (bytes) or a video (spooled to a file
    PyAV can seek in, named "<stdin>" by the returned labels), or `-p -` (the prompt text).
    Shell loops and xargs must not lose their input to a command that did not ask for it."""
    if images.count(STDIN) > 1:
        raise typer.BadParameter("stdin can be read only once: give '-' for at most one image")
    if STDIN in images and prompt == STDIN:
        raise typer.BadParameter(
            "stdin can be read only once: '-' as an image or -p -, not both", param_hint="'--prompt'"
        )
    if STDIN in images:
        if sys.stdin.isatty():
            raise typer.BadParameter(
                "'-' reads an image or a video from standard input, which is a "
                "terminal: pipe one in (smolvlm describe - < photo.jpg)",
                param_hint="'IMAGE...'",
            )
        data = sys.stdin.buffer.read()
        if not data:
            from smolvlm_cli.errors import ImageError

            raise ImageError("<stdin>: no image data on standard input")
        from smolvlm_cli.video import video_extension_of

        container = video_extension_of(data)
        if container is None:
            return [data if i == STDIN else i for i in images], prompt, {}
        from smolvlm_cli.cli.media import stdin_video

        path = stdin_video(data, container)
        return [path if i == STDIN else i for i in images], prompt, {path: "<stdin>"}
    if prompt == STDIN:
        if sys.stdin.isatty() and not quiet:
            output.log("Type the prompt; end it with Ctrl-D.")
        # bytes, decoded leniently: a stray invalid byte must not cost the whole answer
        prompt = sys.stdin.buffer.read().decode(sys.stdin.encoding or "utf-8", "replace").strip()
        if not prompt:
            raise typer.BadParameter("-p - found no prompt text on standard input", param_hint="'--prompt'")
    return list(images), prompt, {}


EXAMPLES = """Examples:\n\n
smolvlm describe photo.jpg\n\n
smolvlm describe photo.jpg 'What is in the box?'\n\n
smolvlm describe --detail low -n 40 photo.jpg   (fast: one tile, a short caption)\n\n
smolvlm describe clip.mp4 'What happens after the door opens?' --max-frames 16\n\n
smolvlm describe - < clip.mp4   (a piped image or video)\n\n
smolvlm describe https://example.com/a.jpg --system 'Answer in French.'\n\n
curl -s https://example.com/a.jpg | smolvlm describe - --json | jq .text\n\n
echo 'Is there a dog?' | smolvlm describe photo.jpg -p -   (the prompt from stdin)"""


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True, epilog=EXAMPLES)(describe)


@option_groups
def describe(
    images: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE|VIDEO... [PROMPT]",
            show_default=False,
            help="Image paths or http(s) URLs ('-' reads an image or a video from stdin) and video files "
            "(.mp4, .mov, .mkv, .webm, ...), optionally followed by the prompt. " + PROMPT_RULE,
        ),
    ],
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            "-p",
            show_default=DEFAULT_PROMPT,
            help="The question or instruction (or give it after the images); '-' reads it from "
            "stdin. stdin is never read unless asked for, so shell loops are safe. With a video "
            "the default is 'Describe this video in detail.'",
        ),
    ] = None,
    system: SystemOpt = None,
    model: ModelChoice = ModelChoice(),
    options: GenerationOptions = DEFAULTS,
    tiling: TilingChoice = TilingChoice(),
    video: VideoChoice = VideoChoice(),
    no_stream: Annotated[
        bool, typer.Option("--no-stream", rich_help_panel="Output", help="Print the answer once it is complete.")
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", rich_help_panel="Output", help="Print one JSON object: the text, token counts and timings."
        ),
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Answer a question about images or videos (a caption by default), streamed to stdout."""
    started = time.perf_counter()
    paths, prompt = split_images_and_prompt(images, prompt)
    video.require_video(STDIN in paths or any(map(is_video_path, paths)))
    sources, prompt, labels = read_stdin_inputs(paths, prompt, quiet)
    video.require_video(any(map(is_video_path, sources)))  # what `-` turned out to be
    status = output.Status(quiet)

    from smolvlm_cli.cli.media import frame_progress, media_label, open_media, probe_videos
    from smolvlm_cli.image_loading import is_url, load_image
    from smolvlm_cli.prompt import build_messages

    # Decode the images and probe the videos first: a bad file fails before the model loads.
    with status.show("Downloading the image" if any(map(is_url, sources)) else "Reading"):
        probed = probe_videos(sources, labels)  # first: a video URL is refused before any download
        loaded = [
            s if is_video_path(s) else load_image(s, name="<stdin>" if isinstance(s, bytes) else None) for s in sources
        ]
    startup_s = started - _process_start()
    t0 = time.perf_counter()
    vlm = model.load(quiet, status)
    load_s = time.perf_counter() - t0
    media = open_media(loaded, vlm.config, probed, video.options, labels)
    kinds = ["video" if hasattr(m, "num_frames") else "image" for m in media]
    prompt = prompt or (DEFAULT_VIDEO_PROMPT if "video" in kinds else DEFAULT_PROMPT)
    prepared = vlm.prepare(
        media, messages=build_messages(prompt, kinds, system), tiling=tiling.resolve(lambda: vlm.config)
    )
    vlm.progress = frame_progress(status)
    stream = vlm.stream_prepared(prepared, options)
    buffered = json_out or no_stream
    parts = []
    tiles = prepared.num_tiles
    label = (
        media_label(media)
        if prepared.videos
        else f"Encoding {tiles} tile{'s' if tiles != 1 else ''}"
        if tiles
        else "Thinking"
    )
    with status.show(label):
        first = next(iter(stream), None)
    for delta in _chain(first, stream):
        if buffered:
            parts.append(delta)
        else:
            output.write(delta)
    text = "".join(parts)
    stats = stream.stats
    if json_out:
        output.write_json(
            {
                "text": text,
                "model": model.model,
                "backend": vlm.backend.name,
                "dtype": vlm.backend.dtype,
                "prompt": prompt,
                **({"system": system} if system else {}),
                "images": [_label(s) for s in sources if not is_video_path(s)],
                **({"videos": [v.as_dict() for v in prepared.videos]} if prepared.videos else {}),
                **output.reply_fields(stats, startup_s=startup_s, load_s=load_s),
            }
        )
    else:
        output.write(text + "\n" if buffered else "\n")
    if verbose:
        output.log(output.timing_line(stats, vlm.backend, startup_s=startup_s, load_s=load_s))


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


def _label(source) -> str:
    return "<stdin>" if isinstance(source, bytes) else str(source)


def _process_start() -> float:
    """perf_counter() at interpreter start (for the start-up share of --verbose timings)."""
    import os

    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.perf_counter() - age
    except (OSError, ValueError, IndexError):
        return time.perf_counter()
