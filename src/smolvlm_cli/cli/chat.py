"""`smolvlm ask` (several questions, one image encoding) and `smolvlm chat` (multi-turn)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.option_groups import ModelChoice, TilingChoice, VideoChoice, option_groups
from smolvlm_cli.cli.options import DEFAULTS, QuietLongOpt, QuietOpt, SystemOpt, VerboseOpt
from smolvlm_cli.options import GenerationOptions

COMMANDS = (
    "/image PATH (add an image to your next message), /video PATH (a video), "
    "/reset (forget the conversation), "
    "/save FILE (write the transcript as JSON), /help, /exit (or exit, quit, Ctrl-D)"
)
CHAT_HELP = f"""Commands: {COMMANDS}. Without a terminal, each line of stdin is one message."""
_EXIT_WORDS = {"exit", "quit", "/exit", "/quit"}


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(ask)
    app.command(epilog=CHAT_HELP)(chat)


def _open(source: str):
    """The image, validated now (a bad file fails before the model loads), its name kept for
    the transcript; a video path is probed now and stays a path (sampled once the model is
    known, by `_sampled`)."""
    from smolvlm_cli.cli.media import probe_videos
    from smolvlm_cli.video import is_video_path

    probe_videos([source])  # also refuses a video URL, before any download
    if is_video_path(source):
        return source
    from smolvlm_cli.image_loading import load_image

    image = load_image(source)
    image.filename = source
    return image


def _sampled(media: list, vlm, video: VideoChoice) -> list:
    """Video paths among `media` as `SampledVideo`s, sampled per the command's video options."""
    from smolvlm_cli.cli.media import open_media

    return open_media(media, vlm.config, {}, video.options)


def _read_questions(questions: list[str], quiet: bool) -> list[str]:
    """`-q -` stands for the questions on stdin, one per line (blank lines skipped)."""
    if any(not q.strip() for q in questions):
        raise typer.BadParameter("a question is empty", param_hint="'--question'")
    if "-" not in questions:
        return questions
    if questions.count("-") > 1:
        raise typer.BadParameter("stdin can be read only once: give -q - once", param_hint="'--question'")
    if sys.stdin.isatty() and not quiet:
        output.log("Type one question per line; end with Ctrl-D.")
    piped = [line.strip() for line in sys.stdin if line.strip()]
    result = [q for question in questions for q in (piped if question == "-" else [question])]
    if not result:
        raise typer.BadParameter("-q - found no questions on standard input", param_hint="'--question'")
    return result


def _thinking(status: output.Status, stream, images: bool):
    """The first delta of `stream` behind a spinner (image encoding and prefill come first,
    ~13 s for a 13-tile image on a laptop), then the rest."""
    with status.show("Looking at the image(s)" if images else "Thinking"):
        first = next(stream, None)
    if first is not None:
        yield first
        yield from stream


def labeled_answer(question: str, deltas) -> Iterator[str]:
    """`Q: question` / `A: answer`, the answer's further lines indented under it, so a
    multi-line reply cannot be mistaken for the next question."""
    yield f"Q: {question}\nA:"
    separator = " "
    for delta in deltas:
        if separator:  # the reply's own leading space would double A:'s
            delta = delta.lstrip(" ")
            if not delta:
                continue
            delta, separator = separator + delta, ""
        yield delta.replace("\n", "\n   ")


