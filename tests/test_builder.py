"""The torch-free graph builder against transformers, on every architecture and checkpoint format.

Tiny random checkpoints of the three fixture models and of a SmolVLM2-2.2B-like model (its config
is built from the published architecture: `export.checkpoint.SMOLVLM2_2_2B`; 384-px tiles,
patch 14, scale 3, 81 tokens per tile), saved as fp32 in one file and as bf16 in shards. For
each, the graphs built from the safetensors give transformers' greedy tokens and logits within
1e-5 at every one of 32 steps. SmolVLM's processor always makes full tiles (an image smaller
than a tile is upscaled to one), so the partially valid patch mask is held against transformers
at the vision graph itself.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from conftest import fast_first
from model_fixtures import build_tiny_checkpoint, source_dir
from smolvlm_cli import SmolVLM
from smolvlm_cli.backends.onnx import OnnxBackend
from smolvlm_cli.builder.architecture import Architecture
from smolvlm_cli.builder.build import build_graphs
from smolvlm_cli.builder.weights import Checkpoint
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ConfigError
from smolvlm_cli.export import check as chk
from smolvlm_cli.export.checkpoint import make_random_checkpoint, write_2_2b_config
from smolvlm_cli.options import Tiling
from smolvlm_cli.processor import Processor
from smolvlm_cli.prompt import build_messages
from test_engine import _reference_run, photo

# SmolVLM2-500M-Video-Instruct is left out: shrunk to a tiny checkpoint it is SmolVLM2-256M's
# architecture (the two differ only in the text sizes the shrinking replaces), so its runs built
# and compared the same graphs with other random weights (`test_the_500m_shrinks_to_the_256m`).
MODELS = ("SmolVLM2-256M-Video-Instruct", "SmolVLM-256M-Instruct", "SmolVLM2-2.2B-like")
FORMATS = ("fp32-single", "bf16-sharded")
STEPS = 32
ATOL = 1e-5
COMPONENTS = ("vision", "embed", "decoder")
CASES = {
    "split": ([photo(700, 500)], "Describe this image.", None),
    "small-unsplit": ([photo(90, 70, 1)], "What is this?", False),
    "two-images": ([photo(300, 200, 2), photo(200, 300, 3)], "Compare these images.", None),
    "text-only": ([], "Write a haiku about tiles.", None),
}


def _checkpoint(name: str, fmt: str, root) -> "Path":  # noqa: F821
    base = root / f"{name}-fp32-single"
    if not (base / "model.safetensors").is_file():
        if name == "SmolVLM2-2.2B-like":
            src = write_2_2b_config(source_dir("SmolVLM2-256M-Video-Instruct"), root / "2.2b-config")
            make_random_checkpoint(src, base, tiny=True)
        else:
            build_tiny_checkpoint(name, base)
    if fmt == "fp32-single":
        return base
    out = root / f"{name}-{fmt}"
    if not (out / "model.safetensors.index.json").is_file():
        from smolvlm_cli.export.checkpoint import copy_config_files

        model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
        model.to(torch.bfloat16).save_pretrained(out, max_shard_size="2MB")
        copy_config_files(base, out)  # the float32 config: the reference upcasts the bf16 weights
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(name, format) -> (checkpoint dir, our fp32+int8 graphs' folder, the transformers model)."""
    root = tmp_path_factory.mktemp("builder")
    cache = {}

    def get(name: str, fmt: str):
        if (name, fmt) not in cache:
            ckpt = _checkpoint(name, fmt, root)
            out = root / f"graphs-{name}-{fmt}"
            build_graphs(ckpt, out / "onnx", [(c, d) for c in COMPONENTS for d in ("fp32", "int8")])
            reference = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
            cache[name, fmt] = ckpt, out, reference
        return cache[name, fmt]

    return get


@functools.lru_cache(maxsize=None)
def _processor(ckpt) -> Processor:  # read-only: shared by the tests of one checkpoint
    return Processor.from_pretrained(ckpt)


def _vlm(ckpt, graphs_dir, dtype="fp32") -> SmolVLM:
    processor = _processor(ckpt)
    backend = OnnxBackend(graphs_dir, processor.config, dtype=dtype, cache=False)
    return SmolVLM(processor, processor.tokenizer, backend)


