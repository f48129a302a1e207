"""builder/quantize.py's copy-free shape re-inference gives byte-identical int8 graphs to
onnxruntime's own (which holds three copies of the fp32 weights at once), and build.py unmaps the
checkpoint once a graph is written. Tiny checkpoint: seconds."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import onnx
import pytest
from conftest import fixture_dir

from smolvlm_cli.builder import quantize
from smolvlm_cli.builder.build import build_graphs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "random_checkpoint.py"


@pytest.fixture(scope="module")
def fp32_graphs(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("random_checkpoint", SCRIPT)
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    out = tmp_path_factory.mktemp("ckpt")
    rc.write_numpy_config(fixture_dir("SmolVLM2-256M-Video-Instruct"), out, "bf16", tiny=True, arch_22b=False)
    rc.write_numpy_checkpoint(out, "bf16")
    build_graphs(out, out / "onnx", [(c, "fp32") for c in ("vision", "embed", "decoder")])
    return out / "onnx"


@pytest.mark.parametrize("graph", ["vision_encoder", "embed_tokens", "decoder_model_merged"])
def test_int8_is_identical_to_onnxruntimes_own_reload(fp32_graphs, tmp_path, monkeypatch, graph):
    src = fp32_graphs / f"{graph}.onnx"
    quantize.make_variant(graph, "int8", src, tmp_path / "ours.onnx")
    monkeypatch.setattr(quantize, "_no_model_copies", contextlib.nullcontext)
    quantize.make_variant(graph, "int8", src, tmp_path / "ort.onnx")
    ours, ort = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "ort.onnx"))
    assert ours.SerializeToString() == ort.SerializeToString()


def test_the_patch_is_undone_after_quantizing(fp32_graphs, tmp_path):
    from onnxruntime.quantization import onnx_quantizer

    before = onnx_quantizer.save_and_reload_model_with_shape_infer
    quantize.make_variant("embed_tokens", "int8", fp32_graphs / "embed_tokens.onnx", tmp_path / "e.onnx")
    assert onnx_quantizer.save_and_reload_model_with_shape_infer is before
