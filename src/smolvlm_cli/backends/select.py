"""Which graphs a model runs on, and where they come from.

`--graphs` (`graphs=`) chooses the source of the ONNX graphs:
- `auto` (default): a folder holding our graphs (`smolvlm export`) runs them; otherwise our fast
  graphs are built once from the checkpoint's safetensors into the cache (`builder/cache.py`);
  a folder or Hub repo without safetensors runs its own `onnx/` graphs.
- `build`: always our graphs built from the safetensors.
- `hub`: the repo's or folder's own `onnx/` graphs (Hugging Face's contract): a smaller download
  for the Hub's 256M/500M repos, at a slower vision encoder and decoder.
The torch backend loads the safetensors through transformers (the `torch` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smolvlm_cli.backends import BACKENDS, GRAPH_SOURCES
from smolvlm_cli.builder.layout import MARKER_FILE, Progress
from smolvlm_cli.dtypes import EXPORT_DTYPES, FALLBACK_DTYPE, format_dtype, parse_dtype
from smolvlm_cli.errors import BackendUnavailableError
from smolvlm_cli.extras import install_command
from smolvlm_cli.hub import files_for, has_onnx, has_torch_weights, is_local, offline, resolve_model


@dataclass(frozen=True)
class Selection:
    """The chosen backend; `model_dir` holds the config and tokenizer files, `graphs_dir` the
    `onnx/` folder the ONNX backend loads (None for torch)."""

    backend: str
    model_dir: Path
    graphs_dir: Path | None = None


def model_label(model: str, model_dir: Path) -> str:
    """The name a model's built graphs are filed under: its Hub id (also when given as a Hub
    snapshot folder, as Ray workers get it), else the folder's name."""
    if not is_local(model):
        return model
    snapshot = model_dir.resolve()
    repo = snapshot.parent.parent.name  # <cache>/models--org--name/snapshots/<revision>
    if snapshot.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--") :].replace("--", "/")
    return snapshot.name


def _ours(model_dir: Path, dtype: str | None) -> bool:
    return (model_dir / "onnx" / MARKER_FILE).is_file() and has_onnx(model_dir, dtype)


def _buildable(dtype: str | None) -> bool:
    return all(d in EXPORT_DTYPES for d in parse_dtype(dtype).values())


def select_backend(
    model: str,
    backend: str = "auto",
    dtype: str | None = None,
    graphs: str = "auto",
    progress: Progress | None = None,
    notice: Callable[[str], None] = lambda _m: None,
) -> Selection:
    """Resolve `model` (a folder or a Hub id) and choose its backend and graphs, building our
    graphs when that is the choice (see the module's docstring)."""
    from smolvlm_cli.backends.torch import torch_available

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if graphs not in GRAPH_SOURCES:
        raise ValueError(f"unknown graph source {graphs!r} (choose from {', '.join(GRAPH_SOURCES)})")
    if backend == "torch":
        return Selection("torch", resolve_model(model, files_for("torch", None), progress))
    if graphs == "build" and not _buildable(dtype):
        raise BackendUnavailableError(
            f"dtype {format_dtype(parse_dtype(dtype))} cannot be built",
            hint=f"built graphs come in {', '.join(EXPORT_DTYPES)}; --graphs hub runs a repo's own variants",
        )
    if graphs != "hub" and _buildable(dtype):
        model_dir = resolve_model(model, files_for("build", None), progress)
        if graphs == "auto" and _ours(model_dir, dtype):
            return Selection("onnx", model_dir, model_dir)
        if has_torch_weights(model_dir):
            from smolvlm_cli.builder.cache import ensure_graphs

            entry = ensure_graphs(
                model_dir, parse_dtype(dtype), model_label(model, model_dir), progress=progress, notice=notice
            )
            return Selection("onnx", model_dir, entry)
        if graphs == "build":
            raise BackendUnavailableError(
                f"{model} has no safetensors weights to build graphs from",
                hint="--graphs hub runs the repo's own onnx/ graphs",
            )
    return _hub_graphs(model, backend, dtype, torch_available(), progress)


def _hub_graphs(model: str, backend: str, dtype: str | None, torch_ok: bool, progress: Progress | None) -> Selection:
    """The repo's or folder's own `onnx/` graphs (today's Hugging Face contract)."""
    model_dir = resolve_model(model, files_for("onnx", dtype), progress)
    if dtype is None and not is_local(model) and not has_onnx(model_dir, None):
        # a Hub repo without the default variant: its fallback graphs (resolve_dtype picks them)
        model_dir = resolve_model(model, files_for("onnx", FALLBACK_DTYPE), progress)
    if has_onnx(model_dir, dtype):
        return Selection("onnx", model_dir, model_dir)
    from smolvlm_cli.backends.torch import TORCH_DTYPES

    # Fall back to torch only when it can honour the dtype (an explicit int8/q4 cannot be).
    torch_could = dtype is None or dtype.lower() in TORCH_DTYPES
    if backend == "auto" and torch_ok and torch_could:
        if not is_local(model):
            model_dir = resolve_model(model, files_for("torch", None), progress)
        if has_torch_weights(model_dir):
            return Selection("torch", model_dir)
    ways = []  # only the ways that can work here
    not_fetched = not is_local(model) and offline()  # the repo may have them: not in the cache
    if not_fetched:
        ways.append("unset HF_HUB_OFFLINE to fetch them")
    if any((Path(model_dir) / "onnx").glob("*.onnx")):
        ways.append("choose another --dtype")
    if not has_torch_weights(model_dir):
        ways.append("add the checkpoint's *.safetensors to the folder: our graphs are built from them")
    elif _buildable(dtype):  # (so --graphs hub brought us here)
        ways.append("let --graphs auto build them from the safetensors")
    torch_would_do = not torch_ok and backend != "onnx" and torch_could
    if torch_would_do:
        ways.append(f"{install_command('torch')} for the torch backend")
    raise BackendUnavailableError(
        f"{model} has no ONNX files for dtype {format_dtype(parse_dtype(dtype))}"
        + (" in the local cache, and HF_HUB_OFFLINE is set" if not_fetched else "")
        + (" and torch is not installed" if torch_would_do else ""),
        hint=", or ".join(ways) or None,
    )
