"""`smolvlm ask` (several questions, one image encoding) and `smolvlm chat` (multi-turn)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.loading import load_model
from smolvlm_cli.cli.options import (DEFAULTS, BackendOpt, GraphsOpt, DtypeOpt, JsonOpt, LongestEdgeOpt,
                                     MaxTokensOpt, ModelOpt, NoSplitOpt, QuietLongOpt, QuietOpt,
                                     RepetitionPenaltyOpt, SeedOpt, TemperatureOpt, ThreadsOpt,
                                     TopKOpt, TopPOpt, generation_options)
from smolvlm_cli.hub import DEFAULT_MODEL

CHAT_HELP = """Commands: /image PATH (add an image to your next message), /reset (forget the
conversation), /save FILE (write the transcript as JSON messages), /exit. Without a terminal,
each line of stdin is one message."""


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=True)(ask)
    app.command(epilog=CHAT_HELP)(chat)


def ask(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image paths.")],
    questions: Annotated[list[str], typer.Option(
        "--question", "-q", help="A question (repeat for several); each is answered on its own.")],
    model: ModelOpt = DEFAULT_MODEL,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = None,
    graphs: GraphsOpt = "auto",
    threads: ThreadsOpt = None,
    max_new_tokens: MaxTokensOpt = DEFAULTS.max_new_tokens,
    temperature: TemperatureOpt = DEFAULTS.temperature,
    top_k: TopKOpt = DEFAULTS.top_k,
    top_p: TopPOpt = DEFAULTS.top_p,
    repetition_penalty: RepetitionPenaltyOpt = DEFAULTS.repetition_penalty,
    seed: SeedOpt = DEFAULTS.seed,
    longest_edge: LongestEdgeOpt = None,
    no_split: NoSplitOpt = False,
    json_out: Annotated[bool, typer.Option(
        "--json", rich_help_panel="Output", help="One JSON object per answer (JSON lines).")] = False,
    quiet: QuietLongOpt = False,
) -> None:
    """Answer several questions about the same image(s), encoding the image(s) only once."""
    from smolvlm_cli.image_loading import load_image

    loaded = [load_image(path) for path in images]  # bad files fail before the model loads
    vlm = load_model(model, backend, dtype, threads, graphs, quiet)
    opts = generation_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    streams = vlm.ask_stream(loaded, questions, options=opts, longest_edge=longest_edge,
                             split=False if no_split else None)
    for question, stream in zip(questions, streams):
        if json_out:
            text = stream.text()
            s = stream.stats
            output.write_json({"question": question, "text": text, "prompt_tokens": s.prompt_tokens,
                               "generated_tokens": s.generated_tokens, "image_tiles": s.image_tiles,
                               "vision_s": round(s.vision_s, 4), "prefill_s": round(s.prefill_s, 4),
                               "ttft_s": round(s.ttft_s, 4), "decode_s": round(s.decode_s, 4)})
        else:
            for delta in stream:
                output.write(delta)
            output.write("\n")


def chat(
    images: Annotated[Optional[list[str]], typer.Argument(
        metavar="[IMAGE...]", help="Images for the first message.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = None,
    graphs: GraphsOpt = "auto",
    threads: ThreadsOpt = None,
    max_new_tokens: MaxTokensOpt = DEFAULTS.max_new_tokens,
    temperature: TemperatureOpt = DEFAULTS.temperature,
    top_k: TopKOpt = DEFAULTS.top_k,
    top_p: TopPOpt = DEFAULTS.top_p,
    repetition_penalty: RepetitionPenaltyOpt = DEFAULTS.repetition_penalty,
    seed: SeedOpt = DEFAULTS.seed,
    longest_edge: LongestEdgeOpt = None,
    no_split: NoSplitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Talk about images over several turns; the model keeps the conversation in its cache."""
    from smolvlm_cli.errors import SmolVLMError
    from smolvlm_cli.image_loading import load_image

    pending = [load_image(path) for path in images or ()]
    vlm = load_model(model, backend, dtype, threads, graphs, quiet)
    conversation = vlm.chat(generation_options(max_new_tokens, temperature, top_k, top_p,
                                     repetition_penalty, seed),
                            longest_edge=longest_edge, split=False if no_split else None)
    interactive = sys.stdin.isatty()
    if interactive and not quiet:
        _enable_history()
        output.log(f"Chatting with {model}. {CHAT_HELP.splitlines()[0]} ...")
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            arg = arg.strip()
            if command in ("/exit", "/quit"):
                break
            try:
                if command == "/image":
                    pending.append(load_image(arg))
                    output.log(f"(image {arg} added to your next message)")
                elif command == "/reset":
                    conversation.reset()
                    pending.clear()
                    output.log("(conversation cleared)")
                elif command == "/save":
                    conversation.save(arg)
                    output.log(f"(transcript saved to {arg})")
                else:
                    output.log(f"Unknown command {command}. {CHAT_HELP}")
            except (SmolVLMError, OSError) as exc:
                if not interactive:
                    raise
                output.log(f"Error: {getattr(exc, 'message', exc)}")
            continue
        stream = conversation.send(text, pending)
        pending = []
        for delta in stream:
            output.write(delta)
        output.write("\n")
        for notice in conversation.notices:
            output.log(f"({notice})")
        conversation.notices.clear()


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return


def _enable_history() -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
