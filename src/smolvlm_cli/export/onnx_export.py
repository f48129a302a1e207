"""Export a SmolVLM / SmolVLM2 checkpoint to the Hugging Face `onnx/` layout.

Three graphs, with exactly the names, dtypes and dynamic axes of the Hub's own exports:

- `onnx/vision_encoder.onnx`: `pixel_values` float32 [batch_size, num_images, 3, height, width],
  `pixel_attention_mask` bool [batch_size, num_images, height, width]
  -> `image_features` float32 [num_tiles, tokens_per_tile, hidden] (num_tiles = batch_size *
  num_images; padding tiles are not dropped: the caller drops them);
- `onnx/embed_tokens.onnx`: `input_ids` int64 [batch_size, sequence_length]
  -> `inputs_embeds` float32 [batch_size, sequence_length, hidden];
- `onnx/decoder_model_merged.onnx`: `inputs_embeds`, `attention_mask` int64
  [batch_size, past_sequence_length + sequence_length], `position_ids` int64
  [batch_size, sequence_length], `past_key_values.{i}.key|value` [batch_size, kv_heads,
  past_sequence_length, head_dim] -> `logits` [batch_size, sequence_length, vocab],
  `present.{i}.key|value`. The first call passes empty (past length 0) caches.

TorchScript exporter (`dynamo=False`), opset 17, eager attention: 10x faster than the dynamo
exporter on the decoder, and it keeps every dimension symbolic. Variants (`_fp16`, `_int8`,
`_q4`) are made from the fp32 graphs by `quantize.py`; `check=True` compares the fp32 graphs in
ONNX Runtime with transformers and logs the variants' fidelity (see `check.py`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.dtypes import COMPONENTS, DTYPE_SUFFIXES, EXPORT_DTYPES
from smolvlm_cli.errors import ConfigError, SmolVLMError

OPSET = 17
GRAPHS = tuple(COMPONENTS.values())  # vision_encoder, embed_tokens, decoder_model_merged
# Hub files fetched for an export: configuration, tokenizer, processor, and the safetensors weights.
HUB_PATTERNS = ["*.json", "*.txt", "*.jinja", "*.model", "*.safetensors", "*.safetensors.index.json"]
_TWO_GB = 2**31 - 2**20


class ExportError(SmolVLMError):
    """The export ran but its graphs are wrong (ONNX Runtime disagrees with transformers)."""


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


def graph_path(onnx_dir: Path, graph: str, dtype: str = "fp32") -> Path:
    return onnx_dir / f"{graph}{DTYPE_SUFFIXES[dtype]}.onnx"


def resolve_source(model: str | Path) -> Path:
    """A local model directory as is; a Hub id through huggingface_hub (no ONNX files fetched)."""
    from smolvlm_cli.hub import resolve_model

    model_dir = resolve_model(str(model), HUB_PATTERNS)
    ModelConfig.from_dir(model_dir)  # a clear ConfigError for a directory that is not SmolVLM
    if not any(model_dir.glob("*.safetensors")):
        raise ConfigError(f"no *.safetensors weights in {model_dir}",
                          hint="export needs the transformers checkpoint (model.safetensors)")
    return model_dir


def load_torch_model(model_dir: str | Path):
    """The transformers model in float32 with eager attention (sdpa does not export cleanly)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from smolvlm_cli.export.checkpoint import quiet_transformers

    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), attn_implementation="eager",
                                                            dtype=torch.float32)
    return model.eval()


# -- graph specifications -----------------------------------------------------------------------

def _vision_spec(model):
    from smolvlm_cli.export.vision import VisionEncoder, sample_inputs

    inputs, axes = sample_inputs(model)
    return (VisionEncoder(model).eval(), inputs, list(axes), ["image_features"],
            {**axes, "image_features": {0: "num_tiles", 1: "tokens_per_tile"}})


def _embed_spec(model):
    import torch

    from smolvlm_cli.export.decoder import EmbedTokens

    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=torch.int64)
    axes = {0: "batch_size", 1: "sequence_length"}
    return (EmbedTokens(model).eval(), (ids,), ["input_ids"], ["inputs_embeds"],
            {"input_ids": axes, "inputs_embeds": axes})


