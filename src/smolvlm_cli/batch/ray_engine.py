"""`smolvlm batch --engine ray`: the same run as the local engine, on Ray Data.

    from smolvlm_cli.batch.ray_engine import RaySettings, run_ray
    summary = run_ray(config, RaySettings(model, options, workers=2), reporter=reporter)

`run_ray` is a drop-in for `runner.run_batch(config, engine_factory, ...)`: discovery, prompt
templates, resume, the writers (txt sidecars, JSONL, CSV), the progress bar and the summary are
the local engine's own; only the captioning is Ray's:

    paths -> from_items -> map_batches(preprocess)  [stateless tasks: decode, tile, tokenize;
                                                      a bad file becomes an error row]
          -> map_batches(Captioner, pool of W)      [actor pool: one model per actor, loaded
                                                      once, --batch-size images per call]
          -> driver: iter_batches -> writers         [streamed: a killed job keeps all written]
          or write_parquet (`--format parquet`)     [Ray's writer, one file per block]

The model is resolved once, on the driver (a local folder, or the Hub cache: downloaded there
once), and actors load it by path, never downloading: on a multi-node cluster that path (and the
images') must exist on every node (a shared file system). Without `address` a local Ray instance
is started for the run (and stopped after); with one (`auto`, `HOST:6379`) the run joins that
cluster as a driver on one of its nodes. Ray Client addresses (`ray://`) are refused: Ray Data
cannot execute through Ray Client (submit the command as a Ray job instead). A Ray already
initialised by the caller is used as it is.

Ray is an optional extra, imported only here and on the workers: without it, `run_ray` raises
`RayUnavailableError` ("the ray engine needs Ray") before doing anything.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from smolvlm_cli.batch.discover import STDIN
from smolvlm_cli.batch.progress import Reporter, Summary
from smolvlm_cli.batch.records import ImageRecord, Job
from smolvlm_cli.batch.runner import BatchConfig, run_batch
from smolvlm_cli.errors import BackendUnavailableError, SmolVLMError, error_message
from smolvlm_cli.extras import install_command
from smolvlm_cli.options import GenerationOptions, Tiling

MAX_ROWS_PER_BLOCK = 16  # what a killed job can lose per actor; also a Parquet file's rows
TASKS_IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: no idle gap, little tail imbalance


_CONTEXT_FLAGS = (
    "enable_progress_bars",
    "enable_operator_progress_bars",
    "use_ray_tqdm",
    "enable_rich_progress_bars",
    "print_on_execution_start",
)


class RayUnavailableError(BackendUnavailableError):
    """`--engine ray` without Ray installed."""


def import_ray():
    """`ray` (with Ray Data), or the one-line error saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError("the ray engine needs Ray", hint=install_command("ray")) from exc
    return ray


@dataclass
class RaySettings:
    """Everything the Ray engine needs besides the `BatchConfig` the local engine shares."""

    model: str
    options: GenerationOptions
    backend: str = "auto"
    dtype: str | None = None
    batch_size: int = 1
    tiling: Tiling = Tiling()
    address: str | None = None  # None: RAY_ADDRESS / a `ray start` cluster here, else a new one
    workers: int = 1  # actors in the captioning pool
    threads_per_worker: int | None = None  # onnxruntime threads per actor; None: CPUs / workers
    manifest: str | None = None  # a JSONL/Parquet list of image paths (see ray_io)
    video_options: dict[str, Any] | None = None  # fps, max_frames, start, end for the videos

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError("batch_size and workers must be at least 1")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ValueError("threads_per_worker must be at least 1")


