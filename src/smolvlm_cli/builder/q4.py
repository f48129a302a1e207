"""The q4 variant: 4-bit symmetric blocks of 32, written with numpy and onnx alone.

Byte for byte what onnxruntime's `MatMulNBitsQuantizer` (is_symmetric, block_size 32,
accuracy_level 4) writes, held to it by the tests, without its dependencies (onnx_ir, which
brings sympy: ~85 MB of a default install):

- a MatMul with a constant [K, N] weight becomes `MatMulNBits` (com.microsoft): per column, per
  block of 32 rows, the value of largest magnitude `v` gives the scale `v / -8`, each value is
  `floor(w / scale + 8.5)` in 0..15 (float32, as its kernel), two to a byte (the first in the low nibble); rows past K in the
  last block are 0 nibbles. Weight [N, blocks, 16] uint8, scales [N, blocks] float32.
- the embedding table's Gather (`gather=True`) becomes `GatherBlockQuantized`: blocks of 32 along
  the hidden axis, the same scales, `w / scale` rounded half to even as signed 4-bit integers (INT4, opset
  21).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32
_COLUMNS = 4096  # weight columns quantized at a time
_ROWS = 8192  # embedding rows quantized at a time
MS_DOMAIN = "com.microsoft"


def block_scales(blocks: np.ndarray) -> np.ndarray:
    """[..., BLOCK] -> [...]: the block's value of largest magnitude over -8, the minimum when
    it ties with the maximum (as onnxruntime: bf16 weights tie often); 0 for an all-zero block."""
    low, high = blocks.min(-1), blocks.max(-1)
    extreme = np.where(np.abs(high) > np.abs(low), high, low)
    return (extreme / np.float32(-8.0)).astype(np.float32)


def _pack(nibbles: np.ndarray) -> np.ndarray:
    nibbles = nibbles.astype(np.uint8) & 0x0F
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


def quantize_matmul_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float32 -> (packed [N, blocks, BLOCK // 2] uint8, scales [N, blocks] float32)."""
    k, n = weight.shape
    blocks = -(-k // BLOCK)
    packed = np.empty((n, blocks, BLOCK // 2), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    for start in range(0, n, _COLUMNS):  # a 2.2B lm_head is 0.4 GB: its temporaries in slices
        stop = min(n, start + _COLUMNS)
        padded = np.zeros((stop - start, blocks * BLOCK), np.float32)
        padded[:, :k] = weight[:, start:stop].T
        by_block = padded.reshape(stop - start, blocks, BLOCK)
        scales[start:stop] = part = block_scales(by_block)
        # onnxruntime's MLAS kernel: times the reciprocal, + 8.5, floored, in float32
        inverse = np.divide(np.float32(1.0), part, out=np.zeros_like(part), where=part != 0)
        levels = np.clip(np.floor((by_block * inverse[..., None]).astype(np.float32) + np.float32(8.5)), 0, 15)
        levels.reshape(stop - start, -1)[:, k:] = 0  # rows past K: 0 nibbles, as onnxruntime leaves them
        packed[start:stop] = _pack(levels)
    return packed, scales


def quantize_gather_table(table: np.ndarray) -> tuple[bytes, np.ndarray]:
    """[rows, hidden] float32 -> (INT4 raw data, scales [rows, hidden // BLOCK] float32)."""
    rows, hidden = table.shape
    if hidden % BLOCK:
        raise ValueError(f"a {hidden}-wide table does not split into blocks of {BLOCK}")
    packed = np.empty((rows, hidden // 2), np.uint8)
    scales = np.empty((rows, hidden // BLOCK), np.float32)
    for start in range(0, rows, _ROWS):  # temporaries in slices, as for MatMul weights
        by_block = table[start : start + _ROWS].reshape(-1, hidden // BLOCK, BLOCK)
        scales[start : start + _ROWS] = part = block_scales(by_block)
        # onnxruntime's numpy path for Gather: divided, rounded half to even
        quotient = np.divide(by_block, part[..., None], out=np.zeros_like(by_block), where=part[..., None] != 0)
        levels = np.clip(np.rint(quotient), -8, 7).astype(np.int8)
        packed[start : start + _ROWS] = _pack(levels.reshape(-1, hidden))
    return packed.tobytes(), scales


def quantize_q4(model: onnx.ModelProto, *, gather: bool = False) -> onnx.ModelProto:
    """`model` with its MatMuls (or, with `gather`, its embedding Gathers) in 4 bits, in place."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced: set[str] = set()
    nodes = []
    for node in graph.node:
        new = _gather_node(node, weights, graph) if gather else _matmul_node(node, weights, graph)
        if new is None:
            nodes.append(node)
            continue
        nodes.append(new)
        source = node.input[0] if gather else node.input[1]
        users[source] -= 1
        if not users[source]:
            replaced.add(source)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if gather:  # INT4 tensors need opset 21
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < 21:
                opset.version = 21
    return model


def _constant(name: str, weights: dict) -> np.ndarray | None:
    tensor = weights.get(name)
    if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
        return None
    return numpy_helper.to_array(tensor)


def _matmul_node(node, weights: dict, graph) -> onnx.NodeProto | None:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    weight = _constant(node.input[1], weights)
    if weight is None:
        return None
    packed, scales = quantize_matmul_weight(weight)
    base = node.input[1]
    graph.initializer.extend(
        [numpy_helper.from_array(packed, f"{base}_Q4"), numpy_helper.from_array(scales, f"{base}_scales")]
    )
    k, n = weight.shape
    return helper.make_node(
        "MatMulNBits",
        [node.input[0], f"{base}_Q4", f"{base}_scales"],
        list(node.output),
        name=node.name,
        domain=MS_DOMAIN,
        K=k,
        N=n,
        accuracy_level=4,
        bits=4,
        block_size=BLOCK,
    )


def _gather_node(node, weights: dict, graph) -> onnx.NodeProto | None:
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    table = _constant(node.input[0], weights)
    if table is None or axis != 0 or table.shape[1] % BLOCK:
        return None
    data, scales = quantize_gather_table(table)
    base = node.input[0]
    packed = helper.make_tensor(f"{base}_Q4", TensorProto.INT4, list(table.shape), data, raw=True)
    graph.initializer.extend([packed, numpy_helper.from_array(scales, f"{base}_scales")])
    return helper.make_node(
        "GatherBlockQuantized",
        [f"{base}_Q4", node.input[1], f"{base}_scales"],
        list(node.output),
        name=node.name,
        domain=MS_DOMAIN,
        block_size=BLOCK,
        gather_axis=0,
        quantize_axis=1,
    )
