from __future__ import annotations

import pytest

from smolvlm_cli.dtypes import format_dtype, onnx_files, parse_dtype, resolve_dtype


def test_single_and_per_component_specs():
    assert parse_dtype(None) == {"vision": "int8", "embed": "int8", "decoder": "int8"}  # the default
    assert parse_dtype("fp32") == {"vision": "fp32", "embed": "fp32", "decoder": "fp32"}
    # components a spec leaves out keep the default
    assert parse_dtype("vision=fp32,decoder=fp16") == {"vision": "fp32", "embed": "int8", "decoder": "fp16"}
    assert parse_dtype("q4, vision_encoder=fp16") == {"vision": "fp16", "embed": "q4", "decoder": "q4"}
    assert format_dtype(parse_dtype("int8")) == "int8"
    assert format_dtype(parse_dtype("decoder=fp32")) == "vision=int8,embed=int8,decoder=fp32"


def test_default_falls_back_per_component_to_what_the_folder_has(tmp_path):
    (tmp_path / "onnx").mkdir()
    for name in ("vision_encoder", "embed_tokens", "decoder_model_merged", "decoder_model_merged_int8"):
        (tmp_path / "onnx" / f"{name}.onnx").write_bytes(b"graph")
    assert resolve_dtype(None, tmp_path) == {"vision": "fp32", "embed": "fp32", "decoder": "int8"}
    # an explicit spec is never substituted
    assert resolve_dtype("int8", tmp_path) == {"vision": "int8", "embed": "int8", "decoder": "int8"}


def test_files_follow_the_hub_layout():
    assert onnx_files("vision=fp16,decoder=q4") == {
        "vision": "onnx/vision_encoder_fp16.onnx",
        "embed": "onnx/embed_tokens_int8.onnx",
        "decoder": "onnx/decoder_model_merged_q4.onnx",
    }


@pytest.mark.parametrize(
    "spec",
    [
        "int9",
        "vision=int9",
        "eyes=int8",
        "decoder=",
        "int8,fp32",
        "vision=int8,vision=fp32",
        "vision=int8,vision_encoder=q4",
    ],
)
def test_bad_specs(spec):
    """Two dtypes for one component (the last used to win silently) are refused too."""
    with pytest.raises(ValueError):
        parse_dtype(spec)
    assert parse_dtype("int8,int8") == parse_dtype("int8")  # the same twice is no conflict
