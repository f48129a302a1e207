from __future__ import annotations

import pytest

from smolvlm_cli.dtypes import format_dtype, onnx_files, parse_dtype


def test_single_and_per_component_specs():
    assert parse_dtype(None) == {"vision": "fp32", "embed": "fp32", "decoder": "fp32"}
    assert parse_dtype("int8") == {"vision": "int8", "embed": "int8", "decoder": "int8"}
    assert parse_dtype("vision=fp32,decoder=int8") == {"vision": "fp32", "embed": "fp32", "decoder": "int8"}
    assert parse_dtype("q4, vision_encoder=fp16") == {"vision": "fp16", "embed": "q4", "decoder": "q4"}
    assert format_dtype(parse_dtype("int8")) == "int8"
    assert format_dtype(parse_dtype("decoder=int8")) == "vision=fp32,embed=fp32,decoder=int8"


def test_files_follow_the_hub_layout():
    assert onnx_files("vision=fp16,decoder=q4") == {
        "vision": "onnx/vision_encoder_fp16.onnx", "embed": "onnx/embed_tokens.onnx",
        "decoder": "onnx/decoder_model_merged_q4.onnx"}


@pytest.mark.parametrize("spec", ["int9", "vision=int9", "eyes=int8", "decoder="])
def test_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_dtype(spec)
