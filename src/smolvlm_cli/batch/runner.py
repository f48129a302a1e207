"""A batch run, engine-independent: discover -> open the writer -> plan -> engine -> summary.

The engine (`LocalEngine` here, a Ray Data engine later) only turns `Job`s into raw
`ImageRecord`s through `emit`; discovery, templates, caption style, writers, resume and the
summary are the same whatever runs the model, so every engine produces the same files.

SIGINT / SIGTERM during captioning: the images in flight finish and are written, nothing new
starts, the summary is printed and the exit code is 130 / 143. A second signal stops at once
(KeyboardInterrupt), still without tearing any file.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from smolvlm_cli.batch.discover import DEFAULT_EXTENSIONS, discover
from smolvlm_cli.batch.progress import Reporter, Summary
from smolvlm_cli.batch.records import ImageRecord, Job
from smolvlm_cli.batch.resume import check_made_with, plan
from smolvlm_cli.batch.templates import CaptionStyle, render
from smolvlm_cli.batch.writers import make_writer
from smolvlm_cli.errors import SmolVLMError
from smolvlm_cli.extras import install_command
from smolvlm_cli.options import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT
from smolvlm_cli.video import is_video_path


class Engine(Protocol):
    name: str

    def run(
        self, jobs: Iterable[Job], emit: Callable[[Job, ImageRecord], None], should_stop: Callable[[], bool]
    ) -> None: ...


@dataclass
class BatchConfig:
    inputs: Sequence[str]
    prompt: str | None = None  # None: DEFAULT_PROMPT, and DEFAULT_VIDEO_PROMPT for videos
    recursive: bool = True
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    extensions: Sequence[str] = DEFAULT_EXTENSIONS
    null: bool = False  # NUL-separated paths on stdin
    fmt: str = "txt"
    output: str | None = None  # jsonl/csv file, "-" or None for stdout
    output_dir: Path | None = None
    style: CaptionStyle = field(default_factory=CaptionStyle)
    overwrite: bool = False
    retry_errors: bool = False
    resume_any: bool = False  # keep results made with another prompt or model
    model: str = ""  # what results are compared with on resume ("": any model)


class StopFlag:
    """Set by the first SIGINT/SIGTERM (remembering which); a second one interrupts at once."""

    def __init__(self):
        self.signum = 0

    def __call__(self) -> bool:
        return self.signum != 0

    def _handle(self, signum, _frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def run_batch(
    config: BatchConfig,
    engine_factory: Callable[[], Engine],
    *,
    reporter: Reporter | None = None,
    stdin: TextIO | None = None,
    out: Callable[[str], None] | None = None,
    advise: Callable[[list], str | None] | None = None,
) -> Summary:
    """Caption what `config` selects; `engine_factory` is called (the model loaded) only when
    there is work. `advise(items)` may return a line said before the work starts (a speed
    warning). Returns the summary (its `exit_code` is the command's)."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    found = find_images(config, reporter, stdin)
    writer = make_writer(config.fmt, output=config.output, output_dir=config.output_dir, out=out)
    summary = Summary(found=len(found.items))
    finished = False
    try:
        writer.open(found.items)
        work = plan_run(found.items, writer, config, summary, reporter)

        def emit(job: Job, record: ImageRecord) -> None:
            if record.ok:
                record.caption = config.style.apply(record.caption or "", job.item.path)
            writer.write(job.item, record)
            if record.ok:
                summary.done += 1
            else:
                summary.failed += 1
            reporter.advance(record)

        jobs = []
        for item in work.todo:
            job = Job(item, item_prompt(config, item.path))
            problem = writer.problem(item)
            if problem:
                emit(job, ImageRecord.failure(item.path, problem, prompt=job.prompt))
            else:
                jobs.append(job)
        if jobs and advise is not None:
            advice = advise([job.item for job in jobs])
            if advice:
                reporter.info(advice)
        if jobs:
            with reporter.status("Loading the model"):
                t0 = time.perf_counter()
                engine = engine_factory()
                summary.load_s = time.perf_counter() - t0
            stop = StopFlag()
            t0 = time.perf_counter()
            reporter.start(len(jobs))
            try:
                with stop.installed():
                    engine.run(jobs, emit, stop)
            except BaseException:  # a full disk, a broken model, a second Ctrl-C: still say
                reporter.stop()  # what was saved before the error goes up
                summary.work_s = time.perf_counter() - t0
                summary.signal = stop.signum
                summary.elapsed_s = time.perf_counter() - started
                if summary.done or summary.failed:
                    reporter.summary(summary)
                raise
            finally:
                reporter.stop()
                summary.work_s = time.perf_counter() - t0
            summary.signal = stop.signum
        finished = True
    finally:
        writer.close(compact=finished)  # no rewriting on the way out of an error
    summary.elapsed_s = time.perf_counter() - started
    reporter.summary(summary)
    return summary


def item_prompt(config: BatchConfig, path: str) -> str:
    """The prompt of one file: the template filled in; without one, the default prompt of its
    kind (a prompt given, even the default image one, is every file's)."""
    if config.prompt is None:
        return DEFAULT_VIDEO_PROMPT if is_video_path(path) else DEFAULT_PROMPT
    return render(config.prompt, path)


def find_images(config: BatchConfig, reporter: Reporter, stdin: TextIO | None):
    """The images `config` selects (discovery warnings reported); an error when there are none."""
    found = discover(
        config.inputs,
        recursive=config.recursive,
        include=config.include,
        exclude=config.exclude,
        extensions=config.extensions,
        stdin=stdin,
        null=config.null,
    )
    for warning in found.warnings:
        reporter.warn(warning)
    from smolvlm_cli.video.decode import av_available

    # the default extensions leave videos out only without PyAV: say so (an --ext is a choice)
    if found.videos_left_out and set(config.extensions) == set(DEFAULT_EXTENSIONS) and not av_available():
        reporter.warn(f"{found.videos_left_out} video file(s) left out: video needs PyAV ({install_command('video')})")
    if not found.items:
        raise SmolVLMError(
            f"no images found in {', '.join(config.inputs)}",
            hint=f"images need one of the extensions {', '.join(config.extensions)} "
            "(--ext to change); check --include/--exclude",
        )
    return found


def plan_run(items, store, config: BatchConfig, summary: Summary, reporter: Reporter):
    """What is left to caption against an opened writer or store (its notices and the plan
    reported, the skipped counts in `summary`)."""
    for notice in store.notices:
        reporter.info(notice)
    work = plan(items, store.state, overwrite=config.overwrite, retry_errors=config.retry_errors)
    if not config.resume_any:
        check_made_with(work.done, store.made_with, config.model, lambda item: item_prompt(config, item.path))
    summary.skipped_done, summary.skipped_failed = len(work.done), len(work.failed)
    reporter.info(_plan_line(items, work, store.describe()))
    return work


def _plan_line(items: list, work, where: str) -> str:
    videos = sum(1 for item in items if is_video_path(item.path))
    counts = [f"{n} {kind}(s)" for n, kind in ((len(items) - videos, "image"), (videos, "video")) if n]
    found = " and ".join(counts) or "0 image(s)"
    parts = [f"{len(work.todo)} to caption"]
    if work.retried:
        parts[0] += f" ({work.retried} earlier failure(s) retried)"
    if work.done:
        parts.append(f"{len(work.done)} already done")
    if work.failed:
        parts.append(f"{len(work.failed)} failed before")
    return f"{found}: {', '.join(parts)}; writing {where}"
