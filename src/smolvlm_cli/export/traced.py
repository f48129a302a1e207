"""Graphs of exactly Hugging Face's `onnx/` contract, traced from transformers (needs torch).

Hugging Face's own graphs cannot be downloaded on machines without the Hub, so tests and
benchmarks make graphs of the same contract with the TorchScript exporter: a decoder with
`position_ids`, present = concat(past, new) and logits for every position, and the plain vision
graph. Nothing on a user's path imports this module; `smolvlm export` writes our fast graphs with
the torch-free builder (`smolvlm_cli.builder`).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from smolvlm_cli.builder.onnx_writer import OPSET, save_onnx
from smolvlm_cli.builder.text import past_names, present_names


def load_torch_model(model_dir: str | Path):
    """The transformers model in float32 with eager attention (sdpa does not export cleanly)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from smolvlm_cli.export.checkpoint import quiet_transformers

    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=torch.float32
        )
    return model.eval()


def _vision_spec(model):
    from smolvlm_cli.export.vision import VisionEncoder, sample_inputs

    inputs, axes = sample_inputs(model)
    return (
        VisionEncoder(model).eval(),
        inputs,
        list(axes),
        ["image_features"],
        {**axes, "image_features": {0: "num_tiles", 1: "tokens_per_tile"}},
    )


def _embed_spec(model):
    import torch

    from smolvlm_cli.export.decoder import EmbedTokens

    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], dtype=torch.int64)
    axes = {0: "batch_size", 1: "sequence_length"}
    return (
        EmbedTokens(model).eval(),
        (ids,),
        ["input_ids"],
        ["inputs_embeds"],
        {"input_ids": axes, "inputs_embeds": axes},
    )


def _decoder_spec(model):
    import torch

    from smolvlm_cli.export.decoder import Decoder

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
    axes = {
        "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    axes.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names(layers)})
    axes.update({n: {0: "batch_size", 2: "past_sequence_length + sequence_length"} for n in present_names(layers)})
    return (
        Decoder(model).eval(),
        (embeds, mask, positions, *pasts),
        ["inputs_embeds", "attention_mask", "position_ids", *past_names(layers)],
        ["logits", *present_names(layers)],
        axes,
    )


SPECS = {"vision_encoder": _vision_spec, "embed_tokens": _embed_spec, "decoder_model_merged": _decoder_spec}


def export_traced_graph(model, graph: str, path: Path) -> None:
    """Write the fp32 graph `graph` (vision_encoder, embed_tokens, decoder_model_merged) of the
    Hub's contract to `path`, traced from the transformers `model`."""
    import onnx
    import torch

    module, args, inputs, outputs, axes = SPECS[graph](model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as tmp,
        warnings.catch_warnings(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic, deprecations
        raw = Path(tmp) / path.name
        torch.onnx.export(
            module,
            args,
            str(raw),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
        proto = onnx.load(str(raw))  # pulls in any external data the exporter scattered
    proto.doc_string = f"smolvlm-cli traced export: {graph} ({model.config.model_type})"
    save_onnx(proto, path)
