"""Loading a model from the CLI: a spinner, and progress bars while it downloads and while our
graphs are built.

The first run of a Hub model downloads its safetensors, then builds its fast ONNX graphs from them
(seconds for the 256M/500M models, minutes for 2.2B). On a terminal each shows as a rich progress
bar on stderr; elsewhere as plain status lines; with --quiet not at all. stdout is never touched.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator

from smolvlm_cli.builder.layout import Progress
from smolvlm_cli.cli import output


class BuildProgress(Progress):
    """Reports a build of graphs on stderr, pausing the spinner of `status` while it runs."""

    def __init__(
        self,
        status: output.Status,
        model: str,
        quiet: bool = False,
        announce: str = "Building fast ONNX graphs for {model} (once; later runs load them)...",
    ):
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

        self._bar = Bar(
            TextColumn("Building graphs for {task.fields[model]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=units, model=self._model)

    @contextlib.contextmanager
    def downloads(self) -> Iterator[type]:
        bars = DownloadBars(self._status, self._model, self._quiet)
        try:
            yield bars.tqdm_class()
        finally:
            bars.finish()

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


class DownloadBars:
    """huggingface_hub's download bars, drawn as one rich bar on stderr.

    huggingface_hub reports a snapshot through tqdm objects (files fetched; bytes transferred
    and written, their totals growing as files start). We hand it a tqdm class that draws
    nothing itself and read only tqdm's public state (`n`, `total`, `unit`): the bar shows the
    most bytes any of them counted, of the largest total, and the files done. It appears only
    once bytes flow, so a cached model loads without a flash of a bar.
    """

    def __init__(self, status: output.Status, model: str, quiet: bool):
        self._status, self._model, self._quiet = status, model, quiet
        self._lock = threading.Lock()
        self._seen: dict[int, object] = {}
        self._bar = self._task = None
        self._started: float | None = None
        self._finished = False

    def tqdm_class(self) -> type:
        from tqdm.std import tqdm

        owner = self

        class RichTqdm(tqdm):
            monitor_interval = 0  # no tqdm monitor thread: nothing of tqdm's is drawn

            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)  # huggingface_hub's own tqdm subclass takes a name
                kwargs.update(file=io.StringIO(), disable=False)
                super().__init__(*args, **kwargs)

            def display(self, msg=None, pos=None):
                owner._show(self)
                return True

        return RichTqdm

    def _show(self, bar) -> None:
        with self._lock:
            if self._quiet or self._finished:
                return
            self._seen[id(bar)] = bar
            if self._started is None:
                if bar.unit != "B" or not bar.n:
                    return
                self._start()
            if self._bar is not None:
                done, total, files = self._state()
                self._bar.update(self._task, completed=done, total=total or None, files=files)

    def _state(self) -> tuple[int, int, str]:
        byte_bars = [b for b in self._seen.values() if b.unit == "B"]
        file_bars = [b for b in self._seen.values() if b.unit != "B" and b.total]
        done = max((int(b.n) for b in byte_bars), default=0)
        total = max([int(b.total or 0) for b in byte_bars] + [done])
        files = f"{sum(int(b.n) for b in file_bars)}/{sum(int(b.total) for b in file_bars)} files" if file_bars else ""
        return done, total, files

    def _start(self) -> None:
        self._started = time.perf_counter()
        console = self._status.pause()
        if console is None:
            output.log(f"Downloading {self._model}...")
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as Bar,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._bar = Bar(
            TextColumn("Downloading {task.fields[model]}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[files]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        done, total, files = self._state()
        self._task = self._bar.add_task("", completed=done, total=total or None, model=self._model, files=files)
        self._bar.start()

    def finish(self) -> None:
        """After the download: the bar goes, a summary line stays, the spinner comes back."""
        with self._lock:
            self._finished = True
            if self._started is None:
                return
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            done, _, _ = self._state()
            output.log(f"Downloaded {output.human_size(done)} in {time.perf_counter() - self._started:.1f} s")
            self._status.resume()


def load_model(
    model: str,
    backend: str,
    dtype: str | None,
    threads: int | None,
    graphs: str = "auto",
    quiet: bool = False,
    status: output.Status | None = None,
):
    """`SmolVLM.from_pretrained` behind a spinner, with the build's progress and notices shown."""
    from smolvlm_cli.model import SmolVLM

    status = status or output.Status(quiet)
    notice = output.notices(quiet)
    with status.show(f"Loading {model}"):
        return SmolVLM.from_pretrained(
            model,
            backend=backend,
            dtype=dtype,
            threads=threads,
            graphs=graphs,
            progress=BuildProgress(status, model, quiet),
            notice=notice,
        )
