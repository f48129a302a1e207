"""What a re-run still has to do, and the ledger that remembers sidecar runs' failures.

Every writer answers `state(item)`: NEW (no result), DONE (a result) or FAILED (the last attempt
failed). `plan` turns that into the work list:

- default: DONE and FAILED images are skipped (a failure is a result too: the file is bad);
- `retry_errors`: FAILED images are done again;
- `overwrite`: everything is done again.

JSONL and CSV outputs are their own state: the last record of a path counts. Sidecar (`txt`)
outputs keep theirs in a *ledger*, `.smolvlm-batch.jsonl`, in each folder that receives sidecars:
one JSON line per attempt, `{"image": "photo.jpg", "output": "photo.txt", "error": null, ...}`,
the last line of an image counting. A sidecar that exists is DONE whatever the ledger says (it
may come from another tool: never clobbered without `--overwrite`); deleting a sidecar makes its
image NEW again unless the ledger's last word is a failure.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.batch.files import append_once, repair_tail, rewrite
from smolvlm_cli.batch.records import ImageRecord, dumps, loads

LEDGER_NAME = ".smolvlm-batch.jsonl"


class State(enum.Enum):
    NEW = "new"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Plan:
    todo: list[ImageItem] = field(default_factory=list)
    done: list[ImageItem] = field(default_factory=list)  # skipped: already have a result
    failed: list[ImageItem] = field(default_factory=list)  # skipped: failed before
    retried: int = 0  # earlier failures in `todo`

    @property
    def skipped(self) -> int:
        return len(self.done) + len(self.failed)


def plan(items: Sequence[ImageItem], state_of: Callable[[ImageItem], State], *,
         overwrite: bool = False, retry_errors: bool = False) -> Plan:
    result = Plan()
    for item in items:
        state = State.NEW if overwrite else state_of(item)
        if state is State.DONE:
            result.done.append(item)
        elif state is State.FAILED and not retry_errors:
            result.failed.append(item)
        else:
            result.retried += state is State.FAILED
            result.todo.append(item)
    return result


@dataclass
class RecordIndex:
    """The last record per image (keyed by absolute path) of a JSONL/CSV results file."""

    last: dict[str, bool] = field(default_factory=dict)  # key -> ok
    superseded: int = 0  # records replaced by a later one for the same image
    unreadable: int = 0  # whole lines that are not records

    def add(self, record: ImageRecord, key: str) -> None:
        if key in self.last:
            self.superseded += 1
        self.last[key] = record.ok

    def state(self, key: str) -> State:
        ok = self.last.get(key)
        return State.NEW if ok is None else State.DONE if ok else State.FAILED


class Ledger:
    """The ledger of one sidecar folder (loaded on first use, torn last line repaired)."""

    def __init__(self, folder: Path):
        self.path = folder / LEDGER_NAME
        self.entries: dict[str, dict] = {}
        self.lines = 0
        self.repaired = False
        self._loaded = False

    def load(self) -> Ledger:
        if self._loaded:
            return self
        self._loaded = True
        records, self.repaired = repair_tail(self.path, "jsonl")
        for raw in records:
            try:
                entry = loads(raw)
                image = entry["image"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(image, str):
                self.entries[image] = entry
                self.lines += 1
        return self

    def last(self, image: str) -> dict | None:
        return self.load().entries.get(image)

    def add(self, image: str, output: str, record: ImageRecord) -> None:
        self.load()
        entry = {"image": image, "output": output, "error": record.error, "model": record.model,
                 "prompt": record.prompt, "generated_tokens": record.generated_tokens,
                 "seconds": record.seconds, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        append_once(self.path, (dumps(entry) + "\n").encode())
        self.entries[image] = entry
        self.lines += 1

    def compact(self) -> None:
        """Keep one line per image once re-runs have piled up superseded ones."""
        if self._loaded and self.lines > len(self.entries):
            rewrite(self.path, [(dumps(e) + "\n").encode()
                                for e in self.entries.values()])
            self.lines = len(self.entries)
