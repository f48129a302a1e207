"""Quantized and half-precision variants, made from the fp32 graphs with onnxruntime's own tools.

- `int8`: `quantize_dynamic`, QInt8 weights, per-tensor, MatMul only (per-tensor was both faster
  and more faithful than per-channel on the AVX2 machines here); embed_tokens also quantizes its
  Gather (a 4x smaller table, dequantized after the lookup). One activation scale per run: the
  rows of a batched decode step change each other's logits. 8-bit `MatMulNBits` (`quantize_nbits`
  bits=8, blocks of 64) is row-independent and closer to fp32, but prefill and vision were
  1.5-1.9x slower (compute-bound) and one-row decode 10-25% slower here (ORT 1.32, AVX-512 VNNI).
- `q4`: 4-bit symmetric blocks of 32 in `MatMulNBits`, accuracy_level 4 (int8 activations, the
  fast CPU kernel); embed_tokens gets a 4-bit `GatherBlockQuantized` table. Written by `q4.py`,
  byte for byte what onnxruntime's `MatMulNBitsQuantizer` writes (`quantize_nbits`, kept for
  comparisons: it needs onnx_ir, which only the test extras bring).
- `fp16`: `convert_float_to_float16`. Vision and embed_tokens keep float32 inputs and outputs; the
  decoder keeps float32 `inputs_embeds` and `logits` and takes a float16 KV cache, like the Hub's
  fp16 decoders (runtimes read the cache dtype from the session).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path

import numpy as np
import onnx

from smolvlm_cli.builder.onnx_writer import save_onnx

_QUANTIZER_LOGGERS = ("", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer")


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizers log advice (pre-processing, opset bumps) at WARNING on root."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in _QUANTIZER_LOGGERS]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _is_large(src: Path) -> bool:
    """Whether the fp32 graph keeps its weights beside it (above protobuf's 2 GB limit)."""
    return any(src.with_name(src.name + ext).is_file() for ext in ("_data", ".data"))


def _infer_value_info_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxruntime's `save_and_reload_model_with_shape_infer` gives its quantizer (the model
    with value_info, inputs and outputs re-inferred, tagged as inferred) without its copies (it
    deep-copies the model, saves the copy and loads it back). Shape inference reads the dims of
    large initializers, not their data, so it runs on a skeleton whose initializers of 1 MB or
    more (or still on disk) carry dims only; small ones (shape constants) keep their data."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.name = model.graph.name
    for field in ("node", "input", "output", "sparse_initializer"):
        getattr(graph, field).extend(getattr(model.graph, field))
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() < 2**20:
            graph.initializer.append(init)
        else:
            graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    for field in ("value_info", "input", "output"):  # inference may refine output dims too
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(getattr(inferred.graph, field))
    add_infer_metadata(model)
    return model


def _external_bytes(base_dir: Path, tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's bytes straight from its external data file: a plain read (no map whose pages
    would stay in the process's RSS), and no refusal of hard-linked files, unlike onnx's loader
    (so a graph folder copied with `cp -l` quantizes too)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = base_dir / info["location"]
    if location.resolve().parent != base_dir.resolve():
        raise ValueError(f"external data of {tensor.name} outside {base_dir}: {info['location']}")
    return np.fromfile(location, dtype=np.uint8, count=int(info["length"]), offset=int(info.get("offset", 0)))


def _read_external(base_dir: Path, initializer: onnx.TensorProto) -> np.ndarray:
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type))
    return _external_bytes(base_dir, initializer).view(dtype).reshape(tuple(initializer.dims))


def _load_external(model: onnx.ModelProto, base_dir: Path) -> None:
    """`onnx.external_data_helper.load_external_data_for_model` for the initializers (the same
    fields set), read by `_external_bytes`; anything else still on disk goes to onnx's loader."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            tensor.raw_data = _external_bytes(base_dir, tensor).tobytes()
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    load_external_data_for_model(model, str(base_dir))  # a no-op for the graphs we build


@contextlib.contextmanager
def _patched(patches: list[tuple[object, str, object]]):
    """Set module attributes for the duration (each only where the module has it)."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches if hasattr(module, name)]
    for module, name, value in patches:
        if hasattr(module, name):
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _quantize_dynamic_streaming(src: Path, dst: Path, ops: list[str], extra_options: dict) -> None:
    """onnxruntime's `quantize_dynamic` (its own ONNXQuantizer, the same steps and arguments) with
    the fp32 weights left on disk until the quantizer asks for each one. `quantize_dynamic` loads
    every weight into the protobuf, re-infers shapes on a deep copy that it saves and loads back,
    and copies the fp32 initializers out once more as it drops them: 3.3-3.5x the fp32 graph at
    the peak (256M decoder 1.87 GB for 0.54 GB of weights, 500M decoder 4.76 GB for 1.35 GB,
    2.2B vision 5.36 GB for 1.62 GB; the 2.2B decoder's 6.4 GB would need ~22 GB). Here the
    graph is loaded without its external data, shapes are inferred on a weightless skeleton, each
    weight is read from disk when asked for, and the initializers left unquantized (norms,
    biases) are loaded before saving: the peak is the int8 weights plus one fp32 matrix's
    temporaries (0.67, 1.23 and 0.90 GB for those three graphs), and it runs 2-4x faster. The
    output is byte-identical for the builder's graphs; for traced graphs with inline weights it
    differs only in the explicit `data_location` DEFAULT that onnxruntime's round trip leaves
    (tests/test_builder_quantize_memory.py)."""
    from onnxruntime.quantization import base_quantizer, onnx_quantizer
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, update_opset_version

    base_dir = src.parent
    original = onnx_quantizer.tensor_proto_to_array

    def tensor_proto_to_array(initializer: onnx.TensorProto) -> np.ndarray:
        if initializer.data_location == onnx.TensorProto.EXTERNAL and initializer.data_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
        ):
            return _read_external(base_dir, initializer)
        return original(initializer)

    patches = [
        (module, name, value)
        for module in (onnx_quantizer, base_quantizer)
        for name, value in (
            ("save_and_reload_model_with_shape_infer", _infer_value_info_in_place),
            ("tensor_proto_to_array", tensor_proto_to_array),
        )
    ]
    model = _infer_value_info_in_place(onnx.load(str(src), load_external_data=False))
    model = update_opset_version(model, QuantType.QInt8)
    with _patched(patches):
        quantizer = ONNXQuantizer(
            model,
            False,
            False,
            QuantizationMode.IntegerOps,
            False,
            QuantType.QInt8,
            QuantType.QUInt8,
            None,
            [],
            [],
            ops,
            extra_options,
        )
        quantizer.quantize_model()
    _load_external(quantizer.model.model, base_dir)
    quantizer.model.save_model_to_file(str(dst), _is_large(src))