def run_ray(
    config: BatchConfig,
    settings: RaySettings,
    *,
    reporter: Reporter | None = None,
    stdin: TextIO | None = None,
    out: Callable[[str], None] | None = None,
) -> Summary:
    """Caption what `config` (plus `settings.manifest`) selects on Ray; the same `Summary` as
    `run_batch` (its `exit_code` is the command's). Ray starts only when there is work."""
    import_ray()
    address = settings.address or os.environ.get("RAY_ADDRESS", "")  # where ray.init would go
    if address.strip().startswith("ray://"):
        # Ray Data needs a driver inside the cluster (ray-project/ray#48682)
        raise SmolVLMError(
            "Ray Data does not run over Ray Client (ray://): the command must run on a node of the cluster",
            hint="run it on the head node with --ray-address auto, or submit it: "
            "ray job submit --address http://HEAD:8265 -- smolvlm batch ... "
            "--engine ray --ray-address auto",
        )
    reporter = reporter or Reporter()
    if settings.manifest is not None:
        from smolvlm_cli.batch.ray_io import read_manifest

        if STDIN in config.inputs:
            raise SmolVLMError("--manifest and '-' (paths on stdin) cannot be combined")
        listed = read_manifest(settings.manifest)
        config = replace(config, inputs=[*config.inputs, STDIN], null=True)
        stdin = io.StringIO("\0".join(listed))
    session = RaySession(settings, reporter)

    def engine_factory() -> RayEngine:
        from smolvlm_cli.backends.select import select_backend

        chosen = select_backend(settings.model, settings.backend, settings.dtype)  # builds once here
        session.start()
        return RayEngine(session, chosen.model_dir, chosen.backend)

    try:
        if config.fmt == "parquet":
            from smolvlm_cli.batch.ray_io import run_parquet

            return run_parquet(config, engine_factory, reporter, stdin)
        return run_batch(config, engine_factory, reporter=reporter, stdin=stdin, out=out)
    finally:
        session.stop()


def _ray_temp_root() -> str | None:
    """Where Ray itself keeps sessions (RAY_TMPDIR, else TMPDIR on Linux, else /tmp): its
    socket paths must stay under 107 bytes, so not the long per-user TMPDIR of macOS."""
    if os.environ.get("RAY_TMPDIR"):
        return os.environ["RAY_TMPDIR"]
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return "/tmp" if os.path.isdir("/tmp") else None


class RaySession:
    """Joins or starts Ray for one run, sets Ray Data up for it, and undoes both after."""

    def __init__(self, settings: RaySettings, reporter: Reporter):
        self.settings = settings
        self.reporter = reporter
        self.owned = False  # we called ray.init: we call ray.shutdown
        self._temp_dir: str | None = None
        self._saved: dict[str, Any] | None = None
        self._console: list[tuple[logging.Handler, int]] = []

    def start(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            verbose = self.reporter.verbose
            kwargs: dict[str, Any] = {
                # workers' own output (onnxruntime notes) only with --verbose, and never stdout:
                # Ray prints worker stdout on the driver's stdout, which carries results
                "log_to_driver": verbose,
                "logging_level": logging.INFO if verbose else logging.ERROR,
            }
            address = self.settings.address  # "auto" or "host:6379" (a driver on a node)
            try:
                if address:
                    ray.init(address, **kwargs)
                else:  # a session folder of our own, removed after the run (not left in /tmp)
                    self._temp_dir = tempfile.mkdtemp(prefix="smolvlm-ray-", dir=_ray_temp_root())
                    ray.init(include_dashboard=False, _temp_dir=self._temp_dir, **kwargs)
            except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
                where = f"join the Ray cluster at {address}" if address else "start a local Ray"
                hint = (
                    "start one with `ray start --head` (then --ray-address auto), or leave "
                    "--ray-address out to start a local Ray for the run"
                    if address
                    else "run with -v for Ray's own report"
                )
                raise SmolVLMError(f"cannot {where}: {error_message(exc)}", hint=hint) from exc
            self.owned = True
        if not self.reporter.verbose:
            # Ray Data's console notes and tracebacks only with -v (its log file in the Ray
            # session folder keeps them); a failure reaches the user as one Error: line
            self._console = [
                (h, h.level) for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)
            ]
            for handler, _ in self._console:
                handler.setLevel(logging.CRITICAL + 1)
        from ray.data import DataContext

        ctx = DataContext.get_current()
        self._saved = {name: getattr(ctx, name) for name in _CONTEXT_FLAGS if hasattr(ctx, name)}
        self._saved.update(
            {
                "preserve_order": ctx.execution_options.preserve_order,
                "verbose_progress": ctx.execution_options.verbose_progress,
            }
        )
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = True  # records in discovery order, as locally
        ctx.execution_options.verbose_progress = False
        self.ray_progress(False)

    def ray_progress(self, on: bool) -> None:
        """Ray's own bar (one, for the whole dataset) or none: never next to ours."""
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = on
        ctx.enable_operator_progress_bars = False
        if on and hasattr(ctx, "enable_rich_progress_bars"):
            ctx.use_ray_tqdm = False  # Ray's rich bar draws on stderr; its tqdm one stays blank
            ctx.enable_rich_progress_bars = True

    def cpus(self) -> float:
        ray = import_ray()
        return float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))

    def stop(self) -> None:
        for handler, level in self._console:
            handler.setLevel(level)
        self._console = []
        if self._saved is not None:
            from ray.data import DataContext

            ctx = DataContext.get_current()
            for name in _CONTEXT_FLAGS:
                if name in self._saved:
                    setattr(ctx, name, self._saved[name])
            ctx.execution_options.preserve_order = self._saved["preserve_order"]
            ctx.execution_options.verbose_progress = self._saved["verbose_progress"]
            self._saved = None
        if self.owned:
            import_ray().shutdown()
            self.owned = False
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


