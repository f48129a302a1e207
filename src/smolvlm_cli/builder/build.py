"""Build the fast ONNX graphs of a SmolVLM checkpoint from its safetensors: numpy and onnx only.

    build_graphs("path/to/checkpoint", "out/onnx", {"vision": "int8", "embed": "int8", "decoder": "int8"})

writes the three graphs the ONNX backend loads (`vision_encoder`, `embed_tokens`,
`decoder_model_merged`, with the Hub's variant suffixes). fp32 graphs are written layer by layer
from the memory-mapped checkpoint; the other variants are made from them by onnxruntime's own
quantizers (`quantize.py`), and an fp32 graph nobody asked for is deleted once its variants exist.
Every graph is written in a scratch folder and moved in whole (`place_graph`), so a graph file in
the output folder is always a finished one, whatever killed a build. Nothing here imports torch
or transformers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from smolvlm_cli.builder.architecture import Architecture
from smolvlm_cli.builder.layout import Progress, data_files, graph_file, remove_graph, sweep_abandoned
from smolvlm_cli.builder.quantize import make_variant
from smolvlm_cli.builder.text import build_decoder, build_embed
from smolvlm_cli.builder.vision import build_vision
from smolvlm_cli.builder.weights import Checkpoint
from smolvlm_cli.dtypes import COMPONENTS, EXPORT_DTYPES


def place_graph(graph: Path, folder: Path) -> Path:
    """Move a finished graph and its data files into `folder` (same file system): the data
    first, the graph last, so a graph file there always has its data."""
    for p in data_files(graph):
        os.replace(p, folder / p.name)
    os.replace(graph, folder / graph.name)
    return folder / graph.name


def build_graphs(
    model_dir: str | Path,
    onnx_dir: str | Path,
    wanted: Iterable[tuple[str, str]],
    progress: Progress | None = None,
    fp32_from: Path | None = None,
) -> list[Path]:
    """Write the graphs `wanted` ((component, dtype) pairs) into `onnx_dir`; returns their paths.

    Graphs already in `onnx_dir` are kept; a variant is quantized from the fp32 graph in
    `onnx_dir`, else from the one in `fp32_from` when there is one, else from a new fp32 build.
    """
    model_dir, onnx_dir = Path(model_dir), Path(onnx_dir)
    wanted = sorted(set(wanted), key=lambda cd: (list(COMPONENTS).index(cd[0]), EXPORT_DTYPES.index(cd[1])))
    for component, dtype in wanted:
        if component not in COMPONENTS or dtype not in EXPORT_DTYPES:
            raise ValueError(f"cannot build {component} as {dtype} (dtypes: {', '.join(EXPORT_DTYPES)})")
    arch = Architecture.from_dir(model_dir)
    ckpt = Checkpoint(model_dir)
    progress = progress or Progress()
    onnx_dir.mkdir(parents=True, exist_ok=True)
    todo = [(c, d) for c, d in wanted if not (onnx_dir / graph_file(c, d)).is_file()]
    components = list(dict.fromkeys(c for c, _ in todo))

    def existing_fp32(component: str) -> Path | None:
        for folder in (onnx_dir, fp32_from):
            if folder is not None and (folder / graph_file(component, "fp32")).is_file():
                return folder / graph_file(component, "fp32")
        return None

    units = {"vision": arch.vision.num_layers, "decoder": arch.text.num_layers, "embed": 1}
    fp32_units = sum(units[c] for c in components if existing_fp32(c) is None or (c, "fp32") in todo)
    progress.total(fp32_units + sum(1 for _, d in todo if d != "fp32"))

    sweep_abandoned(onnx_dir, ".fp32-*")
    scratch = Path(tempfile.mkdtemp(dir=onnx_dir, prefix=".fp32-"))
    try:
        for component in components:
            variants = [d for c, d in todo if c == component and d != "fp32"]
            fp32 = existing_fp32(component)
            if fp32 is None or (component, "fp32") in todo:
                fp32 = scratch / graph_file(component, "fp32")
                _build_fp32(component, ckpt, arch, fp32, progress)
                # unmap the checkpoint: the pages this graph read would stay in the process's
                # RSS through the quantizer (the 2.2B decoder reads 3.4 GB of bf16); `get` re-maps
                ckpt.close()
            for dtype in variants:
                built = scratch / graph_file(component, dtype)
                make_variant(COMPONENTS[component], dtype, fp32, built)
                place_graph(built, onnx_dir)
                progress.step(f"{built.name}")
            if fp32.parent == scratch:
                if (component, "fp32") in todo:
                    place_graph(fp32, onnx_dir)
                else:
                    remove_graph(fp32)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ckpt.close()
    return [onnx_dir / graph_file(c, d) for c, d in wanted]


def _build_fp32(component: str, ckpt: Checkpoint, arch: Architecture, path: Path, progress: Progress) -> None:
    try:
        if component == "vision":
            build_vision(ckpt, arch, path, lambda: progress.step("vision layer"))
        elif component == "decoder":
            build_decoder(ckpt, arch, path, lambda: progress.step("decoder layer"))
        else:
            build_embed(ckpt, arch, path)
            progress.step("embed_tokens")
    except BaseException:
        remove_graph(path)
        raise
