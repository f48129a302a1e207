"""The int8 KV cache (builder/kv_cache.py): calibrated scales, closeness to fp32, batched decoding.

The int8 decoder of a build carries an int8 cache. To test the cache alone, the tiny model's
fp32 decoder gets one too (the same calibration and rewrite): with fp32 weights the rows of a
batched step do not change each other's results (int8 weights quantize the activations of all
rows with one scale), so batched decoding must give exactly the one-by-one replies.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from smolvlm_cli import SmolVLM
from smolvlm_cli.backends.onnx import OnnxBackend
from smolvlm_cli.builder import kv_cache
from smolvlm_cli.builder.architecture import Architecture
from smolvlm_cli.builder.text import EMBED
from smolvlm_cli.builder.weights import Checkpoint
from smolvlm_cli.export import check as chk
from smolvlm_cli.options import GenerationOptions
from test_batch_decode import five_prompts, one_by_one, summary
from test_engine import CASES, _our_run

MODEL = "SmolVLM2-256M-Video-Instruct"


@pytest.fixture(scope="module")
def kv_dir(tiny_onnx_dir, tmp_path_factory):
    """The tiny fp32 graphs with an int8 cache on the fp32 decoder; its calibration embeds and scales."""
    src = tiny_onnx_dir(MODEL)
    out = tmp_path_factory.mktemp("kv-cache") / MODEL
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".smolvlm-cache"))
    decoder = out / "onnx" / "decoder_model_merged.onnx"
    table = Checkpoint(out).get(EMBED)
    embeds = kv_cache.calibration_embeds(out, out / "onnx" / "vision_encoder.onnx", lambda ids: table[ids])
    scales = kv_cache.calibrate(decoder, embeds, Architecture.from_dir(out).text.num_layers)
    kv_cache.use_int8_cache(decoder, scales)
    return out, embeds, scales


def _vlm(model_dir, shared=True):
    vlm = SmolVLM.from_pretrained(model_dir, backend="onnx", graphs="hub")
    if not shared:
        vlm.backend = OnnxBackend(model_dir, vlm.config, shared_kv=False)
    return vlm


@pytest.mark.parametrize("shared", [True, False])
def test_batched_decoding_with_an_int8_cache_equals_one_by_one(kv_dir, shared):
    vlm = _vlm(kv_dir[0], shared)
    assert vlm.backend.runner.cache_dtype == np.int8 and vlm.backend.runner.shared is shared
    prompts = five_prompts(vlm)
    opts = GenerationOptions(max_new_tokens=12, ignore_eos=True)
    reference = one_by_one(vlm, prompts, opts)
    assert summary(vlm.generate_batch(prompts, opts, batch_size=3)) == reference
    assert summary(vlm.generate_batch(prompts, opts)) == reference


def test_the_calibrated_scales_cover_the_cache_tightly(kv_dir):
    """On the calibration input, every layer's int8 cache uses the range up to 127 / MARGIN and
    never saturates; the key scale is shared by each rotary pair of channels."""
    _, embeds, scales = kv_dir
    _, kv_heads, _, head_dim = scales[0][0].shape
    for k_scale, v_scale in scales:
        np.testing.assert_array_equal(k_scale[..., : head_dim // 2], k_scale[..., head_dim // 2 :])
        assert (k_scale > 0).all() and (v_scale > 0).all()
    decoder = kv_dir[0] / "onnx" / "decoder_model_merged.onnx"
    session = kv_cache._session(decoder)
    empty = np.zeros((1, kv_heads, 0, head_dim), np.int8)
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones(embeds.shape[:2], np.int64)}
    feeds.update({i.name: empty for i in session.get_inputs() if i.name.startswith("past_key_values.")})
    outputs = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    limit = 127 / kv_cache.MARGIN
    for name, cache in zip(outputs, session.run(outputs, feeds)):
        assert cache.dtype == np.int8
        peak = np.abs(cache.astype(np.int32)).max()
        assert 0.75 * limit <= peak <= round(limit) + 1, (name, peak)


def test_an_int8_cache_stays_close_to_fp32(kv_dir, tiny_onnx_dir):
    fp32, int8_cache = _vlm(tiny_onnx_dir(MODEL)), _vlm(kv_dir[0])
    images, prompt, split = CASES["split"]
    from smolvlm_cli.options import Tiling
    from smolvlm_cli.prompt import build_messages

    inputs = fp32.processor.prepare_inputs(build_messages(prompt, len(images)), images, Tiling(split=split))
    tokens, ref = _our_run(fp32, inputs, 16)
    got_tokens, got = _our_run(int8_cache, inputs, 16)
    assert chk.cosine(np.stack(got[:1]), np.stack(ref[:1])) > 0.999  # the prefill's logits
    assert chk.cosine(np.stack(got), np.stack(ref)) > 0.99