def _ours(vlm, inputs, forced=None):
    """Greedy (or teacher-forced on `forced`) through our backend: tokens and every step's logits."""
    ids = inputs["input_ids"][0]
    features = None
    if "pixel_values" in inputs:
        real = inputs["pixel_attention_mask"][0].any(axis=(-1, -2))
        features = vlm.backend.encode_images(
            inputs["pixel_values"][0][real], inputs["pixel_attention_mask"][0][real].astype(bool)
        )
        features = features.reshape(-1, features.shape[-1])
    state = vlm.backend.new_state()
    logits = vlm.backend.forward(state, ids, features)
    tokens, out = [], []
    for step in range(STEPS):
        out.append(np.asarray(logits).reshape(-1))
        tokens.append(int(np.argmax(logits)) if forced is None else forced[step])
        logits = vlm.backend.forward(state, np.array([tokens[-1]]))
    return tokens, out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", fast_first(FORMATS))
@pytest.mark.parametrize("name", fast_first(MODELS))
def test_built_graphs_match_transformers_step_by_step(built, name, fmt, case):
    ckpt, graphs, reference = built(name, fmt)
    vlm = _vlm(ckpt, graphs)
    images, prompt, split = CASES[case]
    inputs = vlm.processor.prepare_inputs(build_messages(prompt, len(images)), images, Tiling(split=split))
    ref_tokens, ref_logits = _reference_run(reference, inputs, STEPS)
    tokens, logits = _ours(vlm, inputs)
    for step, (got, want) in enumerate(zip(logits, ref_logits)):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"step {step}")
    assert tokens == ref_tokens


