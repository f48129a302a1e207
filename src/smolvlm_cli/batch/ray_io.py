"""Inputs and outputs only the Ray engine has: `--manifest` files and `--format parquet` folders.

`run_parquet` is `runner.run_batch` for a Parquet folder: discovery, planning, the summary and
the failure lines are the same, but Ray's writer, not the driver, writes the records, so they
are read back (this run's files) for the failures and the counts; Ray's bar replaces ours.

Manifest: a JSONL file (one object with a `path` per line, e.g. an earlier run's records, or one
JSON string per line) or a Parquet file with a `path` column, listing local image files.
Relative paths are relative to the current folder, like a path list on stdin. URLs are refused.

Parquet output: a folder of `smolvlm-<run>-<uuid>-<task>-<i>.parquet` files written by Ray's own
writer (one file per block), columns as the JSONL records. The folder is its own resume state:
the last record of an image, reading the files oldest first, says whether it is done or
failed. On open, files a killed run left torn (no Parquet footer) are deleted; on a finished run
that superseded earlier records (--retry-errors, --overwrite), the older files are rewritten
without them, so every image has one record. A lock file keeps two runs out of one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from smolvlm_cli.batch.files import AppendLog, sweep_temps, temp_path
from smolvlm_cli.batch.progress import Reporter, Summary
from smolvlm_cli.batch.records import FIELDS, ImageRecord, Job
from smolvlm_cli.batch.resume import IndexedOutput, RecordIndex, record_key
from smolvlm_cli.batch.runner import BatchConfig, find_images, item_prompt, plan_run
from smolvlm_cli.errors import SmolVLMError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OUR_FILE = re.compile(r"^smolvlm-\d{8}T\d{6}-\d{6}-.+\.parquet$")
LOCK_NAME = ".smolvlm-batch.lock"


# -- manifests ------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> list[str]:
    """The image paths a manifest lists, in its order."""
    path = Path(path)
    if not path.is_file():
        raise SmolVLMError(f"no such manifest file: {path}")
    if path.suffix.lower() == ".parquet":
        paths = _parquet_paths(path)
    else:
        paths = _jsonl_paths(path)
    for n, entry in enumerate(paths, 1):
        if _URL.match(entry):
            raise SmolVLMError(
                f"{path}: entry {n} is a URL ({entry[:60]}): the manifest lists local files only",
                hint="download the images first",
            )
        if "\0" in entry:
            raise SmolVLMError(f"{path}: entry {n} holds a NUL character")
    if not paths:
        raise SmolVLMError(f"manifest {path} lists no images")
    return paths


def _parquet_paths(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
        raise SmolVLMError(f"cannot read manifest {path}: {exc}") from exc
    if "path" not in schema.names:
        raise SmolVLMError(f"manifest {path} has no 'path' column (it has: {', '.join(schema.names) or 'none'})")
    values = pq.read_table(path, columns=["path"]).column("path").to_pylist()
    return [v for v in values if isinstance(v, str) and v.strip()]


def _jsonl_paths(path: Path) -> list[str]:
    paths = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8", "surrogateescape"))
            except ValueError:
                raise SmolVLMError(
                    f"{path} line {n} is not JSON",
                    hint='a manifest holds one {"path": ...} object (or one JSON string) per line',
                ) from None
            value = entry.get("path") if isinstance(entry, dict) else entry
            if not isinstance(value, str):
                raise SmolVLMError(f'{path} line {n} has no "path" string')
            if value.strip():
                paths.append(value)
    return paths


# -- Parquet output -------------------------------------------------------------------------------


def run_stamp() -> str:
    """A sortable stamp for this run's file names: 20250131T235959-123456."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{int(now % 1 * 1e6):06d}"


