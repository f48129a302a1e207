"""What runs on Ray workers for `smolvlm batch --engine ray` (imported there by module path).

- `preprocess`: the stateless map (Ray tasks): decode + tile + tokenize each image, exactly as
  the local engine's threads do (`load_image` + `SmolVLM.prepare`); a video is probed, sampled
  and its frames decoded here too (`SampledVideo.decoded`), so an actor never reads a file. A
  file that cannot be read becomes a row with its error, never a failed task. `PreparedInputs`
  travel pickled (numpy arrays, variable shapes) in a binary column.
- `Captioner`: the actor class of the captioning pool (`map_batches(Captioner, ...)`). Each actor
  loads the model once from the directory the driver resolved, with `threads` onnxruntime
  threads, and runs the local engine's inference step on `--batch-size` images per call, so a
  record is built the same way whatever the engine.
- `RunFilenames`: Parquet file names that sort by run (resume reads them in order).

Paths and prompts cross the cluster as bytes (`surrogateescape`): a file name that is not UTF-8
reaches the worker intact.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.datasource import FilenameProvider

from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.batch.records import FIELDS, ImageRecord, Job
from smolvlm_cli.errors import ModelNotFoundError, error_message
from smolvlm_cli.image_loading import load_image
from smolvlm_cli.options import Tiling
from smolvlm_cli.processor import Processor
from smolvlm_cli.values import PreparedInputs
from smolvlm_cli.video import is_video_path

PREPARED_SCHEMA = pa.schema(
    [
        ("idx", pa.int64()),
        ("path", pa.binary()),
        ("file", pa.binary()),
        ("prompt", pa.binary()),
        ("prepared", pa.binary()),
        ("error", pa.string()),
        ("prep_s", pa.float64()),
    ]
)
_TYPES = {
    "prompt_tokens": pa.int64(),
    "generated_tokens": pa.int64(),
    "image_tiles": pa.int64(),
    "seconds": pa.float64(),
}
RECORD_SCHEMA = pa.schema([(name, _TYPES.get(name, pa.string())) for name in FIELDS])
INDEXED_SCHEMA = pa.schema([("idx", pa.int64()), *RECORD_SCHEMA])


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def from_bytes(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def arrow_text(text: str | None) -> str | None:
    """A string Arrow can store (a non-UTF-8 file name keeps a U+FFFD in its place)."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# -- the stateless map ----------------------------------------------------------------------------

_PROCESSORS: dict[str, Processor] = {}  # model dir -> its processor, one per worker process


def _processor(model_dir: str) -> Processor:
    processor = _PROCESSORS.get(model_dir)
    if processor is None:
        processor = _PROCESSORS[model_dir] = Processor.from_pretrained(Path(model_dir))
    return processor


def preprocess(
    batch: pa.Table, model_dir: str, tiling: Tiling, video_options: dict[str, Any] | None = None
) -> pa.Table:
    """Rows `idx, path, file, prompt` -> `idx, path, file, prompt, prepared | error, prep_s`.

    `file` is the absolute path (workers do not share the driver's current folder), `path` the
    one recorded and named in errors, as the user gave it. `video_options`: `fps`,
    `max_frames`, `start`, `end` for the videos."""
    processor = _processor(model_dir)
    out: dict[str, list] = {name: [] for name in PREPARED_SCHEMA.names}
    for row in batch.to_pylist():
        path, prompt = from_bytes(row["path"]), from_bytes(row["prompt"])
        t0 = time.perf_counter()
        prepared, error = None, None
        try:
            inputs = _prepare(processor, from_bytes(row["file"]), str(Path(path)), prompt, tiling, video_options or {})
            prepared = pickle.dumps(inputs, protocol=5)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is that file's failure
            error = error_message(exc)
        for name, value in (
            ("idx", row["idx"]),
            ("path", row["path"]),
            ("file", row["file"]),
            ("prompt", row["prompt"]),
            ("prepared", prepared),
            ("error", error),
            ("prep_s", time.perf_counter() - t0),
        ):
            out[name].append(value)
    return pa.table(out, schema=PREPARED_SCHEMA)