def _decoder_spec(model, last_logits: bool = False):
    import torch

    from smolvlm_cli.export.decoder import Decoder, past_names, present_names

    text = model.config.text_config
    layers, heads = int(text.num_hidden_layers), int(text.num_key_value_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    batch, seq, past = 2, 5, 3  # sizes > 1 everywhere, and a padded row: no branch gets baked in
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, seq, int(text.hidden_size), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    pasts = [torch.randn(batch, heads, past, head_dim, generator=gen) for _ in range(2 * layers)]
    axes = {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names(layers)})
    axes.update({n: {0: "batch_size", 2: "past_sequence_length + sequence_length"}
                 for n in present_names(layers)})
    if last_logits:
        axes["logits"] = {0: "batch_size"}
    return (Decoder(model, last_logits=last_logits).eval(), (embeds, mask, positions, *pasts),
            ["inputs_embeds", "attention_mask", "position_ids", *past_names(layers)],
            ["logits", *present_names(layers)], axes)


SPECS = {"vision_encoder": _vision_spec, "embed_tokens": _embed_spec,
         "decoder_model_merged": _decoder_spec}


def save_onnx(proto, path: Path) -> None:
    """One file, or `<name>.onnx_data` beside it when the graph exceeds protobuf's 2 GB."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    large = proto.ByteSize() > _TWO_GB if _fits_bytesize(proto) else True
    if large:
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}_data", size_threshold=1024)
    else:
        onnx.save(proto, str(path))


def _fits_bytesize(proto) -> bool:
    try:
        proto.ByteSize()
        return True
    except Exception:  # protobuf refuses to size messages above 2 GB
        return False


DECODER_STYLES = ("gqa", "official")
DEFAULT_DECODER_STYLE = "gqa"
VISION_STYLES = ("fused", "plain")
DEFAULT_VISION_STYLE = "fused"


def export_graph(model, graph: str, path: Path, decoder_style: str = DEFAULT_DECODER_STYLE,
                 last_logits: bool | None = None, vision_style: str = DEFAULT_VISION_STYLE) -> None:
    """Write the fp32 graph `graph` to `path`.

    The decoder comes in two styles: `gqa` (default), built from fused ONNX Runtime operators
    with GroupQueryAttention and only the last position's logits (see `gqa_decoder.py`), or
    `official`, traced, with exactly the Hub's contract (position_ids, present = concat(past,
    new), logits for every position). `last_logits` overrides the style's logits choice.
    The vision graph is `fused` (default: MultiHeadAttention & co, see `fast_vision.py`) or
    `plain` (traced standard operators). All styles keep the official input and output names.
    """
    import onnx
    import torch

    if decoder_style not in DECODER_STYLES:
        raise ValueError(f"unknown decoder style {decoder_style!r} (choose from {', '.join(DECODER_STYLES)})")
    if vision_style not in VISION_STYLES:
        raise ValueError(f"unknown vision style {vision_style!r} (choose from {', '.join(VISION_STYLES)})")
    if graph == "vision_encoder" and vision_style == "fused":
        from smolvlm_cli.export.fast_vision import build_fast_vision

        proto = build_fast_vision(model, opset=OPSET)
        proto.doc_string = f"smolvlm-cli export: {graph} ({model.config.model_type}, fused operators)"
        save_onnx(proto, path)
        return
    if graph == "decoder_model_merged" and decoder_style == "gqa":
        from smolvlm_cli.export.gqa_decoder import build_gqa_decoder

        proto = build_gqa_decoder(model, last_logits=True if last_logits is None else last_logits)
        proto.doc_string = f"smolvlm-cli export: {graph} ({model.config.model_type}, GroupQueryAttention)"
        save_onnx(proto, path)
        return
    if graph == "decoder_model_merged" and last_logits:
        module, args, inputs, outputs, axes = _decoder_spec(model, last_logits=True)
    else:
        module, args, inputs, outputs, axes = SPECS[graph](model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as tmp, \
            warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic, deprecations
        raw = Path(tmp) / path.name
        torch.onnx.export(module, args, str(raw), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          do_constant_folding=True)
        proto = onnx.load(str(raw))  # pulls in any external data the exporter scattered
    proto.doc_string = f"smolvlm-cli export: {graph} ({model.config.model_type})"
    save_onnx(proto, path)


def data_files(path: Path) -> list[Path]:
    """External-data files beside a graph (`x.onnx_data` from us, `x.onnx.data` from the quantizers)."""
    return [p for p in (path.with_name(path.name + "_data"), path.with_name(path.name + ".data"))
            if p.is_file()]


def _size(path: Path) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in data_files(path))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def export_onnx(model: str | Path, out_dir: str | Path, dtypes=("fp32",), check: bool = True,
                log: Callable[[str], None] = print, decoder_style: str = DEFAULT_DECODER_STYLE,
                last_logits: bool | None = None, vision_style: str = DEFAULT_VISION_STYLE) -> dict:
    """Export `model` (a local directory or a Hub id) to `out_dir` in the Hub's ONNX layout.

    Returns {"out_dir", "files": {relative path: bytes}, "timings": {step: seconds},
    "diffs": {graph: max abs difference to transformers}, "fidelity": {variant file stem:
    {"cosine", "top1"}}, "seconds"}. Raises ValueError for an unknown dtype, SmolVLMError
    subclasses for a bad model, ExportError when a check fails.
    """
    from smolvlm_cli.export.checkpoint import copy_config_files
    from smolvlm_cli.export.quantize import make_variant

    started = time.perf_counter()
    dtypes = parse_dtypes(dtypes)
    model_dir = resolve_source(model)
    out_dir = Path(out_dir)
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    copy_config_files(model_dir, out_dir)
    timings: dict[str, float] = {}
    files: dict[str, int] = {}

    t = time.perf_counter()
    log(f"loading {model_dir}")
    torch_model = load_torch_model(model_dir)
    timings["load"] = time.perf_counter() - t

    # fp32 graphs are the source of every variant; outside out_dir unless fp32 was asked for.
    scratch = None if "fp32" in dtypes else Path(tempfile.mkdtemp(dir=out_dir, prefix=".fp32-"))
    fp32_dir = onnx_dir if scratch is None else scratch
    try:
        fp32 = {}
        for graph in GRAPHS:
            t = time.perf_counter()
            fp32[graph] = graph_path(fp32_dir, graph)
            export_graph(torch_model, graph, fp32[graph], decoder_style, last_logits, vision_style)
            timings[f"{graph}.onnx"] = time.perf_counter() - t
            log(f"exported {graph}.onnx in {timings[f'{graph}.onnx']:.1f} s "
                f"({_mb(_size(fp32[graph]))})")
            if scratch is None:
                files[f"onnx/{graph}.onnx"] = _size(fp32[graph])
        variants: dict[str, dict[str, Path]] = {}
        for dtype in dtypes:
            if dtype == "fp32":
                continue
            variants[dtype] = {}
            for graph in GRAPHS:
                t = time.perf_counter()
                dst = graph_path(onnx_dir, graph, dtype)
                make_variant(graph, dtype, fp32[graph], dst)
                variants[dtype][graph] = dst
                name = dst.name
                timings[name] = time.perf_counter() - t
                files[f"onnx/{name}"] = _size(dst)
                log(f"wrote {name} in {timings[name]:.1f} s ({_mb(files[f'onnx/{name}'])})")
        diffs, fidelity = {}, {}
        if check:
            from smolvlm_cli.export.check import check_export

            t = time.perf_counter()
            diffs, fidelity = check_export(torch_model, fp32, variants, log=log)
            timings["check"] = time.perf_counter() - t
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    log(f"export done in {seconds:.1f} s")
    return {"out_dir": out_dir, "files": files, "timings": timings, "diffs": diffs,
            "fidelity": fidelity, "seconds": seconds}
