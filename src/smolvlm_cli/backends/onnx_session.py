"""ONNX Runtime sessions: options, and a cache of optimized graphs that makes start-up fast.

Optimizing a graph (fusions, constant folding) costs 0.5-2 s per graph at every start. The first
load of a graph saves ONNX Runtime's optimized version, with its weights in a separate data file,
in a cache directory next to the model (`onnx/.smolvlm-cache/`, or `sessions/` in smolvlm-cli's cache,
`user_cache.cache_root()`, when the model folder is read-only); later loads read that file with optimizations off. External
weights are memory-mapped by ONNX Runtime: the token-embedding table then only costs the rows
actually looked up, and no graph is held twice in memory while it loads.

The data file also holds the weights already packed into the matmul kernels' layout
(`session.save_external_prepacked_constant_initializers`): repacking ~0.9 GB of fp32 weights
was most of a later load (fp32 decoder + vision 0.74-1.01 s -> 0.51-0.72 s on a busy 2-core VM),
for ~60 MB more peak memory and a cache twice the size of the weights. ONNX Runtime's
`session.prepack.enable_parallel` was no faster on a busy machine and kept every unpacked
weight resident until the end (+320 MB peak for fp32).

The cache key covers the source file (name, size, mtime), ONNX Runtime's version and the CPU's
instruction sets, so a changed graph, runtime or machine never reuses a stale file.
`SMOLVLM_SESSION_CACHE=0` disables the cache; `SMOLVLM_SESSION_CACHE=/some/dir` moves it.

Thread settings for one-row decode steps (issue #18; int8 256M decoder, ~880 cached positions,
2-core AVX-512 VNNI VM, interleaved runs, median tok/s relative to these defaults: 2 threads,
spinning on; 105-110 tok/s): 1 thread 0.62x, spinning off 0.77-0.79x (1 thread without spinning
0.62x), `session.dynamic_block_base` 4 or 1 0.95-0.97x, on an idle and on a loaded machine
alike. The defaults stay, for every session.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from smolvlm_cli.builder.layout import data_files, sweep_abandoned
from smolvlm_cli.errors import BackendUnavailableError, ConfigError, SmolVLMError
from smolvlm_cli.user_cache import cache_root

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
CACHE_ENV = "SMOLVLM_SESSION_CACHE"
CACHE_DIRNAME = ".smolvlm-cache"
_ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "avx512_fp16",
    "asimd",
    "sve",
    "i8mm",
)
_OPT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # what the cache stores (portable ops)


def default_threads() -> int:
    """The CPUs this process may use (os.cpu_count would count CPUs outside our affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_SHARED_ARENA: bool | None = None


def shared_arena() -> bool:
    """One CPU arena for every session of the process (registered once).

    Sessions run one after another, so the vision encoder's scratch memory is reused by the
    decoder's prefill instead of each session keeping its own high-water mark: ~100 MB less
    peak memory for a 13-tile caption, at the same speed.
    """
    global _SHARED_ARENA
    if _SHARED_ARENA is None:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_ARENA = True
        except Exception:  # an older runtime without env allocators: per-session arenas
            _SHARED_ARENA = False
    return _SHARED_ARENA


def session_options(threads: int | None, optimize: bool = True, arena: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    if arena and shared_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not for users
    return opts


def _cpu_signature() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    present = sorted(set(flags.split()) & set(_ISA_FLAGS))
    return f"{platform.machine()}:{','.join(present)}"


_CACHE_FORMAT = "prepacked-1"  # bump when what the cache stores changes


def cache_key(path: Path) -> str:
    parts = [ort.__version__, _cpu_signature(), str(int(_OPT_LEVEL)), _CACHE_FORMAT]
    for p in (path, *data_files(path)):
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def cache_dir_for(path: Path) -> Path | None:
    """Where the optimized version of graph `path` lives (None: caching disabled)."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in ("0", "false", "no", "off"):
        return None
    if setting and setting.lower() not in ("1", "true", "yes", "on"):
        chosen = Path(setting).expanduser() / hashlib.sha256(str(path.resolve().parent).encode()).hexdigest()[:16]
        return chosen if _writable_dir(chosen) else None
    beside = path.parent / CACHE_DIRNAME
    if _writable_dir(beside):
        return beside
    try:  # the user's cache ($SMOLVLM_CACHE, ...): optional, so no home folder means no cache
        base = cache_root() / "sessions"
    except SmolVLMError:
        return None
    user = base / hashlib.sha256(str(path.resolve().parent).encode()).hexdigest()[:16]
    return user if _writable_dir(user) else None


def cached_graph(path: Path, writing: Callable[[], None] = lambda: None) -> Path | None:
    """The optimized copy of `path` in the cache, written now if missing (None if impossible);
    `writing` is called first when it is (seconds: worth a word to the user)."""
    cache = cache_dir_for(path)
    if cache is None:
        return None
    target = cache / f"{path.stem}.{cache_key(path)}.onnx"
    if target.is_file():
        return target
    writing()
    sweep_abandoned(cache, ".writing-*")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".writing-"))
    try:
        opts = session_options(1, arena=False)
        opts.graph_optimization_level = _OPT_LEVEL
        opts.optimized_model_filepath = str(tmp / target.name)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        # packed weights depend on the CPU's kernels: the key's instruction sets cover that
        opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for stale in cache.glob(f"{path.stem}.*.onnx*"):  # an older version of the same graph
            if stale.name.split(".")[0] == path.stem:
                stale.unlink(missing_ok=True)
        data = tmp / (target.name + ".data")
        if data.is_file():
            os.replace(data, cache / data.name)
        os.replace(tmp / target.name, target)  # last: the graph's presence marks a complete entry
        return target
    except Exception:  # a full disk or an unsaveable graph: run from the source instead
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_session(
    path: Path,
    threads: int | None,
    *,
    cache: bool = True,
    arena: bool = True,
    writing: Callable[[], None] = lambda: None,
) -> ort.InferenceSession:
    """A CPU session for graph `path` (from the optimized-graph cache when possible; `writing` is
    called before a missing cache entry is written)."""
    if not path.is_file():
        raise BackendUnavailableError(
            f"{path.name} not found in {path.parent}", hint="choose another --dtype, or export it with `smolvlm export`"
        )
    try:
        optimized = cached_graph(path, writing) if cache else None
        opts = session_options(threads, optimize=optimized is None, arena=arena)
        if optimized is not None:
            try:
                return ort.InferenceSession(str(optimized), opts, providers=["CPUExecutionProvider"])
            except Exception:  # a damaged cache entry: drop it and use the source
                for p in (optimized, optimized.with_name(optimized.name + ".data")):
                    p.unlink(missing_ok=True)
                opts = session_options(threads, arena=arena)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load {path}: {first_line}",
            hint="the file may be truncated or corrupt: download or export it again",
        ) from exc


def model_metadata(session: ort.InferenceSession) -> dict[str, str]:
    try:
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception:
        return {}
