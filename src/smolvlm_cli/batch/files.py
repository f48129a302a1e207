"""Crash-safe file primitives for batch outputs: nothing written is ever half there.

- `atomic_write`: a temp file beside the target (`.NAME.PID.smolvlm-tmp`), fsync, rename. A
  killed run leaves at most a temp file, which `sweep_temps` removes on the next run.
- `AppendLog`: an append-only file of records (JSONL lines, CSV rows), one `write()` per record,
  with an advisory lock so two runs cannot interleave in one file.
- `complete_records`: split a file into whole records; what follows the last one (a line torn
  by a kill) is cut off by `repair_tail` before anything is appended.
- `rewrite`: replace a file's content atomically (compaction of superseded records).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from smolvlm_cli.errors import SmolVLMError

TEMP_SUFFIX = ".smolvlm-tmp"
_TEMP = re.compile(r"^\..+\.(\d+)" + re.escape(TEMP_SUFFIX) + r"$")

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


def temp_path(target: Path) -> Path:
    """`.NAME.PID.smolvlm-tmp` beside `target` (a hash for NAME when it is long: the temp name
    must fit the 255-byte limit whenever the target's does)."""
    name = target.name
    if len(os.fsencode(name)) > 200:
        name = hashlib.sha1(os.fsencode(name)).hexdigest()
    return target.parent / f".{name}.{os.getpid()}{TEMP_SUFFIX}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` naming `path` (the file the user knows, not a temp file), for the error line."""
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


def _append_whole(fd: int, data: bytes, path: Path) -> None:
    """Append `data` or nothing: a failed write (a full disk) is rolled back, no torn record."""
    start = os.fstat(fd).st_size
    try:
        _write_all(fd, data)
    except OSError as exc:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass  # the next run repairs the torn tail
        raise _named(exc, path) from exc


def atomic_write(target: Path, data: bytes, *, sync: bool = True) -> None:
    """Write `data` to `target` through a temp file and a rename (readers see old or new, whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (None, os.fspath(tmp)):
            raise _named(exc, target) from exc
        raise


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier process with the same id: we are not writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_temps(folder: Path) -> int:
    """Delete temp files left in `folder` by killed runs (whose process is gone); the count."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _TEMP.match(name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(folder / name)
                removed += 1
            except OSError:
                pass
    return removed


def complete_records(data: bytes, kind: str = "jsonl") -> tuple[list[bytes], int]:
    """The whole records of `data` (each with its line end) and the byte offset after the last.

    A JSONL record is a line; a CSV record may span lines inside a quoted field, so it ends at a
    line end where the count of `"` so far is even. Anything after the returned offset is torn.
    """
    records, start, pos = [], 0, 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        pos = end + 1
        if kind == "csv" and data.count(b'"', start, pos) % 2:
            continue  # inside a quoted field: the record goes on
        records.append(data[start:pos])
        start = pos
    return records, start


def read_records(path: Path, kind: str = "jsonl") -> tuple[list[bytes], bytes]:
    """`path`'s whole records and the torn tail after them (b"" when it ends cleanly).

    Nothing but regular files is read: a device or a FIFO (/dev/zero would never end) has
    nothing to resume.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return [], b""
        data = path.read_bytes()
    except FileNotFoundError:
        return [], b""
    records, end = complete_records(data, kind)
    return records, data[end:]


def cut_tail(path: Path, tail: bytes) -> None:
    """Cut `tail` (as returned by `read_records`) off the end of `path`."""
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.truncate(f.tell() - len(tail))
        f.flush()
        os.fsync(f.fileno())


def repair_tail(path: Path, kind: str = "jsonl") -> tuple[list[bytes], bool]:
    """Read `path`'s whole records; cut a torn last record off the file. (records, was_torn).

    Only for files known to be ours (the ledgers); writers check a file before cutting.
    """
    records, tail = read_records(path, kind)
    if tail:
        cut_tail(path, tail)
    return records, bool(tail)


def rewrite(path: Path, records: list[bytes]) -> None:
    atomic_write(path, b"".join(records))


class AppendLog:
    """An append-only record file: `append` is one write() of a whole record, then it is on disk
    as far as a killed process is concerned (fsync on `close`)."""

    def __init__(self, path: Path, *, lock: bool = True):
        self.path = path
        self._lock = lock
        self._fd: int | None = None

    def open(self) -> AppendLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if self._lock and fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SmolVLMError(
                    f"{self.path} is being written by another smolvlm batch run",
                    hint="wait for it to finish, or write to another file",
                ) from None
            except OSError:
                pass  # a file system without locks
        self._fd = fd
        return self

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size if self._fd is not None else self.path.stat().st_size

    def append(self, data: bytes) -> None:
        if self._fd is None:
            self.open()
        _append_whole(self._fd, data, self.path)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def append_once(path: Path, data: bytes) -> None:
    """Append one record to a small file opened just for it (the per-folder ledgers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _append_whole(fd, data, path)
    finally:
        os.close(fd)