class ParquetStore(IndexedOutput):
    """The Parquet results folder: resume state, lock, torn-file repair, compaction."""

    name = "parquet"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = RecordIndex()
        self.notices: list[str] = []
        self._lock: AppendLog | None = None

    def describe(self) -> str:
        return f"Parquet files to {self.folder}"

    def files(self) -> list[Path]:
        """The folder's Parquet files, oldest first (by modification time, then name: the run
        order whatever names the Ray version gives them)."""
        found = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".parquet") and entry.is_file():
                        found.append((entry.stat().st_mtime_ns, entry.name))
        except FileNotFoundError:
            return []
        return [self.folder / name for _, name in sorted(found)]

    def open(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise SmolVLMError(
                f"--output {self.folder} is a file: Parquet output is a folder",
                hint="give a folder name (created if missing)",
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        sweep_temps(self.folder)
        self._lock = AppendLog(self.folder / LOCK_NAME).open()
        try:
            for record in self._read(self.files(), brief=True):
                self.index.add(record, record_key(record.path, self.folder.parent))
        except BaseException:
            self.close(compact=False)
            raise

    def _read(self, files: Sequence[Path], *, repair: bool = True, brief: bool = False) -> Iterator[ImageRecord]:
        """The records of `files`; `repair` deletes ours that a kill left torn (no footer),
        `brief` reads only what resume needs: `path`, `error`, and the `model` and `prompt` that
        made a result (a re-run with others is refused, as for JSONL and CSV)."""
        import pyarrow.parquet as pq

        for file in files:
            try:
                names = pq.read_schema(file).names
                columns = [c for c in ("path", "error", "model", "prompt") if c in names] if brief else None
                table = pq.read_table(file, columns=columns) if "path" in names else None
            except Exception as exc:  # noqa: BLE001 - pyarrow's error types
                if repair and OUR_FILE.match(file.name):
                    file.unlink()
                    self.notices.append(
                        f"removed {file.name}, left torn by an interrupted run (its images are captioned again)"
                    )
                    continue
                raise SmolVLMError(f"cannot read {file}: {exc}", hint="write to a new folder with -o") from exc
            if table is None:
                raise SmolVLMError(
                    f"{file} does not look like a smolvlm batch Parquet file",
                    hint="write to a new folder with -o (nothing was changed)",
                )
            for row in table.to_pylist():
                yield ImageRecord.from_dict({k: v for k, v in row.items() if k in FIELDS})

    def records_since(self, before: set[Path]) -> list[ImageRecord]:
        """The records of the files not in `before` (this run's), in file order; they join the
        index (superseding earlier records of the same images)."""
        mine = [f for f in self.files() if f not in before]
        records = list(self._read(mine))
        for record in records:
            self.index.add(record, record_key(record.path, self.folder.parent))
        return records

    def close(self, compact: bool = True) -> None:
        """Release the lock; with `compact`, first drop superseded records (if any)."""
        try:
            if compact and self.index.superseded:
                self.compact()
        finally:
            if self._lock is not None:  # the lock file stays: unlinking it would race
                self._lock.close()
                self._lock = None

    def compact(self) -> int:
        """Drop records a later one superseded (rewrite or delete older files); how many."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.files()
        tables = {f: pq.read_table(f) for f in files}
        latest: dict[str, tuple[Path, int]] = {}
        for file, table in tables.items():
            for n, path in enumerate(table.column("path").to_pylist()):
                latest[record_key(path, self.folder.parent)] = (file, n)
        dropped = 0
        for file, table in tables.items():
            keep = [
                latest.get(record_key(p, self.folder.parent)) == (file, n)
                for n, p in enumerate(table.column("path").to_pylist())
            ]
            if all(keep):
                continue
            dropped += keep.count(False)
            if not any(keep):
                file.unlink()
                continue
            tmp = temp_path(file)
            try:
                pq.write_table(table.filter(pa.array(keep)), tmp)
                os.replace(tmp, file)
            finally:
                if tmp.exists():
                    tmp.unlink()
        return dropped


# -- a Parquet run ----------------------------------------------------------------------------------


def run_parquet(
    config: BatchConfig, engine_factory: Callable[[], Any], reporter: Reporter, stdin: TextIO | None
) -> Summary:
    """Discover, plan against the folder, let Ray caption and write (`engine.write_parquet`),
    then read back this run's files for the failure lines and the summary."""
    started = time.perf_counter()
    found = find_images(config, reporter, stdin)
    if not config.output or config.output == "-":
        raise SmolVLMError("Parquet output is a folder", hint="name it with -o FOLDER")
    store = ParquetStore(Path(config.output))
    summary = Summary(found=len(found.items))
    finished = False
    try:
        store.open()
        work = plan_run(found.items, store, config, summary, reporter)
        jobs = [Job(item, item_prompt(config, item.path)) for item in work.todo]
        if jobs:
            with reporter.status("Loading the model"):
                t0 = time.perf_counter()
                engine = engine_factory()
                summary.load_s = time.perf_counter() - t0
            _write(engine, jobs, store, config, reporter, summary, started)
        finished = not summary.signal
    finally:
        store.close(compact=finished)
    summary.elapsed_s = time.perf_counter() - started
    reporter.summary(summary)
    return summary


def _write(
    engine,
    jobs: list[Job],
    store: ParquetStore,
    config: BatchConfig,
    reporter: Reporter,
    summary: Summary,
    started: float,
) -> None:
    stamp, before = run_stamp(), set(store.files())
    t0 = time.perf_counter()
    failed = True
    try:
        with _signals_interrupt() as caught:
            try:
                engine.write_parquet(jobs, store.folder, stamp, config.style, progress=reporter.interactive)
            except KeyboardInterrupt:
                if not caught:
                    raise
        summary.signal = caught[0] if caught else 0
        failed = False
    finally:
        summary.work_s = time.perf_counter() - t0
        noticed = len(store.notices)
        for record in store.records_since(before):  # what Ray finished before any stop
            summary.done += record.ok
            summary.failed += not record.ok
            reporter.advance(record)
        for notice in store.notices[noticed:]:  # a file torn by the stop
            reporter.info(notice)
        if failed and (summary.done or summary.failed):  # still say what was saved
            summary.elapsed_s = time.perf_counter() - started
            reporter.summary(summary)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """SIGINT / SIGTERM during Ray's write stop it (KeyboardInterrupt); the signals are listed."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handle(signum, _frame):
        caught.append(signum)
        raise KeyboardInterrupt  # a second one also interrupts the clean-up: stop at once

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
