"""builder/quantize.py's streaming int8 quantization (onnxruntime's own ONNXQuantizer, the fp32
weights left on disk until asked for) gives byte-identical graphs to `quantize_dynamic`, which
holds about twice the fp32 graph in memory. Tiny checkpoint: seconds."""

from __future__ import annotations

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
def test_streaming_int8_is_identical_to_quantize_dynamic(fp32_graphs, tmp_path, graph):
    src, gather = fp32_graphs / f"{graph}.onnx", graph == "embed_tokens"
    quantize.quantize_int8(src, tmp_path / "ours.onnx", gather=gather)
    quantize.quantize_int8(src, tmp_path / "ort.onnx", gather=gather, streaming=False)
    ours, ort = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "ort.onnx"))
    assert ours.SerializeToString() == ort.SerializeToString()
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in ours.graph.initializer)


@pytest.mark.parametrize("graph", ["vision_encoder", "embed_tokens", "decoder_model_merged"])
def test_our_q4_is_onnxruntimes_matmul_nbits_byte_for_byte(fp32_graphs, tmp_path, graph):
    """q4 from numpy and onnx alone (onnxruntime's quantizer needs onnx_ir, which brings sympy:
    not on a default install) gives the weights, scales and nodes onnxruntime's does."""
    src, gather = fp32_graphs / f"{graph}.onnx", graph == "embed_tokens"
    quantize.quantize_q4(src, tmp_path / "ours.onnx", gather=gather)
    quantize.quantize_nbits(src, tmp_path / "ort.onnx", bits=4, gather=gather)
    ours, ort = onnx.load(str(tmp_path / "ours.onnx")), onnx.load(str(tmp_path / "ort.onnx"))

    def tensors(model):
        return {
            t.name: (t.data_type, list(t.dims), onnx.numpy_helper.to_array(t).tobytes())
            for t in model.graph.initializer
        }

    def nodes(model):
        return [
            (n.op_type, n.domain, list(n.input), list(n.output), sorted(map(str, n.attribute)))
            for n in model.graph.node
        ]

    assert tensors(ours) == tensors(ort)
    # (onnxruntime's quantizer also re-sorts the nodes: their order in the file is not compared)
    assert sorted(nodes(ours)) == sorted(nodes(ort)) and any(
        n.op_type.endswith(("NBits", "BlockQuantized")) for n in ours.graph.node
    )
    assert sorted((o.domain, o.version) for o in ours.opset_import) == sorted(
        (o.domain, o.version) for o in ort.opset_import
    )


def test_onnxruntime_is_left_unpatched(fp32_graphs, tmp_path):
    from onnxruntime.quantization import base_quantizer, onnx_quantizer

    before = [
        (m, n, getattr(m, n))
        for m in (onnx_quantizer, base_quantizer)
        for n in ("save_and_reload_model_with_shape_infer", "tensor_proto_to_array")
    ]
    quantize.make_variant(
        "decoder_model_merged", "int8", fp32_graphs / "decoder_model_merged.onnx", tmp_path / "d.onnx"
    )
    assert all(getattr(m, n) is f for m, n, f in before)


def _normalized(path: Path) -> bytes:
    """The graph's bytes with `data_location` cleared: onnxruntime's reload sets DEFAULT (0)
    explicitly on the tensors it round-tripped through external data; unset means the same."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        init.ClearField("data_location")
    return model.SerializeToString()


def test_streaming_int8_of_a_traced_graph_with_inline_weights(fp32_graphs, tmp_path):
    from smolvlm_cli.export import export_onnx

    out = export_onnx(fp32_graphs.parent, tmp_path / "hub", dtypes=("fp32",), style="official", log=lambda m: None)
    src = Path(out["out_dir"]) / "onnx" / "decoder_model_merged.onnx"
    quantize.quantize_int8(src, tmp_path / "ours.onnx")
    quantize.quantize_int8(src, tmp_path / "ort.onnx", streaming=False)
    assert _normalized(tmp_path / "ours.onnx") == _normalized(tmp_path / "ort.onnx")


def test_streaming_int8_reads_a_hard_linked_fp32_graph(fp32_graphs, tmp_path):
    """onnx's own external-data loader refuses hard-linked files (onnx 1.23), so quantize_dynamic
    fails on a graph folder copied with `cp -l`; the streaming path reads the data itself."""
    import os

    for name in ("vision_encoder.onnx", "vision_encoder.onnx_data"):
        os.link(fp32_graphs / name, tmp_path / name)
    quantize.make_variant("vision_encoder", "int8", tmp_path / "vision_encoder.onnx", tmp_path / "v.onnx")
    assert onnx.load(str(tmp_path / "v.onnx")).graph.node
