"""What a re-run still has to do, and the ledger that remembers sidecar runs' failures.

Every writer answers `state(item)`: NEW (no result), DONE (a result) or FAILED (the last attempt
failed). `plan` turns that into the work list:

- default: DONE and FAILED images are skipped (a failure is a result too: the file is bad),
  unless a DONE result was made with another prompt or model: then the run is refused
  (`check_made_with`), as keeping it would silently mix captions of two settings;
- `retry_errors`: FAILED images are done again;
- `overwrite`: everything is done again;
- `resume_any`: DONE results are kept whatever prompt or model made them.

JSONL and CSV outputs are their own state: the last record of a path counts. Sidecar (`txt`)
outputs keep theirs in a *ledger*, `.smolvlm-batch.jsonl`, in each folder that receives sidecars:
one JSON line per attempt, `{"image": "photo.jpg", "output": "photo.txt", "error": null, ...}`,
the last line of an image counting. A sidecar that exists is DONE whatever the ledger says (it
may come from another tool: never clobbered without `--overwrite`); deleting a sidecar makes its
image NEW again unless the ledger's last word is a failure. A redo that fails (`--overwrite`)
removes the old sidecar, so a failure's image has none, as after a first attempt.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.batch.files import append_once, repair_tail, rewrite
from smolvlm_cli.batch.records import ImageRecord, dumps, loads
from smolvlm_cli.errors import SmolVLMError

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


def plan(
    items: Sequence[ImageItem],
    state_of: Callable[[ImageItem], State],
    *,
    overwrite: bool = False,
    retry_errors: bool = False,
) -> Plan:
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


def _same_model(a: str, b: str) -> bool:
    """Hub ids compare as text; two spellings of one local folder are the same model."""
    if a == b:
        return True
    return os.path.isdir(a) and os.path.isdir(b) and os.path.realpath(a) == os.path.realpath(b)


def check_made_with(
    done: Sequence[ImageItem],
    made_with: Callable[[ImageItem], tuple[str, str] | None],
    model: str,
    prompt_of: Callable[[ImageItem], str],
) -> None:
    """Refuse to keep results made with another prompt or model than this run's.

    A result that does not say what made it (a sidecar written by another tool) is kept.
    """
    prompts, models = [], []
    for item in done:
        made = made_with(item)
        if made is None:
            continue
        old_model, old_prompt = made
        if old_prompt and old_prompt != prompt_of(item):
            prompts.append((item, old_prompt))
        elif old_model and model and not _same_model(old_model, model):
            models.append((item, old_model))
    if not prompts and not models:
        return
    item, old = (prompts or models)[0]
    what = "prompt" if prompts else "model"
    count = len(prompts) + len(models)
    raise SmolVLMError(
        f"{count} of the {len(done)} image(s) already done were captioned with another {what} "
        f"(e.g. {item.path}: {old!r})",
        hint="--overwrite captions them again with this run's settings; --resume-any keeps them "
        "and captions only the rest; or write elsewhere (--output / --output-dir)",
    )


def record_key(path: str, home: str | Path) -> str:
    """The image a record's `path` names, as an absolute path (the key of resume).

    Paths are recorded as typed, so a relative one is read from the current folder; when it
    names no file from here but does from `home` (the output's folder), it is read from there:
    a re-run from another folder of a run that wrote its output beside it still resumes.
    """
    here = os.path.abspath(path)
    if os.path.isabs(path) or os.path.lexists(here):
        return here
    there = os.path.abspath(os.path.join(home, path))
    return there if os.path.lexists(there) else here


@dataclass
class RecordIndex:
    """The last record per image (keyed by `record_key`) of a JSONL/CSV results file."""

    last: dict[str, bool] = field(default_factory=dict)  # key -> ok
    made: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (model, prompt)
    superseded: int = 0  # records replaced by a later one for the same image
    unreadable: int = 0  # whole lines that are not records

    def add(self, record: ImageRecord, key: str) -> None:
        if key in self.last:
            self.superseded += 1
        self.last[key] = record.ok
        self.made[key] = (record.model, record.prompt)

    def made_with(self, key: str) -> tuple[str, str] | None:
        return self.made.get(key) if self.last.get(key) else None

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
        entry = {
            "image": image,
            "output": output,
            "error": record.error,
            "model": record.model,
            "prompt": record.prompt,
            "generated_tokens": record.generated_tokens,
            "seconds": record.seconds,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        append_once(self.path, (dumps(entry) + "\n").encode())
        self.entries[image] = entry
        self.lines += 1

    def compact(self) -> None:
        """Keep one line per image once re-runs have piled up superseded ones."""
        if self._loaded and self.lines > len(self.entries):
            rewrite(self.path, [(dumps(e) + "\n").encode() for e in self.entries.values()])
            self.lines = len(self.entries)


class IndexedOutput:
    """An output whose own records say what is done (a JSONL/CSV file, a Parquet folder): the
    writer methods the runner asks, answered from its `RecordIndex`."""

    index: RecordIndex

    def problem(self, item: ImageItem) -> str | None:
        return None

    def state(self, item: ImageItem) -> State:
        return self.index.state(item.abspath)

    def made_with(self, item: ImageItem) -> tuple[str, str] | None:
        return self.index.made_with(item.abspath)
