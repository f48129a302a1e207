"""The cache of built graphs: one folder per checkpoint, builder and runtime, one graph per dtype.

    entry = ensure_graphs(snapshot_dir, {"vision": "int8", ...}, label="org/name")
    OnnxBackend(entry, ...)  # loads entry/onnx/*.onnx

An entry lives at `<cache>/graphs/<label>/<key>/onnx/`, where the key hashes the checkpoint
(config.json's bytes; each weight file's Hub blob id, or its size and mtime), BUILDER_VERSION and
ONNX Runtime's version: new weights, a new builder or a new runtime never reuse an old graph.
The cache is `$SMOLVLM_CACHE`, else `$XDG_CACHE_HOME/smolvlm-cli`, else `~/.cache/smolvlm-cli`.

Faults: graphs are built in a scratch folder and moved in (data first, graph next, its `.built`
manifest last); only a graph whose manifest matches its files counts, so a build killed half-way
leaves nothing that looks finished. Builds hold a file lock (two first runs: one builds, the other
waits and loads). The manifest holds each file's size and a hash of sampled blocks: a truncated
or overwritten file is found at load time and rebuilt with a notice. (A single flipped byte in the
middle of a large weight file can go unnoticed: hashing whole files would cost seconds a run.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from smolvlm_cli.batch.files import atomic_write
from smolvlm_cli.builder.layout import BUILDER_VERSION, Progress, data_files, graph_file, remove_graph
from smolvlm_cli.builder.weights import weight_files
from smolvlm_cli.errors import SmolVLMError
from smolvlm_cli.user_cache import CACHE_ENV, cache_root

MANIFEST_SUFFIX = ".built"
_SAMPLE = 1 << 16  # bytes per sampled block
_BLOCKS = 64


def graphs_root() -> Path:
    return cache_root() / "graphs"


def _file_id(path: Path) -> str:
    """A Hub snapshot's files are links to blobs named by their hash: that names the content.
    Other files are known by size and modification time."""
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs":
        return f"{path.name}:{target.name}"
    st = target.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def checkpoint_key(model_dir: Path) -> str:
    h = hashlib.sha256()
    h.update((Path(model_dir) / "config.json").read_bytes())
    for path in weight_files(model_dir):
        h.update(_file_id(path).encode())
    h.update(f"|builder {BUILDER_VERSION}|onnxruntime {ort.__version__}".encode())
    return h.hexdigest()[:16]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", label).strip("-.") or "model"


def entry_dir(model_dir: Path, label: str) -> Path:
    return graphs_root() / _slug(label) / checkpoint_key(model_dir)


def _sample_hash(path: Path) -> str:
    """sha256 of the whole file when small, else of `_BLOCKS` evenly spread blocks and the tail."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SAMPLE * _BLOCKS:
            h.update(f.read())
        else:
            for i in range(_BLOCKS):
                f.seek(i * (size - _SAMPLE) // (_BLOCKS - 1))
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _graph_files(graph: Path) -> list[Path]:
    return [graph, *data_files(graph)]


def _manifest(graph: Path) -> Path:
    return graph.with_name(graph.name + MANIFEST_SUFFIX)


def _write_manifest(graph: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sample_sha256": _sample_hash(p)} for p in _graph_files(graph)}
    tmp = _manifest(graph).with_suffix(".tmp")
    tmp.write_text(json.dumps({"builder": BUILDER_VERSION, "files": files}) + "\n", encoding="utf-8")
    os.replace(tmp, _manifest(graph))


def graph_state(graph: Path) -> str:
    """ "ok", "missing" (never finished) or "damaged" (finished, then changed or truncated)."""
    manifest = _manifest(graph)
    if not manifest.is_file():
        return "missing"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        for name, info in files.items():
            path = graph.with_name(name)
            if path.stat().st_size != info["size"] or _sample_hash(path) != info["sample_sha256"]:
                return "damaged"
        return "ok"
    except (OSError, ValueError, KeyError, TypeError):
        return "damaged"


def _discard(graph: Path) -> None:
    _manifest(graph).unlink(missing_ok=True)
    remove_graph(graph)


def ensure_graphs(
    model_dir: str | Path,
    dtypes: dict[str, str],
    label: str,
    progress: Progress | None = None,
    notice: Callable[[str], None] = lambda _m: None,
) -> Path:
    """The cache entry holding `dtypes`' graphs ({component: dtype}), built now if needed.

    `notice` gets one line for a damaged graph being rebuilt; `progress` hears from a build only
    (a caller's progress bar appears only then).
    """
    from filelock import FileLock

    model_dir = Path(model_dir)
    entry = entry_dir(model_dir, label)
    onnx_dir = entry / "onnx"
    wanted = sorted(dtypes.items())
    if all(graph_state(onnx_dir / graph_file(c, d)) == "ok" for c, d in wanted):
        return entry
    lock = FileLock(str(entry / ".lock"))
    try:
        onnx_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:  # a file in the way, no permission, a read-only disk or cache
        raise SmolVLMError(
            f"cannot use the graph cache {cache_root()}: {exc.strerror or exc}",
            hint=f"set {CACHE_ENV} to a folder you can write (or --graphs hub to run a repo's own graphs)",
        ) from exc
    try:
        for stale in entry.glob(".build-*"):  # a killed build's scratch: nobody else builds now
            shutil.rmtree(stale, ignore_errors=True)
        todo = []
        for component, dtype in wanted:
            graph = onnx_dir / graph_file(component, dtype)
            state = graph_state(graph)
            if state == "damaged":
                notice(f"the built graph {graph.name} in {entry} is damaged: rebuilding it")
            if state != "ok":
                _discard(graph)
                todo.append((component, dtype))
        if todo:
            _build_into(model_dir, entry, onnx_dir, todo, progress)
        _write_source(entry, model_dir, label)
    finally:
        lock.release()
    return entry


def _build_into(model_dir: Path, entry: Path, onnx_dir: Path, todo, progress) -> None:
    # the builder (onnx, the quantizers) loads only when a graph is missing: not on every run
    from smolvlm_cli.builder.build import build_graphs, place_graph

    scratch = Path(tempfile.mkdtemp(dir=entry, prefix=".build-"))
    try:
        # a finished fp32 graph of the entry spares rebuilding it for its variants; an unfinished
        # one (a killed build's leftover) must not be quantized from
        for component, _ in todo:
            fp32 = onnx_dir / graph_file(component, "fp32")
            if graph_state(fp32) != "ok":
                _discard(fp32)
        built = build_graphs(model_dir, scratch, todo, progress, fp32_from=onnx_dir)
        for graph in built:
            _write_manifest(place_graph(graph, onnx_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_source(entry: Path, model_dir: Path, label: str) -> None:
    """The entry's label for `smolvlm models`, written once; again if a kill tore it."""
    path = entry / "source.json"
    try:
        if isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
            return
    except (OSError, ValueError):
        pass
    source = str(model_dir.resolve())  # absolute: `models` shows where a local model is
    info = {"model": label, "source": source, "builder": BUILDER_VERSION, "onnxruntime": ort.__version__}
    atomic_write(path, (json.dumps(info, indent=2) + "\n").encode())


def built_entries() -> list[dict]:
    """Every cache entry: {"model", "source" (the folder it was built from), "path", "graphs":
    {file: bytes}, "bytes"} (sizes with the session cache beside the graphs)."""
    rows = []
    root = graphs_root()
    if not root.is_dir():
        return rows
    for source in sorted(root.glob("*/*/source.json")):
        entry = source.parent
        try:
            info = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        info = info if isinstance(info, dict) else {}  # `null` or a list: damaged, a label falls back
        model, origin = info.get("model", entry.parent.name), info.get("source")
        graphs = {
            g.name: sum(p.stat().st_size for p in _graph_files(g))
            for g in sorted((entry / "onnx").glob("*.onnx"))
            if graph_state(g) == "ok"
        }
        total = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        rows.append({"model": model, "source": origin, "path": str(entry), "graphs": graphs, "bytes": total})
    return rows