class RayEngine:
    """The `runner.Engine` protocol on Ray Data (plus `write_parquet` for Parquet output)."""

    name = "ray"

    def __init__(self, session: RaySession, model_dir: Path, backend: str):
        self.session = session
        self.settings = session.settings
        self.model_dir = str(Path(model_dir).resolve())
        self.backend = backend
        cpus = session.cpus()
        workers = self.settings.workers
        self.threads = self.settings.threads_per_worker or max(1, int(cpus // workers))
        # never ask for more CPUs than the cluster has, or the pool would wait forever
        self.actor_cpus = min(float(self.threads), cpus / workers)

    def dataset(self, jobs: list[Job], *, indexed: bool = True, style: Any = None):
        """paths -> preprocessed rows -> records (columns `idx`? + records.FIELDS)."""
        import ray
        from ray.data import ActorPoolStrategy

        from smolvlm_cli.batch.ray_workers import Captioner, preprocess, to_bytes

        s = self.settings
        rows = [
            {
                "idx": n,
                "path": to_bytes(job.item.path),
                "file": to_bytes(os.path.abspath(job.item.path)),
                "prompt": to_bytes(job.prompt),
            }
            for n, job in enumerate(jobs)
        ]
        per_block = max(s.batch_size, min(MAX_ROWS_PER_BLOCK, math.ceil(len(rows) / (4 * s.workers))))
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))
        # Preprocessing asks for no CPU slot: the actors hold them all, and decoding one image
        # is milliseconds against seconds of inference; at most one task per actor at a time.
        ds = ds.map_batches(
            preprocess,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=0,
            **_task_pool(s.workers),
            fn_kwargs={"model_dir": self.model_dir, "tiling": s.tiling, "video_options": s.video_options},
        )
        # On a cluster Ray Data's fault tolerance stays on (a lost node's actors are restarted,
        # their tasks retried); on this machine a dead actor (out of memory) stops the run with
        # its reason, and the next run resumes (restarts would only log a warning per run).
        captioning = dict(
            batch_format="pyarrow",
            batch_size=s.batch_size,
            num_cpus=self.actor_cpus,
            compute=ActorPoolStrategy(size=s.workers, max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT_PER_ACTOR),
            fn_constructor_kwargs={
                "model_dir": self.model_dir,
                "backend": self.backend,
                "dtype": s.dtype,
                "threads": self.threads,
                "options": s.options,
                "model_name": s.model,
                "batch_size": s.batch_size,
                "style": style,
                "indexed": indexed,
            },
        )
        if not s.address:
            with warnings.catch_warnings():  # max_restarts has no named parameter (yet)
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    return ds.map_batches(Captioner, max_restarts=0, **captioning)
                except TypeError:  # a Ray without **ray_remote_args: its defaults, then
                    pass
        return ds.map_batches(Captioner, **captioning)

    def run(
        self, jobs: Iterable[Job], emit: Callable[[Job, ImageRecord], None], should_stop: Callable[[], bool]
    ) -> None:
        """Caption `jobs` and `emit` their records on this thread, in order, as blocks finish.
        Once `should_stop`, the records already received are emitted and nothing else."""
        jobs = list(jobs)
        if not jobs:
            return
        self.session.ray_progress(False)
        batches = self.dataset(jobs).iter_batches(batch_size=None, batch_format="pyarrow")
        with _worker_errors():
            for batch in batches:
                for row in batch.to_pylist():
                    job = jobs[row["idx"]]
                    emit(
                        job,
                        ImageRecord(
                            path=job.item.path,
                            caption=row["caption"],
                            error=row["error"],
                            model=row["model"] or "",
                            prompt=job.prompt,
                            prompt_tokens=row["prompt_tokens"] or 0,
                            generated_tokens=row["generated_tokens"] or 0,
                            image_tiles=row["image_tiles"] or 0,
                            stop_reason=row["stop_reason"] or "",
                            seconds=row["seconds"] or 0.0,
                        ),
                    )
                if should_stop():
                    break
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stop the streaming execution now, not when garbage-collected

    def write_parquet(self, jobs: list[Job], folder: Path, stamp: str, style: Any, progress: bool) -> None:
        """Caption `jobs` into `folder` with Ray's Parquet writer (one file per block)."""
        from smolvlm_cli.batch.ray_workers import RunFilenames

        self.session.ray_progress(progress)
        with _worker_errors():
            self.dataset(jobs, indexed=False, style=style).write_parquet(
                os.path.abspath(folder),  # Ray's writers do not run in our current folder
                filename_provider=RunFilenames(stamp),
                ray_remote_args={"num_cpus": 0},  # the actors hold every CPU slot
                concurrency=self.settings.workers,
            )


