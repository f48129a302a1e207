"""Fixtures that build random-weight checkpoints and ONNX exports (owned by the exporter work).

Tiny models (2 layers, hidden 64, ~6.6 M parameters; the real tile size, vocabulary and
special tokens; images resized to 1024 px, not 2048, so a split makes at most 2x2 tiles + the
global one) are built once per session, lazily, and only for what a test asks:

- `tiny_checkpoints[name]`: a tiny transformers checkpoint directory (model.safetensors + every
  config/tokenizer/processor file); `tiny_checkpoint_factory(name)` is the same as a call.
- `tiny_onnx_dir(name, dtypes=("fp32",), style="fast")`: a directory in the Hub layout holding
  the tiny checkpoint *and* `onnx/` graphs for `dtypes` (so the torch and ONNX backends load the
  same directory), cached by (name, dtypes, style); a cached export with more dtypes is reused.
  `style="fast"` is our builder's graphs (GroupQueryAttention decoder with last-position
  logits, fused vision graph, no torch); `style="official"` gives graphs of exactly the Hub's
  contract (traced decoder with position_ids and concatenated presents, plain vision graph): run
  them with `graphs="hub"`, since by default a folder with safetensors runs our built graphs.
- `tiny_onnx[name]`: `tiny_onnx_dir(name, ("fp32", "int8", "q4"))`.

`name` is a fixture model name: "SmolVLM2-256M-Video-Instruct" (smolvlm) or
"SmolVLM-256M-Instruct" (idefics3). A checkpoint takes ~1 s, an fp32 export ~1 s, each extra
dtype well under 1 s. `build_tiny_model(name, out_root, dtypes)` does the same outside pytest
(scripts, benchmarks). Fixtures need the `export` extra (torch, transformers, onnx).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from smolvlm_cli.dtypes import default_dtypes

TINY_MODEL_NAMES = ("SmolVLM2-256M-Video-Instruct", "SmolVLM-256M-Instruct")
_ALL_DTYPES = ("fp32", "fp16", "int8", "q4")
# Tiles along an image's longest edge: up to a 2x2 grid + the global tile (5 tiles, not 13-17).
# The tiny vision encoder and the 2048-px resize were most of the suite's image work; the
# real models' resize is checked against transformers in test_image_processing.
TINY_RESIZE_TILES = 2
_REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "TINY_MODEL_NAMES",
    "build_tiny_checkpoint",
    "build_tiny_model",
    "source_dir",
    "tiny_preprocessor_config",
    "tiny_checkpoint_factory",
    "tiny_checkpoints",
    "tiny_onnx_dir",
    "tiny_onnx",
]


def source_dir(name: str) -> Path:
    """The real config/tokenizer files of a fixture model (same lookup as conftest.fixture_dir)."""
    root = Path(os.environ.get("SMOLVLM_FIXTURES", _REPO.parent / "shared" / "fixtures"))
    path = root / name
    if not (path / "config.json").is_file():
        raise RuntimeError(f"fixture {path} missing: ../shared/fixtures must sit beside the repo")
    return path


def _dtypes(dtypes) -> tuple[str, ...]:
    if isinstance(dtypes, str):
        dtypes = dtypes.split(",")
    wanted = {d.strip().lower() for d in dtypes if d and d.strip()}
    unknown = wanted - set(_ALL_DTYPES)
    if unknown:
        raise ValueError(f"unknown dtype(s) {sorted(unknown)}; choose from {_ALL_DTYPES}")
    return tuple(d for d in _ALL_DTYPES if d in wanted)


def _has_graphs(model_dir: Path, dtype: str) -> bool:
    from smolvlm_cli.dtypes import DTYPE_SUFFIXES

    return all(
        (model_dir / "onnx" / f"{g}{DTYPE_SUFFIXES[dtype]}.onnx").is_file()
        for g in ("vision_encoder", "embed_tokens", "decoder_model_merged")
    )


def _clone(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a checkpoint's files into a new directory."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not (dst / path.name).exists():
            try:
                os.link(path, dst / path.name)
            except OSError:
                shutil.copyfile(path, dst / path.name)


def build_tiny_checkpoint(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random checkpoint of fixture model `name` in `out_dir` (reused if already there)."""
    from smolvlm_cli.export.checkpoint import make_random_checkpoint

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        return out_dir
    make_random_checkpoint(source_dir(name), out_dir, tiny=True, seed=seed)
    path = out_dir / "preprocessor_config.json"
    config = tiny_preprocessor_config(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def tiny_preprocessor_config(config: dict) -> dict:
    """A real preprocessor_config.json's values for the tiny models: images resized to
    TINY_RESIZE_TILES tiles along the longest edge (the real models: 4)."""
    return {**config, "size": {"longest_edge": TINY_RESIZE_TILES * config["max_image_size"]["longest_edge"]}}


STYLES = {"fast": {}, "official": {"style": "official"}}


def build_tiny_model(
    name: str,
    out_root: str | Path,
    dtypes=("fp32",),
    *,
    check: bool = False,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    style: str = "fast",
) -> Path:
    """`out_root/name`: a tiny checkpoint plus `onnx/` graphs for `dtypes` (missing ones only).

    `checkpoint` reuses an existing tiny checkpoint directory (hard-linked) instead of building
    one. `dtypes=()` gives the checkpoint alone. `style` is "fast" (the exporter's default
    graphs) or "official" (the Hub's contract). Returns the model directory.
    """
    from smolvlm_cli.export.onnx_export import export_onnx

    model_dir = Path(out_root) / name
    if checkpoint is not None:
        _clone(Path(checkpoint), model_dir)
    build_tiny_checkpoint(name, model_dir, seed=seed)
    missing = tuple(d for d in _dtypes(dtypes) if not _has_graphs(model_dir, d))
    if missing:
        export_onnx(model_dir, model_dir, dtypes=missing, check=check, log=lambda _msg: None, **STYLES[style])
    return model_dir


def _shared_root(tmp_path_factory, name: str) -> Path:
    """A folder for built models that every pytest-xdist worker of this run shares (the run's
    base temp folder), or this session's own without xdist: each model is built once a run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwK -> pytest-N
    root = base / name
    root.mkdir(exist_ok=True)
    return root


def _locked(root: Path, key: str):
    """A lock across workers while one of them builds `key` under `root`."""
    from filelock import FileLock

    return FileLock(str(root / f".{key}.lock"))


class _LazyDirs(Mapping):
    """A read-only {model name: directory} that builds each entry on first access."""

    def __init__(self, build, names=TINY_MODEL_NAMES):
        self._build, self._names = build, tuple(names)

    def __getitem__(self, name: str) -> Path:
        if name not in self._names:
            raise KeyError(f"{name!r} is not a tiny fixture model (choose from {self._names})")
        return self._build(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory):
    """name -> tiny random checkpoint directory, built once per run."""
    root = _shared_root(tmp_path_factory, "tiny-checkpoints")
    cache: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in cache:
            with _locked(root, name):
                cache[name] = build_tiny_checkpoint(name, root / name)
        return cache[name]

    return build


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_checkpoint_factory) -> Mapping[str, Path]:
    """{model name: tiny checkpoint directory}, built on first access."""
    return _LazyDirs(tiny_checkpoint_factory)


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, tiny_checkpoint_factory):
    """(name, dtypes=("fp32",), style="fast") -> directory with the tiny checkpoint and its ONNX graphs."""
    root = _shared_root(tmp_path_factory, "tiny-onnx")
    cache: dict[tuple[str, tuple[str, ...], str], Path] = {}

    def build(name: str, dtypes=("fp32",), style: str = "fast") -> Path:
        if style not in STYLES:
            raise ValueError(f"unknown export style {style!r} (choose from {', '.join(STYLES)})")
        key = (name, _dtypes(dtypes), style)
        defaults = set(default_dtypes().values())
        for (cached_name, cached_dtypes, cached_style), path in cache.items():
            # a folder with more variants will do, unless the extra ones change what the default
            # dtype loads (an fp32-only folder must not turn into an int8 one)
            if (
                cached_name == name
                and cached_style == style
                and set(key[1]) <= set(cached_dtypes)
                and defaults & set(key[1]) == defaults & set(cached_dtypes)
            ):
                return path
        folder = f"{style}-{'-'.join(key[1])}"
        checkpoint = tiny_checkpoint_factory(name)
        with _locked(root, f"{folder}-{name}"):
            cache[key] = build_tiny_model(name, root / folder, key[1], checkpoint=checkpoint, style=style)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def tiny_onnx(tiny_onnx_dir) -> Mapping[str, Path]:
    """{model name: tiny checkpoint + fp32, int8 and q4 ONNX graphs}, built on first access."""
    return _LazyDirs(lambda name: tiny_onnx_dir(name, ("fp32", "int8", "q4")))