def _prepare(
    processor: Processor, file: str, label: str, prompt: str, tiling: Tiling, video_options: dict[str, Any]
) -> PreparedInputs:
    if not is_video_path(file):
        return processor.prepare([load_image(file, name=label)], prompt, tiling=tiling)
    t0 = time.perf_counter()
    video = processor.open_video(file, label=label, **video_options)
    prepared = processor.prepare([], prompt, videos=[video])
    prepared.media = [m if isinstance(m, int) else m.decoded(processor.config) for m in prepared.media]
    prepared.preprocess_s = time.perf_counter() - t0  # the decoding, which the local engine overlaps
    return prepared


# -- the actor pool -------------------------------------------------------------------------------


class Captioner:
    """One model per actor, loaded once; `__call__` captions a batch of preprocessed rows.

    `style` (Parquet only, where no driver sees the records) decorates captions like the
    driver's writers do; `indexed` keeps the `idx` column the driver uses to find each job.
    """

    def __init__(
        self,
        model_dir: str,
        backend: str,
        dtype: str | None,
        threads: int | None,
        options: Any,
        model_name: str,
        batch_size: int,
        style: Any = None,
        indexed: bool = True,
    ):
        from smolvlm_cli.batch.local import LocalEngine
        from smolvlm_cli.model import SmolVLM

        if not Path(model_dir).is_dir():
            raise ModelNotFoundError(
                f"model directory {model_dir} is not on Ray node {socket.gethostname()}: give "
                "--model a path every node can read (a shared file system) or copy it there"
            )
        vlm = SmolVLM.from_pretrained(model_dir, backend=backend, dtype=dtype, threads=threads)
        self.engine = LocalEngine(vlm, options, model_name=model_name, batch_size=batch_size, workers=1)
        self.style = style
        self.indexed = indexed

    def __call__(self, batch: pa.Table) -> pa.Table:
        records: dict[int, ImageRecord] = {}
        ready: list[tuple[Job, Any, float]] = []
        index: dict[int, int] = {}  # id(job) -> idx
        for row in batch.to_pylist():
            path, prompt = from_bytes(row["path"]), from_bytes(row["prompt"])
            if row["error"] is not None:  # as the local engine records an unreadable file
                records[row["idx"]] = ImageRecord.failure(
                    path, row["error"], model=self.engine.model_name, prompt=prompt
                )
                continue
            job = Job(ImageItem(path, os.path.basename(path) or path), prompt)
            index[id(job)] = row["idx"]
            ready.append((job, pickle.loads(row["prepared"]), row["prep_s"]))
        if ready:

            def collect(job: Job, record: ImageRecord) -> None:
                records[index[id(job)]] = record

            # the local engine's inference step: a batch call, one by one after an error,
            # giving up (raising) when the model fails its first images without a success
            self.engine.caption_prepared(ready, collect)
        return self._table(records)

    def _table(self, records: dict[int, ImageRecord]) -> pa.Table:
        columns: dict[str, list] = {name: [] for name in INDEXED_SCHEMA.names}
        for idx in sorted(records):
            record = records[idx]
            if self.style is not None and record.ok:
                record.caption = self.style.apply(record.caption or "", record.path)
            columns["idx"].append(idx)
            for name in FIELDS:
                value = getattr(record, name)
                columns[name].append(
                    arrow_text(value) if name in ("path", "caption", "error", "model", "prompt") else value
                )
        table = pa.table(columns, schema=INDEXED_SCHEMA)
        return table if self.indexed else table.drop_columns(["idx"])


# -- Parquet file names ---------------------------------------------------------------------------


class RunFilenames(FilenameProvider):
    """`smolvlm-<run stamp>-<id>-<task>...parquet`: this run's files, named apart from every other
    run's (the stamp sorts by run for a reader; resume itself goes by modification time)."""

    def __init__(self, stamp: str):  # no super().__init__: its arguments vary across Ray versions
        self.stamp = stamp
        self.run_id = uuid.uuid4().hex[:12]
        self.dataset_uuid = None
        self.file_format = "parquet"

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        """Ray >= 2.5x (the writer appends `-<i>.parquet`)."""
        return f"smolvlm-{self.stamp}-{write_uuid}-{task_index:06d}"

    def get_filename_for_block(self, block: Any, *args: Any) -> str:
        """Older Ray: `(block, task_index, block_index)`, the whole file name."""
        task_index, block_index = args[-2], args[-1]
        return f"smolvlm-{self.stamp}-{self.run_id}-{task_index:06d}-{block_index}.parquet"