@pytest.mark.parametrize("name", fast_first(MODELS[::-1]))  # the fast loop: the 2.2B geometry
def test_vision_graph_takes_partial_patch_masks_as_transformers_does(built, name):
    ckpt, graphs, reference = built(name, FORMATS[0])
    pixels, mask = chk.vision_inputs(reference, seed=2)  # a full tile, a partial one, a padding tile
    want = chk.vision_reference(reference, pixels, mask)
    (got,) = chk.session(graphs / "onnx" / "vision_encoder.onnx").run(
        None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()}
    )
    assert got.shape == (3, *want.shape[1:]) and np.isfinite(got).all()
    np.testing.assert_allclose(got[:2], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", fast_first(MODELS))
def test_int8_graphs_stay_close_to_fp32(built, name):
    """The int8 variants are onnxruntime's quantizer over our fp32 graphs, as `smolvlm export`
    made them: decoder logits (teacher-forced on fp32's tokens) and vision features stay close."""
    ckpt, graphs, _ = built(name, FORMATS[0])
    fp32, int8 = _vlm(ckpt, graphs), _vlm(ckpt, graphs, "int8")
    images, prompt, split = CASES["two-images"]
    inputs = fp32.processor.prepare_inputs(build_messages(prompt, len(images)), images, Tiling(split=split))
    tokens, ref = _ours(fp32, inputs)
    _, got = _ours(int8, inputs, forced=tokens)
    assert chk.cosine(np.stack(got), np.stack(ref)) > 0.99
    pixels = inputs["pixel_values"][0][:1]
    mask = inputs["pixel_attention_mask"][0][:1].astype(bool)
    assert chk.cosine(int8.backend.encode_images(pixels, mask), fp32.backend.encode_images(pixels, mask)) > 0.99


def test_bf16_fp16_and_fp32_safetensors_read_exactly(built, tmp_path):
    """A bf16 checkpoint's tensors widen to exactly transformers' float32 upcast; fp16 too."""
    from safetensors.torch import save_file

    ckpt, _, reference = built(MODELS[0], FORMATS[1])
    weights = Checkpoint(ckpt)
    assert weights.dtypes == {"BF16"} and len(weights.files) > 1
    name = "model.text_model.layers.0.mlp.down_proj.weight"
    want = dict(reference.named_parameters())[name].detach().numpy()
    np.testing.assert_array_equal(weights.get(name), want)
    half = torch.randn(3, 5).to(torch.float16)
    save_file({"model.x": half, "model.y": half.float()}, str(tmp_path / "model.safetensors"))
    small = Checkpoint(tmp_path)
    np.testing.assert_array_equal(small.get("model.x"), half.float().numpy())
    np.testing.assert_array_equal(small.get("model.y"), half.float().numpy())


def test_the_2_2b_config_reads_like_transformers_reads_it(tmp_path):
    from transformers import AutoConfig

    src = write_2_2b_config(source_dir("SmolVLM2-256M-Video-Instruct"), tmp_path)
    ref = AutoConfig.from_pretrained(src)
    arch = Architecture.from_dir(src)
    assert (
        (arch.text.num_heads, arch.text.num_kv_heads)
        == (ref.text_config.num_attention_heads, ref.text_config.num_key_value_heads)
        == (32, 32)
    )
    assert (arch.vision.num_layers, arch.vision.intermediate_size) == (27, 4304)
    assert arch.tokens_per_tile == ModelConfig.from_dir(src).image_seq_len == 81
    assert arch.tie_word_embeddings is bool(ref.tie_word_embeddings) is False


def test_the_500m_shrinks_to_the_256m():
    """Why MODELS leaves SmolVLM2-500M out: its tiny config is SmolVLM2-256M's, for the builder
    and for transformers, but for two keys that change no graph."""
    from smolvlm_cli.export.checkpoint import _random_config

    def tiny(name: str) -> dict:
        config = _random_config(json.loads((source_dir(name) / "config.json").read_text()), tiny=True)
        config["vision_config"].pop("use_base_siglip", None)  # read by no transformers model class
        config["text_config"].pop("initializer_range", None)  # read by random initialisation only
        return config

    small, large = tiny("SmolVLM2-256M-Video-Instruct"), tiny("SmolVLM2-500M-Video-Instruct")
    assert large == small
    assert Architecture.from_config(large) == Architecture.from_config(small)


@pytest.mark.parametrize(
    "rope",
    [
        None,
        {"rope_type": "linear", "factor": 2.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    ],
)
def test_rotary_tables_equal_transformers(rope):
    from transformers import SmolVLMConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from smolvlm_cli.builder.rope import rotary_tables

    raw = json.loads((source_dir(MODELS[0]) / "config.json").read_text())
    if rope:
        raw["text_config"]["rope_scaling"] = rope
    arch = Architecture.from_config(raw)
    cos, sin = LlamaRotaryEmbedding(SmolVLMConfig(**raw).text_config)(torch.zeros(1, 1, 64), torch.arange(8192)[None])
    ours = rotary_tables(arch.text.rope, 64, 8192)
    np.testing.assert_allclose(ours[0], cos[0, :, :32].numpy(), atol=1.2e-7, rtol=0)
    np.testing.assert_allclose(ours[1], sin[0, :, :32].numpy(), atol=1.2e-7, rtol=0)


def test_tied_lm_head_uses_the_embeddings(built, tmp_path):
    """A tied checkpoint stores no lm_head: transformers' head is the embedding table, ours too."""
    from safetensors.numpy import load_file, save_file

    from smolvlm_cli.export.checkpoint import copy_config_files

    ckpt, _, _ = built(MODELS[2], FORMATS[0])
    tied = tmp_path / "tied"
    copy_config_files(ckpt, tied)
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tied / "model.safetensors")
    config = json.loads((tied / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tied / "config.json").write_text(json.dumps(config))
    reference = AutoModelForImageTextToText.from_pretrained(tied, dtype=torch.float32).eval()
    assert torch.equal(reference.lm_head.weight, reference.get_input_embeddings().weight)
    build_graphs(tied, tied / "onnx", [(c, "fp32") for c in COMPONENTS])
    vlm = _vlm(tied, tied)
    inputs = vlm.processor.prepare_inputs(build_messages("Hello there.", 0), [])
    ref_tokens, ref_logits = _reference_run(reference, inputs, STEPS)
    tokens, logits = _ours(vlm, inputs)
    assert tokens == ref_tokens
    for got, want in zip(logits, ref_logits):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    config["tie_word_embeddings"] = False  # untied and no head: transformers would invent one
    (tied / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no lm_head.weight"):
        build_graphs(tied, tmp_path / "untied", [("decoder", "fp32")])


def test_bad_checkpoints_are_clear_errors(built, tmp_path):
    import shutil

    ckpt, _, _ = built(MODELS[0], FORMATS[0])
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="truncated or damaged"):
        build_graphs(broken, tmp_path / "out", [("decoder", "fp32")])
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        build_graphs(broken, tmp_path / "out", [("decoder", "fp32")])
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "llava"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model_type 'llava' is not supported"):
        build_graphs(broken, tmp_path / "out", [("decoder", "fp32")])
    assert not any((tmp_path / "out").glob("*.onnx")) if (tmp_path / "out").exists() else True