def _task_pool(size: int) -> dict[str, Any]:
    """At most `size` concurrent tasks: `compute=TaskPoolStrategy(size)` (Ray >= 2.51), else
    the older `concurrency=size`."""
    try:
        from ray.data import TaskPoolStrategy
    except ImportError:
        return {"concurrency": size}
    return {"compute": TaskPoolStrategy(size=size)}


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """A failure inside Ray (a broken model in an actor, a model folder missing on a node) as
    the project's one-line error. Ray hands the worker's exception over as text (its
    traceback): the line of our own error in it, else of the first exception, is the message."""
    import ray.exceptions

    try:
        yield
    except ray.exceptions.RayError as exc:
        message = remote_error(str(exc)) or error_message(exc)
        raise SmolVLMError(
            f"captioning failed on a Ray worker: {message}",
            hint="run with -v for Ray's own report; the results written so far "
            "are kept: run the command again to go on",
        ) from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Protobuf|Fail\w*)): (.+)$")


def remote_error(text: str) -> str | None:
    """The message of the exception a Ray traceback `text` reports: our own errors' message
    (`smolvlm_cli.errors.ConfigError: cannot load ...` -> `cannot load ...`), else the first
    non-Ray exception as `Type: message`; None when there is none."""
    found = []
    for line in _ANSI.sub("", text).splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not match.group(1).startswith("ray."):
            found.append((match.group(1), match.group(2).strip()))
    for name, message in found:
        if name.startswith("smolvlm_cli."):
            return message
    if found:
        name, message = found[0]
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    return None