@option_groups
def ask(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE|VIDEO...", help="Image paths or URLs, video files.")],
    questions: Annotated[
        list[str],
        typer.Option(
            "--question",
            "-q",
            show_default=False,
            help="A question (repeat for several); each is answered on its own. '-q -' reads the "
            "questions from stdin, one per line. (Here -q is --question: --quiet has no short "
            "form.)",
        ),
    ],
    system: SystemOpt = None,
    model: ModelChoice = ModelChoice(),
    options: GenerationOptions = DEFAULTS,
    tiling: TilingChoice = TilingChoice(),
    video: VideoChoice = VideoChoice(),
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            rich_help_panel="Output",
            help="One JSON object per answer (JSON lines): the question, text, counts, timings.",
        ),
    ] = False,
    quiet: QuietLongOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Answer several questions about the same images or videos, encoding them only once.

    With several questions each answer is labeled (Q: / A:, continuation lines indented); a single question prints the bare answer.
    """
    from smolvlm_cli.cli.media import frame_progress
    from smolvlm_cli.video import is_video_path

    video.require_video(any(map(is_video_path, images)))
    questions = _read_questions(list(questions), quiet)
    loaded = [_open(path) for path in images]  # bad files fail before the model loads
    started = time.perf_counter()
    vlm = model.load(quiet)
    load_s = time.perf_counter() - started
    status, labeled = output.Status(quiet), len(questions) > 1
    vlm.progress = frame_progress(status)
    streams = vlm.ask_stream(
        _sampled(loaded, vlm, video),
        questions,
        options=options,
        tiling=tiling.resolve(lambda: vlm.config),
        system=system,
    )
    for number, (question, stream) in enumerate(zip(questions, streams)):
        if json_out:
            text = "".join(_thinking(status, stream, not number))
            output.write_json(
                {
                    "question": question,
                    **({"system": system} if system else {}),
                    "text": text,
                    "model": model.model,
                    "backend": vlm.backend.name,
                    "dtype": vlm.backend.dtype,
                    **output.reply_fields(stream.stats),  # as describe --json has them
                }
            )
        elif labeled:
            output.write("\n" if number else "")
            for text in labeled_answer(question, _thinking(status, stream, not number)):
                output.write(text)
            output.write("\n")
        else:
            for delta in _thinking(status, stream, not number):
                output.write(delta)
            output.write("\n")
        if verbose:  # as describe's; the backend and the load with the first answer
            first = {"backend": vlm.backend, "load_s": load_s} if not number else {}
            output.log(output.timing_line(stream.stats, **first))


@option_groups
def chat(
    images: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="[IMAGE|VIDEO...]", help="Images (paths or URLs) and videos for the first message."),
    ] = None,
    system: SystemOpt = None,
    model: ModelChoice = ModelChoice(),
    options: GenerationOptions = DEFAULTS,
    tiling: TilingChoice = TilingChoice(),
    video: VideoChoice = VideoChoice(),
    quiet: QuietOpt = False,
) -> None:
    """Talk about images and videos over several turns; the model keeps the conversation in its cache."""
    from smolvlm_cli.cli.media import frame_progress
    from smolvlm_cli.errors import SmolVLMError

    pending = [_open(path) for path in images or ()]
    vlm = model.load(quiet)
    conversation = vlm.chat(options, tiling=tiling.resolve(lambda: vlm.config), system=system)
    interactive = sys.stdin.isatty()
    status = output.Status(quiet)
    vlm.progress = frame_progress(status)
    if interactive and not quiet:
        _enable_history()
        output.log(f"Chatting with {model.model}.")
        output.log(f"Commands: {COMMANDS}.")
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        if text.lower() in _EXIT_WORDS:
            break
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            try:
                _command(command, arg.strip(), conversation, pending)
            except (SmolVLMError, OSError) as exc:
                if not interactive:
                    raise
                _log_error(exc)
            continue
        try:
            stream = conversation.send(text, _sampled(pending, vlm, video))
        except SmolVLMError as exc:  # e.g. too long for the context: the chat is as it was
            if not interactive:
                raise
            _log_error(exc)
            if pending:  # they would fail the next message too
                pending = []
                output.log("(the images and videos of that message were dropped: add them again with /image)")
            continue
        looking, pending = bool(pending), []
        for delta in _thinking(status, iter(stream), looking):
            output.write(delta)
        output.write("\n")
        for notice in conversation.notices:
            output.log(f"({notice})")
        conversation.notices.clear()


def _log_error(exc: BaseException) -> None:
    """An error shown in an interactive chat, which goes on."""
    message, hint = getattr(exc, "message", None), getattr(exc, "hint", None)
    if message is None:  # an OSError: its reason and file, not Python's repr
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    output.log(f"Error: {message}" + (f" ({hint})" if hint else ""))


def _command(command: str, arg: str, conversation, pending: list) -> None:
    """One slash command; errors as SmolVLMError (shown, the chat goes on)."""
    from smolvlm_cli.errors import SmolVLMError

    if command == "/image":
        if not arg:
            raise SmolVLMError("/image needs an image path or URL, e.g. /image photo.jpg")
        pending.append(_open(arg))
        output.log(f"(image {arg} added to your next message)")
    elif command == "/video":
        from smolvlm_cli.formats import VIDEO_EXTENSIONS
        from smolvlm_cli.video import is_video_path

        if not arg:
            raise SmolVLMError("/video needs a video file, e.g. /video clip.mp4")
        if not is_video_path(arg):
            raise SmolVLMError(f"{arg} does not look like a video (extensions: {', '.join(VIDEO_EXTENSIONS)})")
        pending.append(_open(arg))
        output.log(f"(video {arg} added to your next message)")
    elif command == "/reset":
        conversation.reset()
        pending.clear()
        output.log("(conversation cleared)")
    elif command == "/save":
        if not arg:
            raise SmolVLMError("/save needs a file name, e.g. /save chat.json")
        if Path(arg).is_dir():
            raise SmolVLMError(f"{arg} is a folder: give a file name, e.g. /save {Path(arg) / 'chat.json'}")
        conversation.save(arg)
        output.log(f"(transcript saved to {arg})")
    elif command == "/help":
        output.log(f"Commands: {COMMANDS}.")
    else:
        raise SmolVLMError(f"unknown command {command}: try /help")


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin
        return
    # the "> " prompt is for the user, not the results: on stderr when stdout goes elsewhere
    # (input() writes its prompt to stdout; readline line editing needs it there on a terminal)
    on_terminal = sys.stdout.isatty()
    while True:
        try:
            if not on_terminal:
                sys.stderr.write("> ")
                sys.stderr.flush()
            yield input("> " if on_terminal else "")
        except EOFError:
            print(file=sys.stderr)
            return


def _enable_history() -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
