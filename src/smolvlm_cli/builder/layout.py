"""Names and versions of built graphs: light enough for the runtime path (no onnx import)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from smolvlm_cli.dtypes import COMPONENTS, DTYPE_SUFFIXES

# Bump when the graphs the builder writes change: built-graph caches are keyed by it.
BUILDER_VERSION = "1"
MARKER_FILE = "smolvlm-graphs.json"  # beside graphs our builder wrote (`smolvlm export`)
# Metadata of our graphs: the runtime runs a `gqa` decoder over shared KV buffers.
DECODER_STYLE_KEY, DECODER_STYLE = "smolvlm.decoder_style", "gqa"
VISION_STYLE_KEY, VISION_STYLE = "smolvlm.vision_style", "fused"
LOGITS_KEY = "smolvlm.logits"


class Progress:
    """What a load reports. A build: `total(n)` units of work first, then `step(description)`
    after each (a layer, a quantized graph). A download: `downloads()` wraps a Hub download and
    gives the tqdm class huggingface_hub draws it with (None: its own bars). The base class
    reports nothing of a build and leaves downloads to huggingface_hub."""

    @contextlib.contextmanager
    def downloads(self) -> Iterator[type | None]:
        yield None

    def total(self, units: int) -> None:
        pass

    def step(self, description: str) -> None:
        pass


def graph_file(component: str, dtype: str) -> str:
    """`("decoder", "int8")` -> `decoder_model_merged_int8.onnx` (the Hub's names)."""
    return f"{COMPONENTS[component]}{DTYPE_SUFFIXES[dtype]}.onnx"


def data_file_name(graph_file_name: str) -> str:
    """The external data file beside a graph, as the Hub names it (`x.onnx` -> `x.onnx_data`)."""
    return graph_file_name + "_data"


def data_files(path: Path) -> list[Path]:
    """External-data files beside a graph: ours (`x.onnx_data`) or onnxruntime's (`x.onnx.data`)."""
    return [p for p in (path.with_name(data_file_name(path.name)), path.with_name(path.name + ".data")) if p.is_file()]


def remove_graph(path: Path) -> None:
    """Delete a graph and its external-data files (none missing is an error)."""
    for p in (path, *data_files(path)):
        p.unlink(missing_ok=True)


def graph_bytes(path: Path) -> int:
    """A graph's size on disk, its external data included."""
    return path.stat().st_size + sum(p.stat().st_size for p in data_files(path))


# A scratch folder (`.writing-*` of the session cache, `.fp32-*` of a build) older than this was
# left by a killed process (a SIGKILL or the OOM killer skips the cleanup): a live one is minutes
# old at most, and a left one can hold a model's weights twice over.
ABANDONED_AFTER_S = 3600


def sweep_abandoned(folder: Path, pattern: str) -> None:
    """Delete the scratch folders matching `pattern` in `folder` that killed processes left."""
    cutoff = time.time() - ABANDONED_AFTER_S
    for scratch in folder.glob(pattern):
        with contextlib.suppress(OSError):
            if scratch.is_dir() and scratch.stat().st_mtime < cutoff:
                shutil.rmtree(scratch, ignore_errors=True)
