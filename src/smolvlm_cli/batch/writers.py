"""Result writers: `txt` sidecars, a JSONL file and a CSV file (or either to stdout).

Every writer is engine-independent and works in three steps: `open(items)` (repair what a killed
run left, load the resume state), `state(item)` / `problem(item)` for planning, then `write(item,
record)` once per finished image (the result is on disk when it returns) and `close()`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.batch.files import AppendLog, atomic_write, cut_tail, read_records, repair_tail, rewrite, sweep_temps
from smolvlm_cli.batch.records import FIELDS, ImageRecord, csv_line, loads
from smolvlm_cli.batch.resume import IndexedOutput, Ledger, RecordIndex, State, record_key
from smolvlm_cli.errors import SmolVLMError

SIDECAR_SUFFIX = ".txt"
MAX_NAME_BYTES = 255  # most file systems' limit on one name


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def safe_join(root: Path, rel: str) -> Path:
    """`root/rel`, refusing anything that would leave `root` (absolute, `..`, drive letters)."""
    parts = (rel.replace(os.sep, "/") if os.sep != "/" else rel).split("/")
    if (
        not rel
        or rel.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or os.path.splitdrive(rel)[0]
        or "\0" in rel
    ):
        raise SmolVLMError(f"refusing to write outside {root}: {rel!r}")
    return root.joinpath(*parts)


class SidecarWriter:
    """`photo.jpg` -> `photo.txt` beside it, or mirrored under `output_dir` (same `rel`).

    When two images of a folder share a stem (`photo.jpg`, `photo.png`), the first in order
    gets `photo.txt` and the others their full name plus `.txt` (`photo.png.txt`).
    """

    name = "txt"

    def __init__(self, output_dir: Path | None = None):
        self.output_dir = output_dir
        self.sidecars: dict[ImageItem, Path] = {}
        self.problems: dict[ImageItem, str] = {}
        self.notices: list[str] = []
        self._ledgers: dict[Path, Ledger] = {}

    def describe(self) -> str:
        return f"sidecars under {self.output_dir}" if self.output_dir else "sidecars next to the images"

    def _base(self, item: ImageItem) -> Path:
        return safe_join(self.output_dir, item.rel) if self.output_dir else Path(item.path)

    def open(self, items: Sequence[ImageItem]) -> None:
        taken: dict[str, ImageItem] = {os.path.normcase(item.abspath).casefold(): item for item in items}
        candidates: dict[ImageItem, list[Path]] = {}
        for item in items:
            try:
                base = self._base(item)
            except SmolVLMError as exc:
                self.problems[item] = exc.message
                continue
            stem = os.path.splitext(base.name)[0] or base.name
            candidates[item] = [base.with_name(stem + SIDECAR_SUFFIX), base.with_name(base.name + SIDECAR_SUFFIX)]
        # Names follow the order of the images, so adding `photo.bmp` beside `photo.jpg`, or
        # deleting `photo.jpg` beside `photo.png`, would hand one image's `photo.txt` to another
        # (counted done, its prompt unchecked). The ledger's word comes first: an image keeps the
        # name it was captioned under, and a caption the ledger gives another image is not taken.
        captions: dict[Path, dict[str, str]] = {}  # folder -> {caption file on disk: its image}
        for paths in candidates.values():
            folder = paths[0].parent
            if folder not in captions:
                entries = self._ledger_at(folder).entries.items()
                on_disk = {e.get("output"): image for image, e in entries if e.get("output")}
                captions[folder] = {name: image for name, image in on_disk.items() if (folder / name).exists()}
        chosen: dict[ImageItem, Path] = {}
        for item, paths in candidates.items():
            kept = next((p for p in paths if captions[p.parent].get(p.name) == item.name), None)
            if kept is not None and self._claim(kept, item, taken):
                chosen[item] = kept
        for item, paths in candidates.items():
            if item in chosen:
                continue
            free = (
                p
                for p in paths
                if captions[p.parent].get(p.name, item.name) == item.name and len(os.fsencode(p.name)) <= MAX_NAME_BYTES
            )
            name = next((p for p in free if self._claim(p, item, taken)), None)
            if name is not None:
                chosen[item] = name
            else:
                self.problems[item] = (
                    f"no name for its caption file: {paths[-1].name} would be too long, overwrite "
                    "another file of the run, or take another image's caption"
                )
        for item, candidate in chosen.items():
            # A folder (or a FIFO, a device) named like the caption is no caption: counting it as
            # one would skip the image for ever, and no caption could be written there.
            if candidate.exists() and not candidate.is_file():
                self.problems[item] = f"{candidate} is not a regular file: no caption can be written there"
                continue
            self.sidecars[item] = candidate
        swept = sum(sweep_temps(folder) for folder in {p.parent for p in self.sidecars.values()})
        if swept:
            self.notices.append(f"removed {swept} temp file(s) left by an interrupted run")

    @staticmethod
    def _claim(path: Path, item: ImageItem, taken: dict[str, ImageItem]) -> bool:
        """Take `path` for `item` unless another file of the run (an image, a caption) has it."""
        key = os.path.normcase(os.path.abspath(path)).casefold()
        if key in taken:
            return False
        taken[key] = item
        return True

    def _ledger_at(self, folder: Path) -> Ledger:
        if folder not in self._ledgers:
            ledger = self._ledgers[folder] = Ledger(folder).load()
            if ledger.repaired:
                self.notices.append(f"repaired a torn last line in {ledger.path}")
        return self._ledgers[folder]

    def _ledger(self, item: ImageItem) -> Ledger:
        return self._ledger_at(self.sidecars[item].parent)

    def problem(self, item: ImageItem) -> str | None:
        return self.problems.get(item)

    def state(self, item: ImageItem) -> State:
        if item in self.problems:
            return State.NEW
        if self.sidecars[item].exists():
            return State.DONE
        last = self._ledger(item).last(item.name)
        return State.FAILED if last is not None and last.get("error") else State.NEW

    def made_with(self, item: ImageItem) -> tuple[str, str] | None:
        """(model, prompt) of the sidecar, from the ledger; None when the ledger does not
        know it (a sidecar of another tool, or a failed last attempt)."""
        if item in self.problems:
            return None
        last = self._ledger(item).last(item.name)
        if last is None or last.get("error") or last.get("output") != self.sidecars[item].name:
            return None
        return str(last.get("model") or ""), str(last.get("prompt") or "")

    def write(self, item: ImageItem, record: ImageRecord) -> None:
        sidecar = self.sidecars.get(item)
        if sidecar is None:  # a path problem: nowhere to keep a result or a ledger line
            return
        # Crash order: a run killed between these steps must leave a sidecar only where the
        # ledger's last line says what made it. So a caption being replaced (--overwrite) goes
        # first, then the ledger line, then the new caption: a kill in between leaves no sidecar
        # (the image is NEW again: done once more), never a sidecar the ledger does not know
        # (it would pass for another tool's file) or an old caption under the new prompt.
        # A failed redo removes the old caption too: the image ends as a failure, as in a JSONL
        # or CSV output (whose failure record supersedes the old one), and --retry-errors redoes
        # it; kept, the old caption would pass for another tool's file, its prompt unchecked.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar)
        self._ledger(item).add(item.name, sidecar.name, record)
        if record.ok:
            atomic_write(sidecar, (record.caption or "").encode() + b"\n")

    def close(self, compact: bool = True) -> None:
        for ledger in self._ledgers.values() if compact else ():
            ledger.compact()


class RecordFileWriter(IndexedOutput):
    """Records appended to one file (one write per record) or streamed to stdout.

    The file is its own resume state: on `open`, a torn last record is cut off and the last
    record of each image decides its state. `close` compacts the file (one record per image,
    where it first appeared, with its latest content) when re-runs superseded records.
    """

    name = "jsonl"
    kind = "jsonl"

    def __init__(self, path: Path | None, out: Callable[[str], None] | None = None):
        self.path = path  # None: stdout, no resume
        self.out = out or _stdout_write
        self.index = RecordIndex()
        self.notices: list[str] = []
        self._log: AppendLog | None = None
        self._started = False
        self._stream = False  # not a regular file: nothing to read back, resume or compact

    def describe(self) -> str:
        return f"{self.name.upper()} to {self.path}" if self.path else f"{self.name.upper()} to stdout"

    # format hooks -------------------------------------------------------------------------
    def format_record(self, record: ImageRecord) -> str:
        return record.to_json() + "\n"

    def parse_record(self, raw: bytes) -> ImageRecord:
        return ImageRecord.from_dict(loads(raw))

    def start(self) -> str:
        return ""  # text that opens an empty file (a CSV header)

    def check_start(self, first: bytes) -> None:
        """Refuse a file that `start()` did not open (someone else's CSV)."""

    # protocol -------------------------------------------------------------------------------
    def open(self, items: Sequence[ImageItem]) -> None:
        if self.path is None:
            return
        if self.path.is_dir():
            raise SmolVLMError(f"--output {self.path} is a folder", hint="give a file name")
        if self.path.exists() and not self.path.is_file():  # /dev/stdout, a FIFO: write only
            self._log = AppendLog(self.path, lock=False).open()
            self._stream = True
            return
        sweep_temps(self.path.parent)
        self._log = AppendLog(self.path).open()  # locked before anything is read or repaired
        try:
            self._load()
        except BaseException:
            self._log.close()
            self._log = None
            raise

    def _load(self) -> None:
        records, tail = read_records(self.path, self.kind)
        has_start = bool(records and self.start())
        if has_start:
            self.check_start(records[0])  # refuses someone else's CSV
            records = records[1:]
        for raw in records:
            try:
                record = self.parse_record(raw)
            except (ValueError, TypeError):
                self.index.unreadable += 1
                continue
            self.index.add(record, record_key(record.path, self.path.parent))
        ours = has_start or bool(self.index.last)
        if not ours and (records or (tail and not self._opens_a_record(tail))):
            raise SmolVLMError(
                f"{self.path} does not look like a smolvlm batch {self.name} file",
                hint="write to a new file with -o (nothing was changed)",
            )
        # only now that the file is known to be ours: cut what a killed run left half-written
        if tail:
            cut_tail(self.path, tail)
            self.notices.append(f"repaired a torn last record in {self.path} (from an interrupted run)")
        self._started = self._log.size > 0
        if self.index.unreadable:
            self.notices.append(f"kept {self.index.unreadable} unreadable line(s) of {self.path} as they are")

    def _opens_a_record(self, tail: bytes) -> bool:
        """A file holding only a torn first write: is it the start of one of ours?"""
        opening = (self.start() or self.format_record(ImageRecord("x"))[:10]).encode()
        size = min(len(tail), len(opening))
        return size > 0 and tail[:size] == opening[:size]

    def write(self, item: ImageItem, record: ImageRecord) -> None:
        text = self.format_record(record)
        if not self._started:
            text = self.start() + text
            self._started = True
        if self._log is None:
            self.out(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            return
        self._log.append(text.encode("utf-8", "surrogateescape"))
        self.index.add(record, item.abspath)

    def close(self, compact: bool = True) -> None:
        """Sync and close; with `compact`, drop the records later ones superseded."""
        if self._log is None:
            return
        try:
            if compact and self.index.superseded and not self._stream:
                self._compact()
        finally:
            self._log.close()
            self._log = None

    def _compact(self) -> None:
        records, _ = repair_tail(self.path, self.kind)
        head = [records.pop(0)] if records and self.start() else []
        order: dict[object, bytes] = {}
        for n, raw in enumerate(records):
            try:
                key: object = record_key(self.parse_record(raw).path, self.path.parent)
            except (ValueError, TypeError):
                key = n  # not a record: kept where it is
            order[key] = raw  # dicts keep the first position, the update takes the last content
        rewrite(self.path, head + list(order.values()))


class JsonlWriter(RecordFileWriter):
    name = kind = "jsonl"


class CsvWriter(RecordFileWriter):
    """RFC 4180 CSV with a header row; captions with line breaks are quoted, rows append-safe."""

    name = kind = "csv"

    def format_record(self, record: ImageRecord) -> str:
        return csv_line(record.to_row())

    def _header(self, raw: bytes) -> list[str]:
        return next(csv.reader([raw.decode("utf-8", "surrogateescape").rstrip("\r\n")]), [])

    def parse_record(self, raw: bytes) -> ImageRecord:
        row = next(csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline="")), None)
        if row is None:
            raise ValueError("empty row")
        return ImageRecord.from_row(list(FIELDS), row)

    def start(self) -> str:
        return csv_line(list(FIELDS))

    def check_start(self, first: bytes) -> None:
        if self._header(first) != list(FIELDS):
            raise SmolVLMError(
                f"{self.path} has other columns than smolvlm batch writes", hint="write to a new file with -o"
            )


def make_writer(fmt: str, *, output: str | None, output_dir: Path | None, out: Callable[[str], None] | None = None):
    """The writer for `--format` / `--output` / `--output-dir` (see the CLI for the defaults)."""
    if fmt == "txt":
        return SidecarWriter(output_dir)
    path = None if output in (None, "-") else Path(output)
    cls = {"jsonl": JsonlWriter, "csv": CsvWriter}[fmt]
    return cls(path, out)