def _release_freed_memory() -> None:
    """glibc keeps the quantizer's freed protobuf buffers in its heap: without a trim the next
    graph's build starts from that high-water mark (0.7 GB after the 256M vision and embed graphs)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def quantize_int8(src: Path, dst: Path, *, gather: bool = False, streaming: bool = True) -> None:
    ops = ["MatMul", "Gather"] if gather else ["MatMul"]
    # contrib ops (GroupQueryAttention...) have no shape inference in onnx
    extra_options = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet():
        if streaming:
            _quantize_dynamic_streaming(src, dst, ops, extra_options)
            return
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=False,
            op_types_to_quantize=ops,
            use_external_data_format=_is_large(src),
            extra_options=extra_options,
        )


def quantize_nbits(src: Path, dst: Path, *, bits: int = 4, block_size: int = 32, gather: bool = False) -> None:
    """`MatMulNBits`, symmetric blocks along K, accuracy_level 4 (the int8-activation CPU kernel,
    which quantizes activations per row and per block: each row's result is independent of the
    other rows of the batch; with blocks of 128 or more, onnxruntime 1.32's one-row kernel gives
    other results than its many-row one)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    kwargs = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)} if gather else {}
    # all-zero blocks (e.g. a padding embedding row) divide 0 by a 0 scale; the quantizer masks it
    with _quiet(), np.errstate(invalid="ignore", divide="ignore"):
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4, **kwargs
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=_is_large(src))


def quantize_q4(src: Path, dst: Path, *, gather: bool = False) -> None:
    """`quantize_nbits(bits=4)`'s graph, byte for byte, from our own writer (`q4.py`)."""
    from smolvlm_cli.builder.q4 import quantize_q4 as to_q4

    save_onnx(to_q4(onnx.load(str(src)), gather=gather), dst)


def convert_fp16(src: Path, dst: Path, *, keep_io_types: bool | list[str] = True) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        model = convert_float_to_float16(model, keep_io_types=keep_io_types)
    save_onnx(model, dst)


def make_variant(graph: str, dtype: str, src: Path, dst: Path) -> None:
    """Write the `dtype` variant of one fp32 graph (`graph` is its base file name)."""
    embed = graph == "embed_tokens"
    if dtype == "int8":
        quantize_int8(src, dst, gather=embed)
    elif dtype == "q4":
        quantize_q4(src, dst, gather=embed)
    elif dtype == "fp16":
        keep: bool | list[str] = True
        if graph == "decoder_model_merged":
            keep = ["inputs_embeds", "logits"]
        convert_fp16(src, dst, keep_io_types=keep)
    else:
        raise ValueError(f"no quantizer for dtype {dtype!r}")
    _release_freed_memory()
    _hub_external_data(dst)
    _keep_io_dims(src, dst)
    _release_freed_memory()


def _keep_io_dims(src: Path, dst: Path) -> None:
    """The quantizers re-run shape inference and may pin symbolic dimensions of the graph's
    inputs and outputs to numbers (e.g. `tokens_per_tile` -> 64): restore the fp32 graph's names."""
    source = onnx.load(str(src), load_external_data=False)
    variant = onnx.load(str(dst), load_external_data=False)
    want = {v.name: v.type.tensor_type.shape for v in [*source.graph.input, *source.graph.output]}
    changed = False
    for value in [*variant.graph.input, *variant.graph.output]:
        shape = want.get(value.name)
        got = value.type.tensor_type.shape
        if shape is not None and len(shape.dim) == len(got.dim) and shape != got:
            for d_src, d_dst in zip(shape.dim, got.dim):
                if d_src.HasField("dim_param"):
                    d_dst.dim_param = d_src.dim_param
            changed = True
    if changed:  # external data stays where it is: only the graph proto is rewritten
        onnx.save(variant, str(dst))


def _hub_external_data(path: Path) -> None:
    """onnxruntime's quantizers name external data `x.onnx.data`; the Hub uses `x.onnx_data`
    (or one file when the quantized graph fits in 2 GB)."""
    scattered = path.with_name(path.name + ".data")
    if scattered.is_file():
        save_onnx(onnx.load(str(path)), path)
        scattered.unlink()
