"""`smolvlm export`: a SmolVLM checkpoint -> a model folder with ONNX graphs in the Hub's layout.

The fast graphs (`style="fast"`, the default) come from the torch-free builder
(`smolvlm_cli.builder`): the fused vision graph, `embed_tokens`, and the GroupQueryAttention
decoder with last-position logits, plus their fp16 / int8 / q4 variants. `style="official"`
traces graphs of exactly Hugging Face's contract from transformers (`traced.py`, needs torch):
tests and benchmarks use them to stand in for the Hub's own graphs. `check=True` compares the
fp32 graphs in ONNX Runtime with transformers and logs the variants' fidelity (needs torch).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from smolvlm_cli.builder.build import build_graphs
from smolvlm_cli.builder.layout import (
    BUILDER_VERSION,
    MARKER_FILE,
    Progress,
    graph_bytes,
    graph_file,
    remove_graph,
    sweep_abandoned,
)
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.dtypes import COMPONENTS, DTYPE_SUFFIXES, EXPORT_DTYPES
from smolvlm_cli.errors import ConfigError

GRAPHS = tuple(COMPONENTS.values())  # vision_encoder, embed_tokens, decoder_model_merged
STYLES = ("fast", "official")
# Hub files fetched for a build: configuration, tokenizer, processor, and the safetensors weights.
HUB_PATTERNS = ["*.json", "*.txt", "*.jinja", "*.model", "*.safetensors", "*.safetensors.index.json"]


def parse_dtypes(dtypes: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """("fp32", "int8") or "fp32,int8" -> validated, deduplicated, in EXPORT_DTYPES order."""
    items = dtypes.split(",") if isinstance(dtypes, str) else list(dtypes)
    wanted = [d.strip().lower() for d in items if d and d.strip()]
    if not wanted:
        raise ValueError(f"no dtype given (choose from {', '.join(EXPORT_DTYPES)})")
    for d in wanted:
        if d not in EXPORT_DTYPES:
            raise ValueError(f"unknown dtype {d!r} (choose from {', '.join(EXPORT_DTYPES)})")
    return tuple(d for d in EXPORT_DTYPES if d in wanted)


def resolve_source(model: str | Path) -> Path:
    """A local model directory as is; a Hub id through huggingface_hub (no ONNX files fetched)."""
    from smolvlm_cli.hub import resolve_model

    model_dir = resolve_model(str(model), HUB_PATTERNS)
    ModelConfig.from_dir(model_dir)  # a clear ConfigError for a directory that is not SmolVLM
    if not (model_dir / "tokenizer.json").is_file():  # else a folder that cannot run is "done"
        raise ConfigError(
            f"no tokenizer.json in {model_dir}", hint="export needs the checkpoint's tokenizer files beside its weights"
        )
    if not any(model_dir.glob("*.safetensors")):
        raise ConfigError(
            f"no *.safetensors weights in {model_dir}",
            hint="export needs the transformers checkpoint (model.safetensors)",
        )
    return model_dir


def write_marker(onnx_dir: Path, dtypes) -> None:
    """Mark a folder's graphs as ours (the runtime then never rebuilds them from safetensors)."""
    (onnx_dir / MARKER_FILE).write_text(
        json.dumps({"builder": BUILDER_VERSION, "style": "fast", "dtypes": list(dtypes)}) + "\n", encoding="utf-8"
    )


