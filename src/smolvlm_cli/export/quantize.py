"""Quantized and half-precision variants, made from the fp32 graphs with onnxruntime's own tools.

- `int8`: `quantize_dynamic`, QInt8 weights, per-tensor, MatMul only (per-tensor was both faster
  and more faithful than per-channel on the AVX2 machines here); embed_tokens also quantizes its
  Gather (a 4x smaller table, dequantized after the lookup).
- `q4`: `MatMulNBitsQuantizer`, 4-bit symmetric blocks of 32, accuracy_level 4 (int8 activations,
  the fast CPU kernel); embed_tokens gets a 4-bit `GatherBlockQuantized` table.
- `fp16`: `convert_float_to_float16`. Vision and embed_tokens keep float32 inputs and outputs; the
  decoder keeps float32 `inputs_embeds` and `logits` and takes a float16 KV cache, like the Hub's
  fp16 decoders (runtimes read the cache dtype from the session).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

# Per-variant file suffix and quantizer, for the three graphs.
QUANTIZED_DTYPES = ("fp16", "int8", "q4")


def _quiet(loggers: tuple[str, ...] = ("root", "onnxruntime.quantization",
                                       "onnxruntime.quantization.matmul_nbits_quantizer")):
    """onnxruntime's quantizers log advice (pre-processing, opset bumps) at WARNING on root."""
    class _Ctx:
        def __enter__(self):
            self.saved = []
            for name in loggers:
                logger = logging.getLogger() if name == "root" else logging.getLogger(name)
                self.saved.append((logger, logger.level))
                logger.setLevel(logging.ERROR)

        def __exit__(self, *exc):
            for logger, level in self.saved:
                logger.setLevel(level)
    return _Ctx()


def quantize_int8(src: Path, dst: Path, *, gather: bool = False) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gather"] if gather else ["MatMul"]
    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                         reduce_range=False, op_types_to_quantize=ops,
                         extra_options={"MatMulConstBOnly": True})


def quantize_q4(src: Path, dst: Path, *, gather: bool = False) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    kwargs = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)} if gather else {}
    with _quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=True,
                                         accuracy_level=4, **kwargs)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def convert_fp16(src: Path, dst: Path, *, keep_io_types: bool | list[str] = True) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        model = convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.save(model, str(dst))


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
