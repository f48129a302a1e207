"""The text graphs: token embeddings, and the Llama decoder written as fused ONNX Runtime operators.

Each decoder layer is a handful of kernels:
- `SimplifiedLayerNormalization` / `SkipSimplifiedLayerNormalization` (RMSNorm, with the
  residual add fused in);
- one MatMul for q|k|v and one for gate|up (one weight read per layer for each);
- `GroupQueryAttention` (com.microsoft): rotary embedding, causal attention over grouped KV heads
  without repeating them, and the KV cache append. Positions come from the attention mask
  (`seqlens_k = sum(mask) - 1`), so there is no `position_ids` input. When the caller binds the
  same buffer as `past_key_values.i.*` and `present.i.*`, the new rows are written in place;
- only the last position goes through `lm_head`: a prefill of 874 tokens returns 197 kB of logits
  instead of 172 MB.

Inputs: `inputs_embeds` [batch, seq, hidden], `attention_mask` int64 [batch, total],
`past_key_values.{i}.key|value` [batch, kv_heads, past, head_dim]. Outputs: `logits`
[batch, 1, vocab], `present.{i}.key|value` (concat(past, new) without a shared buffer, so the
plain `sess.run` loop works too). Metadata `smolvlm.decoder_style = gqa` tells the runtime it may
share buffers.

Measured and not taken (issue #18, ORT 1.32, AVX-512 VNNI, 2 threads, ~900 cached positions,
interleaved runs, medians):
- a float16 KV cache: the CPU GroupQueryAttention takes one only with float16 queries and runs
  it 1.44x slower than float32 per layer and step on an idle machine (1.26x on a loaded one);
- an int8 KV cache (CPU GroupQueryAttention takes int8 `past_key`/`past_value` with static
  per-channel `k_scale`/`v_scale` [1, kv_heads, 1, head_dim] and stores round(x / scale)),
  built end to end for the int8 decoder (branch `kv`, commit 7602f94): scales from a
  build-time calibration, the quantized decoder prefilling a chat prompt, a synthetic photo's
  vision features and a reply; per-channel absmax of V, and of K shared by each rotary pair as
  sqrt(k_i^2 + k_j^2) (rotation keeps it), x1.1. Decode steps may gain a little, but the
  kernel's quantized path has no GEMM for many query rows and the prefill loses much more. W1
  (874 prompt tokens), `bench.py`, 3 interleaved pairs on a near-idle machine, medians:
  decode 94.0 vs 82.4 tok/s (1.14x), prefill 1.52 vs 0.74 s (2.07x), time to first token 8.97
  vs 8.04 s (1.12x slower); 5 pairs on a loaded machine: prefill 1.90x, TTFT 1.12x (median
  paired ratios). Profiler (loaded): the
  prefill's attention 3.13 s vs 0.67 s, the decode's 0.71x. One attention layer alone, 874
  rows: 3.7x (3.1x with `query_seqlens`). Fidelity to fp32 (`scripts/fidelity.py`, random 256M
  weights, 64 steps, decoder rows): top-1 70% vs 72%, top-5 100% vs 98%, logits cosine 0.9993
  both. Build: int8 7.3 -> 15.8 s (calibration: 13 vision tiles and a 1000-token prefill), peak
  RSS unchanged (0.69 GB). Not taken: a 64-token caption loses ~0.9 s to first token and saves
  ~0.1 s of decoding. Nor with a float-cache twin of the graph for the first prefill (its
  presents quantized into the cache in numpy; prototyped, one W1 process per run, 4 interleaved
  base/int8-cache/twin triplets, medians): time to first token 1.00x but decode 1.00x too
  (the int8-cache graph alone: 1.07x decode, 1.11x TTFT), for +136 MB RSS (the 256M twin's
  session, over 465 MB after a W1 caption). Across all these runs the decode gain of the int8
  cache ranged from 0.93x to 1.14x: within the noise of this shared machine;
- prefilling in chunks (to skip part of the upper causal triangle GroupQueryAttention computes
  in one run), int8, 876 rows: chunks of 256 0.95x and 440 0.99x the time of one run on an idle
  machine, 1.13-1.14x on a loaded one; ~0.4% of the time to first token at best;
- a cheaper prefill attention: the prefill is ~9% of int8 W1's time to first token (vision
  ~90%), its GroupQueryAttention ~43% of the prefill. One layer, 874 rows, 2 threads, the
  same inputs, against GroupQueryAttention (rotary and cache write included):
  `MultiHeadAttention` with `unidirectional=1` (K/V repeated per query head, no rotary) 1.28x
  the time on a near-idle machine (1.40x loaded), ONNX `Attention`-23 with `is_causal=1` and
  grouped heads 1.35x (1.32x loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from smolvlm_cli.builder.architecture import Architecture
from smolvlm_cli.builder.layout import DECODER_STYLE, DECODER_STYLE_KEY, LOGITS_KEY, data_file_name
from smolvlm_cli.builder.onnx_writer import DOMAIN, GraphWriter
from smolvlm_cli.builder.rope import rotary_tables
from smolvlm_cli.builder.weights import Checkpoint
from smolvlm_cli.errors import ConfigError

TEXT = "model.text_model."
EMBED = TEXT + "embed_tokens.weight"


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _matmul(w: GraphWriter, ckpt: Checkpoint, x: str, names: list[str], base: str) -> str:
    """One MatMul over the concatenated [in, out] weights of the Linear layers `names`."""
    weight = np.concatenate([ckpt.get(n).T for n in names], axis=1)
    (y,) = w.node("MatMul", [x, w.const(f"{base}.weight", weight)], base=base)
    return y


def lm_head_weight(ckpt: Checkpoint, arch: Architecture) -> np.ndarray:
    """[vocab, hidden]: `lm_head.weight` when the checkpoint has one (transformers keeps a stored
    head even when the config asks to tie it), else the embeddings if the config ties them."""
    if "lm_head.weight" in ckpt:
        return ckpt.get("lm_head.weight")
    if arch.tie_word_embeddings:
        return ckpt.get(EMBED)
    raise ConfigError(
        f"the checkpoint {ckpt.model_dir} has no lm_head.weight and config.json "
        "does not tie it to the embeddings (tie_word_embeddings)",
        hint="the weights are incomplete: download the model again",
    )


def build_embed(ckpt: Checkpoint, arch: Architecture, path: Path) -> None:
    """input_ids int64 [batch, seq] -> inputs_embeds [batch, seq, hidden] (a Gather)."""
    with GraphWriter(path.with_name(data_file_name(path.name))) as w:
        table = ckpt.get(EMBED)
        w.nodes.append(
            helper.make_node(
                "Gather", [w.const("embed_tokens.weight", table), "input_ids"], ["inputs_embeds"], name="embed_tokens"
            )
        )
        axes = ["batch_size", "sequence_length"]
        w.finish(
            "smolvlm_embed_tokens",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, axes)],
            [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [*axes, table.shape[1]])],
            path,
            {},
            doc=f"smolvlm-cli build: embed_tokens ({arch.model_type})",
        )


def build_decoder(
    ckpt: Checkpoint, arch: Architecture, path: Path, progress: Callable[[], None] = lambda: None
) -> None:
    """The GroupQueryAttention decoder; `progress()` is called once per layer written."""
    with GraphWriter(path.with_name(data_file_name(path.name))) as w:
        _decoder(w, ckpt, arch, path, progress)


def _decoder(w: GraphWriter, ckpt: Checkpoint, arch: Architecture, path: Path, progress) -> None:
    t = arch.text
    eps = t.rms_norm_eps
    w.reserve("inputs_embeds", "attention_mask", "logits", *past_names(t.num_layers), *present_names(t.num_layers))
    cos, sin = rotary_tables(t.rope, t.head_dim, t.max_positions)
    cos_cache, sin_cache = w.const("cos_cache", cos), w.const("sin_cache", sin)

    # seqlens_k = sum(mask) - 1 (int32 [batch]); total_sequence_length = mask width (int32 scalar)
    (mask_sum,) = w.node(
        "ReduceSum", ["attention_mask", w.const("axes_1", np.array([1], np.int64))], base="mask/sum", keepdims=0
    )
    (seqlens,) = w.node("Sub", [mask_sum, w.const("one", np.array(1, np.int64))], base="mask/sub")
    (seqlens_k,) = w.node("Cast", [seqlens], base="mask/seqlens_k", to=TensorProto.INT32)
    (shape,) = w.node("Shape", ["attention_mask"], base="mask/shape")
    (width,) = w.node("Gather", [shape, w.const("index_1", np.array(1, np.int64))], base="mask/width", axis=0)
    (total,) = w.node("Cast", [width], base="mask/total", to=TensorProto.INT32)

    residual, pending = "inputs_embeds", None  # pending: the MLP output not yet added to residual
    for i in range(t.num_layers):
        p, src = f"layers.{i}", f"{TEXT}layers.{i}."
        ln1 = w.const(f"{p}.input_layernorm.weight", ckpt.get(src + "input_layernorm.weight"))
        if pending is None:
            (normed,) = w.node("SimplifiedLayerNormalization", [residual, ln1], base=f"{p}/ln1", epsilon=eps, axis=-1)
        else:
            normed, _, _, residual = w.node(
                "SkipSimplifiedLayerNormalization",
                [residual, pending, ln1],
                n_out=4,
                base=f"{p}/ln1",
                domain=DOMAIN,
                epsilon=eps,
            )
        attn = src + "self_attn."
        qkv = _matmul(w, ckpt, normed, [attn + f"{x}_proj.weight" for x in "qkv"], f"{p}.qkv_proj")
        out, _, _ = w.node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                seqlens_k,
                total,
                cos_cache,
                sin_cache,
            ],
            base=f"{p}/attn",
            domain=DOMAIN,
            outputs=[w.name(f"{p}/attn/out"), f"present.{i}.key", f"present.{i}.value"],
            num_heads=t.num_heads,
            kv_num_heads=t.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(t.head_dim**-0.5),
        )
        o = _matmul(w, ckpt, out, [attn + "o_proj.weight"], f"{p}.o_proj")
        ln2 = w.const(f"{p}.post_attention_layernorm.weight", ckpt.get(src + "post_attention_layernorm.weight"))
        normed, _, _, residual = w.node(
            "SkipSimplifiedLayerNormalization", [residual, o, ln2], n_out=4, base=f"{p}/ln2", domain=DOMAIN, epsilon=eps
        )
        mlp = src + "mlp."
        gate_up = _matmul(w, ckpt, normed, [mlp + "gate_proj.weight", mlp + "up_proj.weight"], f"{p}.gate_up_proj")
        inter = ckpt.shape(mlp + "gate_proj.weight")[0]
        gate, up = w.node(
            "Split",
            [gate_up, w.const("split", np.array([inter, inter], np.int64))],
            n_out=2,
            base=f"{p}/mlp/split",
            axis=-1,
        )
        (sig,) = w.node("Sigmoid", [gate], base=f"{p}/mlp/sigmoid")
        (silu,) = w.node("Mul", [gate, sig], base=f"{p}/mlp/silu")
        (prod,) = w.node("Mul", [silu, up], base=f"{p}/mlp/mul")
        pending = _matmul(w, ckpt, prod, [mlp + "down_proj.weight"], f"{p}.down_proj")
        progress()

    norm_w = w.const("norm.weight", ckpt.get(TEXT + "norm.weight"))
    final, _, _, _ = w.node(
        "SkipSimplifiedLayerNormalization",
        [residual, pending, norm_w],
        n_out=4,
        base="final_norm",
        domain=DOMAIN,
        epsilon=eps,
    )
    (final,) = w.node(
        "Slice",
        [
            final,
            w.const("start_last", np.array([-1], np.int64)),
            w.const("end_last", np.array([np.iinfo(np.int64).max], np.int64)),
            w.const("axis_seq", np.array([1], np.int64)),
        ],
        base="last_position",
    )
    head = lm_head_weight(ckpt, arch)
    vocab = head.shape[0]
    w.nodes.append(helper.make_node("MatMul", [final, w.const("lm_head.weight", head.T)], ["logits"], name="lm_head"))
    del head

    batch, seq = "batch_size", "sequence_length"
    kv_in = [batch, t.num_kv_heads, "past_sequence_length", t.head_dim]
    kv_out = [batch, t.num_kv_heads, "total_sequence_length", t.head_dim]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [batch, seq, t.hidden_size]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, "total_sequence_length"]),
    ]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_in) for n in past_names(t.num_layers)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1, vocab])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_out) for n in present_names(t.num_layers)]
    w.finish(
        "smolvlm_gqa_decoder",
        inputs,
        outputs,
        path,
        {DECODER_STYLE_KEY: DECODER_STYLE, LOGITS_KEY: "last"},
        doc=f"smolvlm-cli build: decoder_model_merged ({arch.model_type}, GroupQueryAttention)",
    )