def export_onnx(
    model: str | Path,
    out_dir: str | Path,
    dtypes=("fp32",),
    check: bool = False,
    log: Callable[[str], None] = print,
    style: str = "fast",
    progress: Progress | None = None,
) -> dict:
    """Export `model` (a local directory or a Hub id) to `out_dir` in the Hub's ONNX layout.

    Returns {"out_dir", "files": {relative path: bytes}, "diffs": {graph: max abs difference to
    transformers}, "fidelity": {variant file stem: {"cosine", "top1"}}, "seconds"}. Raises
    ValueError for an unknown dtype or style, SmolVLMError subclasses for a bad model,
    ExportError when a check fails.
    """
    from smolvlm_cli.export.checkpoint import copy_config_files

    started = time.perf_counter()
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (choose from {', '.join(STYLES)})")
    dtypes = parse_dtypes(dtypes)
    model_dir = resolve_source(model)
    out_dir = Path(out_dir)
    onnx_dir = out_dir / "onnx"
    created = not out_dir.exists()
    onnx_dir.mkdir(parents=True, exist_ok=True)
    # fp32 graphs are what the check compares; kept outside out_dir unless fp32 was asked for
    for folder in (out_dir, onnx_dir):  # scratch a SIGKILL left (builds wrote in onnx/ before)
        sweep_abandoned(folder, ".fp32-*")
    scratch = Path(tempfile.mkdtemp(dir=out_dir, prefix=".fp32-"))  # swept if a kill leaves it
    try:
        if style == "fast":
            _build_fresh(model_dir, out_dir, scratch, dtypes, check, progress)
            torch_model = None
        else:
            torch_model = _export_traced(model_dir, onnx_dir, scratch, dtypes)
            copy_config_files(model_dir, out_dir)
        files = {
            f"onnx/{graph_file(c, d)}": graph_bytes(onnx_dir / graph_file(c, d)) for c in COMPONENTS for d in dtypes
        }
        diffs, fidelity = {}, {}
        if check:
            from smolvlm_cli.export.check import check_export
            from smolvlm_cli.export.traced import load_torch_model

            fp32_dir = onnx_dir if "fp32" in dtypes else scratch
            fp32 = {g: fp32_dir / f"{g}.onnx" for g in GRAPHS}
            variants = {
                d: {COMPONENTS[c]: onnx_dir / graph_file(c, d) for c in COMPONENTS} for d in dtypes if d != "fp32"
            }
            diffs, fidelity = check_export(torch_model or load_torch_model(model_dir), fp32, variants, log=log)
    except BaseException:
        if created:  # a failed export into a new folder leaves nothing that looks like a model
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "out_dir": out_dir,
        "files": files,
        "diffs": diffs,
        "fidelity": fidelity,
        "seconds": time.perf_counter() - started,
    }


def _build_fresh(
    model_dir: Path, out_dir: Path, scratch: Path, dtypes, keep_fp32: bool, progress: Progress | None
) -> None:
    """Our graphs of `dtypes`, built anew in `scratch` and moved in, then the model's config
    and tokenizer files: an earlier export into the folder (another checkpoint, the weights
    before a fine-tune) is replaced, never kept and marked ours; its other variants go too, so
    the folder holds exactly what its marker says. `keep_fp32` leaves the fp32 graphs the
    variants were quantized from in `scratch` (for the check) when fp32 was not asked for."""
    from smolvlm_cli.builder.build import place_graph
    from smolvlm_cli.export.checkpoint import copy_config_files

    onnx_dir = out_dir / "onnx"
    built_dtypes = (*dtypes, "fp32") if keep_fp32 and "fp32" not in dtypes else dtypes
    build_graphs(model_dir, scratch, [(c, d) for c in COMPONENTS for d in built_dtypes], progress)
    copy_config_files(model_dir, out_dir)
    earlier = _marked_dtypes(onnx_dir)
    for component in COMPONENTS:
        for dtype in dtypes:
            place_graph(scratch / graph_file(component, dtype), onnx_dir)
    for dtype in set(earlier) - set(dtypes):
        for component in COMPONENTS:
            remove_graph(onnx_dir / graph_file(component, dtype))
    write_marker(onnx_dir, dtypes)


def _marked_dtypes(onnx_dir: Path) -> list[str]:
    """The dtypes an earlier export of ours wrote into `onnx_dir` (none without a marker)."""
    try:
        dtypes = json.loads((onnx_dir / MARKER_FILE).read_text(encoding="utf-8")).get("dtypes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [d for d in dtypes if d in EXPORT_DTYPES] if isinstance(dtypes, list) else []


def _export_traced(model_dir: Path, onnx_dir: Path, scratch: Path, dtypes):
    """Traced graphs (the "official" style): fp32 into `onnx_dir` when asked for, else into
    `scratch`, and each variant quantized from it."""
    from smolvlm_cli.builder.quantize import make_variant
    from smolvlm_cli.export.traced import export_traced_graph, load_torch_model

    torch_model = load_torch_model(model_dir)
    fp32_dir = onnx_dir if "fp32" in dtypes else scratch
    for graph in GRAPHS:
        fp32 = fp32_dir / f"{graph}.onnx"
        export_traced_graph(torch_model, graph, fp32)
        for dtype in dtypes:
            if dtype != "fp32":
                make_variant(graph, dtype, fp32, onnx_dir / f"{graph}{DTYPE_SUFFIXES[dtype]}.onnx")
    return torch_model
