"""Where things go: results raw to stdout, status and logs to stderr (spinners only on a terminal)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smolvlm_cli import jsontext
from smolvlm_cli.cli.streams import point_at_devnull


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def write(text: str) -> None:
    """Model output, raw (a literal `[bold]` stays text) and flushed, so pipes see it at once.

    A reader that went away (`| head -c 10`) ends the run quietly with exit 0; a standard
    output closed before the start (`>&-`) is an error, as the results have nowhere to go.
    """
    if sys.stdout is None:
        from smolvlm_cli.errors import SmolVLMError

        raise SmolVLMError("standard output is closed: the results have nowhere to go", hint="drop the '>&-'")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        import typer

        point_at_devnull(sys.stdout)
        raise typer.Exit(0) from None
    except OSError as exc:  # a full disk, /dev/full, an I/O error
        from smolvlm_cli.errors import SmolVLMError

        point_at_devnull(sys.stdout)
        raise SmolVLMError(
            f"cannot write the results to standard output: {exc.strerror or exc}",
            hint="send them somewhere that takes them (a file on a disk with free space, a pipe)",
        ) from None


def write_json(obj: Any) -> None:
    """One JSON line (`jsontext.dumps`: a file name that is not valid UTF-8 stays readable)."""
    write(jsontext.dumps(obj) + "\n")


def reply_fields(stats: Any, **timings: float) -> dict[str, Any]:
    """One reply's counts, stop reason and timings (`GenerationStats`), as every `--json` prints
    them; `timings` are the command's own (start-up, load) put first."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "image_tiles": stats.image_tiles,
        "image_tokens": stats.image_tokens,
        **({"video_frames": stats.video_frames} if stats.video_frames else {}),
        "stop_reason": stats.stop_reason,
        "timings": {
            **{name: round(value, 4) for name, value in timings.items()},
            **{k: round(v, 4) for k, v in stats.as_dict().items() if k.endswith("_s")},
            "decode_tokens_per_s": round(stats.decode_tokens_per_s, 2),
        },
    }


_TIMING_NAMES = {"startup_s": "start-up", "load_s": "load"}


def timing_line(stats: Any, backend: Any = None, **timings: float) -> str:
    """One reply's `--verbose` line (`GenerationStats`): with the backend and the command's own
    timings (start-up, load) when given, as `describe` and the first answer of `ask` print it."""
    head = f"backend {backend.name} ({backend.dtype}), " if backend is not None else ""
    head += "".join(f"{_TIMING_NAMES.get(name, name)} {value:.2f} s, " for name, value in timings.items())
    overlapped = " (video decoding overlapped with vision)" if stats.video_frames else ""
    return (
        f"{head}preprocess {stats.preprocess_s:.2f} s{overlapped}, {stats.image_tiles} tile(s) / "
        f"{stats.image_tokens} image tokens in {stats.vision_s:.2f} s, prefill {stats.prompt_tokens} "
        f"tokens in {stats.prefill_s:.2f} s, first token after {stats.ttft_s:.2f} s, "
        f"{stats.generated_tokens} tokens at {stats.decode_tokens_per_s:.1f} tokens/s (stop: {stats.stop_reason})"
    )


def log(message: str) -> None:
    """A status line on stderr, plain text."""
    print(message, file=sys.stderr, flush=True)


def notices(quiet: bool) -> Callable[[str], None]:
    """What the library's `notice=` callbacks get: a `Note:` line on stderr, none with --quiet."""
    return (lambda _m: None) if quiet else (lambda m: log(f"Note: {m}"))


class Status:
    """A spinner on stderr when it is a terminal, silence otherwise (and with --quiet)."""

    def __init__(self, quiet: bool = False):
        self._console = None if quiet or not sys.stderr.isatty() else stderr_console()
        self._status = None

    @contextlib.contextmanager
    def show(self, message: str) -> Iterator[None]:
        if self._console is None:
            yield
            return
        with self._console.status(message, spinner="dots") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None

    def update(self, message: str) -> None:
        """New words for the running spinner (e.g. the video frames encoded so far)."""
        if self._status is not None:
            self._status.update(message)

    def pause(self):
        """Stop the spinner for another live display; returns the console to draw it on
        (None when stderr is not a terminal)."""
        if self._status is not None:
            self._status.stop()
        return self._console

    def resume(self) -> None:
        if self._status is not None:
            self._status.start()


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def files_table(
    root: Path, paths: list[Path], seconds: float, timings: dict[str, float] | None = None, what: str = "done"
) -> str:
    """Files written under `root`: size and, when timed, seconds each; the total; `what` and the time."""
    rows = [
        (
            str(p.relative_to(root)),
            human_size(p.stat().st_size),
            f"{timings[p.name]:.1f} s" if timings and p.name in timings else "",
        )
        for p in sorted(paths)
    ]
    width = max([len(r[0]) for r in rows] + [5])
    timed = any(r[2] for r in rows)
    lines = [f"{'file':<{width}}  {'size':>9}" + (f"  {'time':>7}" if timed else "")]
    lines += [f"{rel:<{width}}  {size:>9}" + (f"  {took:>7}" if timed else "") for rel, size, took in rows]
    lines.append(f"{'total':<{width}}  {human_size(sum(p.stat().st_size for p in paths)):>9}")
    lines.append(f"{what} in {seconds:.1f} s: {root}")
    return "\n".join(lines)
