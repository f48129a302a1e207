"""What a batch run says on stderr: a progress bar on a terminal, failures, the summary.

stdout is never touched here: it carries only results (JSONL/CSV to `-`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from smolvlm_cli.batch.records import ImageRecord

SIGNAL_NAMES = {2: "SIGINT", 15: "SIGTERM"}


@dataclass
class Summary:
    found: int = 0
    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    elapsed_s: float = 0.0  # the whole run
    work_s: float = 0.0  # captioning only (after the model load)
    load_s: float = 0.0
    signal: int = 0  # the signal that stopped the run early, 0 when it ran to the end

    @property
    def skipped(self) -> int:
        return self.skipped_done + self.skipped_failed

    @property
    def images_per_min(self) -> float:
        """Captions per minute of captioning: failed and skipped files take next to no time
        and would make the rate a fiction."""
        return 60.0 * self.done / self.work_s if self.done and self.work_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """128 + signal when stopped early, 1 when an image has no caption, else 0."""
        if self.signal:
            return 128 + self.signal
        return 1 if self.failed or self.skipped_failed else 0

    def line(self) -> str:
        text = f"{self.done} done, {self.skipped} skipped, {self.failed} failed in {self.elapsed_s:.1f} s"
        details = [f"{self.images_per_min:.1f} images/min"] if self.done else []
        details += [f"model load {self.load_s:.1f} s"] if self.load_s else []
        return text + (f" ({', '.join(details)})" if details else "")

    def as_dict(self) -> dict:
        return {
            "found": self.found,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "skipped_failed": self.skipped_failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "load_s": round(self.load_s, 3),
            "images_per_min": round(self.images_per_min, 2),
            "exit_code": self.exit_code,
        }


class Reporter:
    """stderr output of a run; the bar only on a terminal and without `quiet`."""

    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.quiet = quiet
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.interactive = not quiet and self.stream.isatty()
        self._progress = None
        self._task = None
        self.failures = 0
        self.captioned = 0

    def _print(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=self.stream, flush=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._print(message)

    def warn(self, message: str) -> None:
        self._print(f"Warning: {message}")

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        if not self.interactive:
            yield
            return
        from rich.console import Console

        with Console(file=self.stream, highlight=False).status(message, spinner="dots"):
            yield

    def start(self, total: int) -> None:
        if not self.interactive or total <= 0:
            return
        from datetime import timedelta

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        reporter = self

        # Rates over the whole run, like the summary's: rich's windowed speed jumps to absurd
        # values when results arrive in bursts (Ray hands over a block at a time).
        def per_second(task) -> float:
            return reporter.captioned / task.elapsed if task.elapsed and reporter.captioned else 0.0

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                speed = per_second(task)
                return Text(f"{speed * 60:.1f} images/min" if speed else "-- images/min", style="progress.data.speed")

        class Remaining(ProgressColumn):
            def render(self, task) -> Text:
                speed = per_second(task)
                left = (task.remaining or 0) / speed if speed else None
                text = "-:--:--" if left is None else str(timedelta(seconds=int(left)))
                return Text(f"ETA {text}", style="progress.remaining")

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            Remaining(),
            console=Console(file=self.stream, highlight=False),
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )  # stdout carries results: leave it be
        self._progress.start()
        self._task = self._progress.add_task("Captioning", total=total)

    def advance(self, record: ImageRecord) -> None:
        if not record.ok:
            self.failures += 1
            self._print(f"Error: {failure_line(record.path, record.error or '')}")
        else:
            self.captioned += 1
        if record.ok and self.verbose:
            self._print(f"{record.path}: {record.generated_tokens} tokens in {record.seconds:.2f} s")
        if self._progress is not None:
            description = f"Captioning ({self.failures} failed)" if self.failures else "Captioning"
            self._progress.update(self._task, advance=1, description=description)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self, summary: Summary) -> None:
        if summary.signal:
            name = SIGNAL_NAMES.get(summary.signal, f"signal {summary.signal}")
            self._print(
                f"Stopped by {name} after the images in flight; everything finished is "
                "saved: run the same command again to go on."
            )
        if summary.skipped_failed:
            self._print(
                f"{summary.skipped_failed} image(s) failed in an earlier run and were "
                "skipped: --retry-errors tries them again."
            )
        if not self.quiet or summary.signal:
            self._print(summary.line())


def failure_line(path: str, error: str) -> str:
    """`path: reason`, the path said once: image errors already name it (`cannot read image
    a.jpg: ...`), so such a message is reworded around the path instead of after it. One line
    whatever the name holds: a newline or another control character is shown escaped."""
    line = error if path and (path in error or os.path.basename(path) in error) else f"{path}: {error}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
