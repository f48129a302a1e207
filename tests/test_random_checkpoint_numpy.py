"""scripts/random_checkpoint.py --numpy: torch-free random checkpoints that transformers and the
graph builder read as if transformers had saved them (tiny sizes: seconds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_dir
from transformers import AutoModelForImageTextToText

from smolvlm_cli.builder.build import build_graphs
from smolvlm_cli.builder.weights import Checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "random_checkpoint.py"
_spec = importlib.util.spec_from_file_location("random_checkpoint", SCRIPT)
rc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rc)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def _write(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    proc = _run(str(fixture_dir(args[0])), str(out), "--numpy", "--tiny", *args[1:])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n" and "checkpoint written" in proc.stderr  # the table is status
    return out


def _load(model_dir: Path):
    model, info = AutoModelForImageTextToText.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model


def test_bf16_single_file_loads_in_transformers_and_builds(tmp_path):
    out = _write(tmp_path, "bf16", "SmolVLM2-256M-Video-Instruct")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    model = _load(out)
    assert model.dtype == torch.bfloat16 and not model.config.tie_word_embeddings
    ckpt = Checkpoint(out)
    assert ckpt.dtypes == {"BF16"}
    state = model.state_dict()
    assert set(ckpt.names()) == set(state)
    for name in (
        "lm_head.weight",
        "model.text_model.layers.0.input_layernorm.weight",
        "model.vision_model.encoder.layers.1.mlp.fc1.bias",
    ):
        assert np.array_equal(ckpt.get(name), state[name].float().numpy()), name
    q = ckpt.get("model.text_model.layers.0.self_attn.q_proj.weight")
    assert abs(float(q.std()) - 0.02) < 1e-3
    assert (ckpt.get("model.text_model.norm.weight") == 1).all()
    assert (ckpt.get("model.vision_model.embeddings.patch_embedding.bias") == 0).all()
    graphs = build_graphs(out, tmp_path / "onnx", [("vision", "fp32"), ("embed", "fp32"), ("decoder", "fp32")])
    assert all(p.is_file() for p in graphs)


def test_sharded_2_2b_idefics3_fp16_and_values_do_not_depend_on_sharding(tmp_path):
    sharded = _write(
        tmp_path, "sharded", "SmolVLM2-256M-Video-Instruct", "--arch", "2.2b", "--shards", "3", "--dtype", "fp32"
    )
    single = _write(tmp_path, "single", "SmolVLM2-256M-Video-Instruct", "--arch", "2.2b", "--dtype", "fp32")
    shards = [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == shards
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum((sharded / s).stat().st_size for s in shards) - sum(
        8 + int.from_bytes((sharded / s).read_bytes()[:8], "little") for s in shards
    )
    model = _load(sharded)
    assert model.config.vision_config.image_size == 384 and model.config.scale_factor == 3
    a, b = Checkpoint(sharded), Checkpoint(single)
    for name in a.names():
        assert np.array_equal(a.get(name), b.get(name)), name
    fp16 = _write(tmp_path, "fp16", "SmolVLM-256M-Instruct", "--dtype", "fp16", "--shards", "2")
    assert type(_load(fp16)).__name__ == "Idefics3ForConditionalGeneration"
    assert Checkpoint(fp16).dtypes == {"F16"}


def test_bf16_rounds_like_torch():
    x = np.random.default_rng(1).standard_normal(1 << 16, dtype=np.float32)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(rc._encode(x.copy(), "bf16"), ref)


@pytest.mark.parametrize("extra", [("--numpy", "--shards", "0"), ("--dtype", "fp16"), ("--numpy", "--arch", "9b")])
def test_bad_options_fail_with_one_error_line(tmp_path, extra):
    proc = _run(str(fixture_dir("SmolVLM2-256M-Video-Instruct")), str(tmp_path / "out"), *extra)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
