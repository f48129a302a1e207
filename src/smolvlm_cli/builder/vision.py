"""The vision graph: SigLIP patch embedding, encoder and pixel-shuffle connector as fused operators.

The front recomputes transformers' `get_image_features` inputs with plain ONNX operators:
- the patch mask: a patch is valid when any pixel in it is (`unfold(...).sum() > 0`);
- NaViT position ids: fractional patch coordinates `i * (1 / valid_patches)`, clamped below 1 and
  bucketised over the `patches_per_side` grid (a count of boundaries <= the coordinate, which is
  `torch.bucketize(..., right=True)`), in float32 as transformers does them. A full tile gets
  exactly `arange(num_patches)`; a partially valid one the same interpolated ids as transformers;
  padding patches id 0.
Each encoder layer is then LayerNorm -> MatMul q|k|v -> MultiHeadAttention (com.microsoft: scale,
softmax and the key padding mask in one kernel) -> MatMul out-proj -> Add bias and residual,
LayerNorm -> MatMul fc1 -> FastGelu -> MatMul fc2 -> Add bias and residual -> the next LayerNorm.

`pixel_values` float32 [batch, num_images, 3, H, W], `pixel_attention_mask` bool
[batch, num_images, H, W] -> `image_features` [num_tiles, tokens_per_tile, text_hidden].
Padding tiles are not dropped inside the graph (they give finite features; the caller drops
them). Metadata `smolvlm.vision_style = fused`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from smolvlm_cli.builder.architecture import Architecture
from smolvlm_cli.builder.layout import VISION_STYLE, VISION_STYLE_KEY, data_file_name
from smolvlm_cli.builder.onnx_writer import DOMAIN, GraphWriter
from smolvlm_cli.builder.weights import Checkpoint

VISION = "model.vision_model."
CONNECTOR = "model.connector.modality_projection.proj."


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def bucket_boundaries(per_side: int) -> np.ndarray:
    """`torch.arange(1 / n, 1.0, 1 / n)` in float32: its length and values as torch makes them
    (the size is ceil((end - start) / step) in double, each value start + i * step in double)."""
    start = step = 1.0 / per_side
    count = int(np.ceil((1.0 - start) / step))
    return (start + step * np.arange(count, dtype=np.float64)).astype(np.float32)


def _front(w: GraphWriter, ckpt: Checkpoint, arch: Architecture) -> tuple[str, str]:
    """(embeddings [T, nh*nw, D], key mask int32 [T, nh*nw])."""
    v = arch.vision
    p = v.patch_size
    (shape,) = w.node("Shape", ["pixel_values"], base="front/shape")
    (chw,) = w.node("Slice", [shape, w.const("s2", _i64(2)), w.const("s5", _i64(5))], base="front/chw")
    (flat_shape,) = w.node("Concat", [w.const("minus1", _i64(-1)), chw], base="front/flat_shape", axis=0)
    (pixels,) = w.node("Reshape", ["pixel_values", flat_shape], base="front/pixels")
    emb = VISION + "embeddings."
    (patches,) = w.node(
        "Conv",
        [
            pixels,
            w.const("patch.weight", ckpt.get(emb + "patch_embedding.weight")),
            w.const("patch.bias", ckpt.get(emb + "patch_embedding.bias")),
        ],
        base="front/patch_embedding",
        kernel_shape=[p, p],
        strides=[p, p],
    )
    (grid,) = w.node("Shape", [patches], base="front/grid_shape")
    (nhnw,) = w.node("Slice", [grid, w.const("s2b", _i64(2)), w.const("s4", _i64(4))], base="front/nhnw")
    (embeds,) = w.node("Reshape", [patches, w.const("to_tdn", _i64(0, v.hidden_size, -1))], base="front/flatten")
    (embeds,) = w.node("Transpose", [embeds], base="front/transpose", perm=[0, 2, 1])

    # patch mask [T, nh, nw]: any valid pixel in the patch
    (mshape,) = w.node("Shape", ["pixel_attention_mask"], base="mask/shape")
    (hw,) = w.node("Slice", [mshape, w.const("s2c", _i64(2)), w.const("s4b", _i64(4))], base="mask/hw")
    (mflat_shape,) = w.node("Concat", [w.const("minus1b", _i64(-1)), hw], base="mask/flat_shape", axis=0)
    (mask,) = w.node("Reshape", ["pixel_attention_mask", mflat_shape], base="mask/flat")
    (crop,) = w.node("Mul", [nhnw, w.const("patch", _i64(p))], base="mask/crop")
    (mask,) = w.node(
        "Slice", [mask, w.const("zeros2", _i64(0, 0)), crop, w.const("axes12", _i64(1, 2))], base="mask/cropped"
    )
    nh, nw = w.node("Split", [nhnw, w.const("ones2", _i64(1, 1))], n_out=2, base="mask/split", axis=0)
    (five,) = w.node(
        "Concat",
        [w.const("minus1c", _i64(-1)), nh, w.const("p1", _i64(p)), nw, w.const("p2", _i64(p))],
        base="mask/five",
        axis=0,
    )
    (mask,) = w.node("Reshape", [mask, five], base="mask/patches")
    (mask,) = w.node("Cast", [mask], base="mask/int", to=TensorProto.INT32)
    (count,) = w.node("ReduceSum", [mask, w.const("axes24", _i64(2, 4))], base="mask/count", keepdims=0)
    (patch_mask,) = w.node("Greater", [count, w.const("zero_i32", np.array(0, np.int32))], base="mask/any")

    # NaViT position ids
    (fmask,) = w.node("Cast", [patch_mask], base="pos/fmask", to=TensorProto.FLOAT)
    zero = w.const("zero_idx", _i64(0))
    (first_col,) = w.node("Gather", [fmask, zero], base="pos/first_col", axis=2)  # [T, nh, 1]
    (first_row,) = w.node("Gather", [fmask, zero], base="pos/first_row", axis=1)  # [T, 1, nw]
    boundaries = w.const("pos/boundaries", bucket_boundaries(v.patches_per_side))
    buckets = []
    for axis_name, line, size, keep in (("h", first_col, nh, 1), ("w", first_row, nw, 2)):
        (valid,) = w.node(
            "ReduceSum", [line, w.const(f"pos/axes_{axis_name}", _i64(keep))], base=f"pos/valid_{axis_name}", keepdims=0
        )  # [T, 1]
        (step,) = w.node("Div", [w.const("pos/one", np.array(1.0, np.float32)), valid], base=f"pos/step_{axis_name}")
        (sizef,) = w.node("Cast", [size], base=f"pos/size_{axis_name}", to=TensorProto.FLOAT)
        (sizes,) = w.node("Squeeze", [sizef], base=f"pos/size_scalar_{axis_name}")
        (idx,) = w.node(
            "Range",
            [w.const("pos/f0", np.array(0.0, np.float32)), sizes, w.const("pos/f1", np.array(1.0, np.float32))],
            base=f"pos/idx_{axis_name}",
        )
        (frac,) = w.node("Mul", [idx, step], base=f"pos/frac_{axis_name}")  # [T, n]
        (frac,) = w.node(
            "Min", [frac, w.const("pos/max", np.array(1.0 - 1e-6, np.float32))], base=f"pos/clamp_{axis_name}"
        )
        (frac,) = w.node("Unsqueeze", [frac, w.const("axis_last", _i64(-1))], base=f"pos/unsq_{axis_name}")
        (ge,) = w.node("GreaterOrEqual", [frac, boundaries], base=f"pos/ge_{axis_name}")
        (ge,) = w.node("Cast", [ge], base=f"pos/ge_int_{axis_name}", to=TensorProto.INT64)
        (bucket,) = w.node(
            "ReduceSum", [ge, w.const("axis_last2", _i64(-1))], base=f"pos/bucket_{axis_name}", keepdims=0
        )
        buckets.append(bucket)
    (bh,) = w.node("Unsqueeze", [buckets[0], w.const("axis2", _i64(2))], base="pos/bh")
    (bh,) = w.node("Mul", [bh, w.const("per_side", _i64(v.patches_per_side))], base="pos/row_offset")
    (bw,) = w.node("Unsqueeze", [buckets[1], w.const("axis1", _i64(1))], base="pos/bw")
    (pos,) = w.node("Add", [bh, bw], base="pos/ids")
    flat = w.const("to_t_minus1", _i64(0, -1))
    (pos,) = w.node("Reshape", [pos, flat], base="pos/flat")
    (valid_flat,) = w.node("Reshape", [patch_mask, flat], base="pos/valid_flat")
    (pos,) = w.node("Where", [valid_flat, pos, w.const("zero_i64", np.array(0, np.int64))], base="pos/masked")
    (pos_emb,) = w.node(
        "Gather",
        [w.const("position_embedding.weight", ckpt.get(emb + "position_embedding.weight")), pos],
        base="pos/embedding",
    )
    (embeds,) = w.node("Add", [embeds, pos_emb], base="front/embeds")
    (key_mask,) = w.node("Cast", [valid_flat], base="front/key_mask", to=TensorProto.INT32)
    return embeds, key_mask


def _attention(
    w: GraphWriter,
    q: str,
    k: str,
    v: str,
    bias: str,
    key_mask: str,
    all_valid: str,
    base: str,
    heads: int,
    scale: float,
) -> str:
    """MultiHeadAttention, with the key padding mask only when some patch is padding: full tiles
    (every tile SmolVLM's processor makes) take the unmasked kernel, which ONNX Runtime runs as
    flash attention, without [heads, n, n] probabilities.

    Measured against it (issue #18, ORT 1.32, 2 threads, AVX-512 VNNI, one [1024, 768] tile's
    attention, interleaved runs on an idle machine, median; errors are the relative L2 error of
    the attention output on random inputs): explicit MatMul -> Softmax -> MatMul (MLAS SGEMM)
    1.12x the time; the same with quantized products (DynamicQuantizeLinear + MatMulInteger)
    1.17x for QK^T only (0.7% error) and 1.14x for both (5.6% error) with uint8 keys, 1.10x
    (0.7%) and 0.99x (5.7%) with symmetric int8 keys/values (the VNNI u8s8 kernel). Replacing
    MatMul/DynamicQuantizeMatMul -> Split -> MHA by the fused `Attention` op gave 0.96x (fp32)
    and by `QAttention` 0.93x (int8) median, 1.00-1.02x best-of-21: noise-level, and both
    materialise [heads, n, n] probabilities (50 MB a tile). Packed q|k|v input is "not
    implemented for CPU". The `If` costs nothing measurable: in the profile the If nodes take
    6.430 s where the MHA kernels inside them take 6.422 s (13 tiles x 12 layers)."""
    out = w.name(f"{base}/out")
    branches = []
    for masked in (False, True):
        inputs = [q, k, v, bias] + ([key_mask] if masked else [])
        node = helper.make_node(
            "MultiHeadAttention",
            inputs,
            [w.name(f"{base}/ctx")],
            domain=DOMAIN,
            name=w.name(f"{base}/mha"),
            num_heads=heads,
            scale=scale,
        )
        branches.append(
            helper.make_graph(
                [node],
                w.name(f"{base}/{'masked' if masked else 'full'}"),
                [],
                [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
            )
        )
    w.node("If", [all_valid], base=f"{base}/if", outputs=[out], then_branch=branches[0], else_branch=branches[1])
    return out


def _layer_norm(w: GraphWriter, ckpt: Checkpoint, x: str, src: str, base: str, eps: float) -> str:
    (normed,) = w.node(
        "LayerNormalization",
        [x, w.const(f"{base}.weight", ckpt.get(src + ".weight")), w.const(f"{base}.bias", ckpt.get(src + ".bias"))],
        base=base,
        axis=-1,
        epsilon=eps,
    )
    return normed


def _residual_norm(
    w: GraphWriter, ckpt: Checkpoint, residual: str, x: str, bias: np.ndarray, norm_src: str, base: str, eps: float
) -> tuple[str, str]:
    """(LayerNorm(residual + x + bias), residual + x + bias) as Add, Add, LayerNormalization:
    ONNX Runtime 1.32's SkipLayerNormalization kernel takes 1.7 ms on a [1024, 768] tile where
    these three take 0.3 ms."""
    (xb,) = w.node("Add", [x, w.const(f"{base}.residual_bias", bias)], base=f"{base}/bias")
    (total,) = w.node("Add", [residual, xb], base=f"{base}/residual")
    return _layer_norm(w, ckpt, total, norm_src, base, eps), total


def build_vision(ckpt: Checkpoint, arch: Architecture, path: Path, progress: Callable[[], None] = lambda: None) -> None:
    """The fused vision graph; `progress()` is called once per encoder layer written."""
    with GraphWriter(path.with_name(data_file_name(path.name))) as w:
        _vision(w, ckpt, arch, path, progress)


def _vision(w: GraphWriter, ckpt: Checkpoint, arch: Architecture, path: Path, progress) -> None:
    v, eps = arch.vision, arch.vision.layer_norm_eps
    dim, heads = v.hidden_size, v.num_heads
    w.reserve("pixel_values", "pixel_attention_mask", "image_features")
    embeds, key_mask = _front(w, ckpt, arch)
    (lowest,) = w.node("ReduceMin", [key_mask], base="mask/min", keepdims=0)
    (all_valid,) = w.node("Equal", [lowest, w.const("mask/one", np.array(1, np.int32))], base="mask/all_valid")

    enc = VISION + "encoder.layers."
    normed = _layer_norm(w, ckpt, embeds, f"{enc}0.layer_norm1", "ln1.0", eps)
    residual = embeds
    for i in range(v.num_layers):
        src = f"{enc}{i}."
        attn = src + "self_attn."
        qkv_w = np.concatenate([ckpt.get(f"{attn}{x}_proj.weight").T for x in "qkv"], axis=1)
        qkv_b = np.concatenate([ckpt.get(f"{attn}{x}_proj.bias") for x in "qkv"])
        (qkv,) = w.node("MatMul", [normed, w.const(f"qkv.{i}.weight", qkv_w)], base=f"qkv.{i}")
        del qkv_w
        q, k, val = w.node("Split", [qkv, w.const("split3", _i64(dim, dim, dim))], n_out=3, base=f"split.{i}", axis=-1)
        ctx = _attention(
            w,
            q,
            k,
            val,
            w.const(f"qkv.{i}.bias", qkv_b),
            key_mask,
            all_valid,
            f"attn.{i}",
            heads,
            float((dim // heads) ** -0.5),
        )
        (o,) = w.node(
            "MatMul", [ctx, w.const(f"out.{i}.weight", ckpt.get(attn + "out_proj.weight").T)], base=f"out.{i}"
        )
        normed, residual = _residual_norm(
            w, ckpt, residual, o, ckpt.get(attn + "out_proj.bias"), src + "layer_norm2", f"ln2.{i}", eps
        )
        mlp = src + "mlp."
        (h,) = w.node("MatMul", [normed, w.const(f"fc1.{i}.weight", ckpt.get(mlp + "fc1.weight").T)], base=f"fc1.{i}")
        (h,) = w.node(
            "FastGelu" if v.gelu_tanh else "BiasGelu",
            [h, w.const(f"fc1.{i}.bias", ckpt.get(mlp + "fc1.bias"))],
            base=f"gelu.{i}",
            domain=DOMAIN,
        )
        (m,) = w.node("MatMul", [h, w.const(f"fc2.{i}.weight", ckpt.get(mlp + "fc2.weight").T)], base=f"fc2.{i}")
        nxt = f"{enc}{i + 1}.layer_norm1" if i + 1 < v.num_layers else VISION + "post_layernorm"
        normed, residual = _residual_norm(w, ckpt, residual, m, ckpt.get(mlp + "fc2.bias"), nxt, f"ln.{i + 1}", eps)
        progress()

    # connector: pixel shuffle on the patch grid, then the projection (transformers' SmolVLMConnector)
    s, n = arch.scale_factor, v.patches_per_side
    x = normed
    for step, (shape, perm) in enumerate(
        [((-1, n, n // s, dim * s), (0, 2, 1, 3)), ((-1, n // s, n // s, dim * s * s), (0, 2, 1, 3))]
    ):
        (x,) = w.node("Reshape", [x, w.const(f"shuffle.shape{step}", _i64(*shape))], base=f"shuffle.reshape{step}")
        (x,) = w.node("Transpose", [x], base=f"shuffle.transpose{step}", perm=list(perm))
    (x,) = w.node(
        "Reshape", [x, w.const("shuffle.shape2", _i64(-1, (n // s) ** 2, dim * s * s))], base="shuffle.reshape2"
    )
    proj = [x, w.const("connector.weight", ckpt.get(CONNECTOR + "weight").T)]
    if CONNECTOR + "bias" in ckpt:
        (x,) = w.node("MatMul", proj, base="connector")
        w.nodes.append(
            helper.make_node(
                "Add",
                [x, w.const("connector.bias", ckpt.get(CONNECTOR + "bias"))],
                ["image_features"],
                name="connector/bias",
            )
        )
    else:
        w.nodes.append(helper.make_node("MatMul", proj, ["image_features"], name="connector"))

    inputs = [
        helper.make_tensor_value_info(
            "pixel_values", TensorProto.FLOAT, ["batch_size", "num_images", v.num_channels, "height", "width"]
        ),
        helper.make_tensor_value_info(
            "pixel_attention_mask", TensorProto.BOOL, ["batch_size", "num_images", "height", "width"]
        ),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "image_features", TensorProto.FLOAT, ["num_tiles", "tokens_per_tile", arch.text.hidden_size]
        )
    ]
    w.finish(
        "smolvlm_vision_encoder",
        inputs,
        outputs,
        path,
        {VISION_STYLE_KEY: VISION_STYLE},
        doc=f"smolvlm-cli build: vision_encoder ({arch.model_type}, fused operators)",
    )
