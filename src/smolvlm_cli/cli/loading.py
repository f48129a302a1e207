"""Loading a model from the CLI: a spinner, and a progress bar while our graphs are built.

The first run of a model builds its fast ONNX graphs from the safetensors (seconds for the
256M/500M models, minutes for 2.2B). On a terminal that shows as a rich progress bar on stderr;
elsewhere as two plain status lines; with --quiet not at all. stdout is never touched.
"""

from __future__ import annotations

import time

from smolvlm_cli.builder.layout import Progress
from smolvlm_cli.cli import output


class BuildProgress(Progress):
    """Reports a build of graphs on stderr, pausing the spinner of `status` while it runs."""

    def __init__(self, status: output.Status, model: str, quiet: bool = False,
                 announce: str = "Building fast ONNX graphs for {model} (once; later runs load them)..."):
        self._status, self._model, self._quiet, self._announce = status, model, quiet, announce
        self._bar = self._task = None
        self._units = self._done = 0
        self._started = 0.0

    def total(self, units: int) -> None:
        self._units, self._done, self._started = units, 0, time.perf_counter()
        if self._quiet or units == 0:
            return
        console = self._status.pause()
        if console is None:
            output.log(self._announce.format(model=self._model))
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        self._bar = Bar(TextColumn("Building graphs for {task.fields[model]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task("", total=units, model=self._model)

    def step(self, description: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description)
        if self._done >= self._units:
            self._finish()

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if not self._quiet and self._units:
            output.log(f"Built the graphs in {time.perf_counter() - self._started:.1f} s")
            self._status.resume()


def load_model(model: str, backend: str, dtype: str | None, threads: int | None, graphs: str = "auto",
               quiet: bool = False, status: output.Status | None = None):
    """`SmolVLM.from_pretrained` behind a spinner, with the build's progress and notices shown."""
    from smolvlm_cli.model import SmolVLM

    status = status or output.Status(quiet)
    notice = (lambda _m: None) if quiet else (lambda m: output.log(f"Note: {m}"))
    with status.show(f"Loading {model}"):
        return SmolVLM.from_pretrained(model, backend=backend, dtype=dtype, threads=threads, graphs=graphs,
                                       progress=BuildProgress(status, model, quiet), notice=notice)
