"""The engine against transformers, step by step: same logits (within float noise), same tokens.

Tiny random checkpoints of both formats are exported in the test session; transformers' own
model class, fed the same processor inputs, is the reference. Per-step logits are compared over
a 32-token greedy run for a split image, an unsplit image, two images and a text-only prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from smolvlm_cli import SmolVLM
from smolvlm_cli.backends.onnx import OnnxBackend
from smolvlm_cli.backends.torch import TorchBackend
from smolvlm_cli.errors import BackendUnavailableError, ConfigError
from smolvlm_cli.backends.select import Selection, select_backend
from smolvlm_cli.options import GenerationOptions, Tiling
from smolvlm_cli.prompt import build_messages

NAMES = ("SmolVLM2-256M-Video-Instruct", "SmolVLM-256M-Instruct")
STEPS = 32
ATOL = 2e-4  # tiny-model logits are O(1); fp32 graph vs eager torch differ by ~1e-6


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients plus noise) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], -1)
    img = base * 200 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


CASES = {
    "split": ([photo(700, 500)], "Describe this image.", None),
    "no-split": ([photo(640, 480, 1)], "What is this?", False),
    "two-images": ([photo(300, 200, 2), photo(200, 300, 3)], "Compare these images.", None),
    "text-only": ([], "Write a haiku about tiles.", None),
}


@pytest.fixture(scope="module")
def references():
    cache = {}

    def load(model_dir):
        if model_dir not in cache:
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
            cache[model_dir] = model.eval()
        return cache[model_dir]

    return load


@pytest.fixture(scope="module")
def loaded():
    """(model dir, backend) -> SmolVLM, loaded once for the cases that only read it."""
    cache = {}

    def load(model_dir, backend):
        if (model_dir, backend) not in cache:
            cache[model_dir, backend] = SmolVLM.from_pretrained(model_dir, backend=backend)
        return cache[model_dir, backend]

    return load


def _reference_run(model, inputs, steps):
    """transformers' greedy generate: the token ids and the raw logits of every step."""
    feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.inference_mode():
        out = model.generate(
            **feeds,
            max_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return new, [step[0].float().numpy() for step in out.logits]


def _our_run(vlm, inputs, steps):
    """Our backend's greedy loop, feeding its own choices: ids and the logits of every step."""
    ids = inputs["input_ids"][0]
    features = None
    if "pixel_values" in inputs:
        real = inputs["pixel_attention_mask"][0].any(axis=(-1, -2))
        features = vlm.backend.encode_images(inputs["pixel_values"][0][real], inputs["pixel_attention_mask"][0][real])
        features = features.reshape(-1, features.shape[-1])
    state = vlm.backend.new_state()
    logits = vlm.backend.forward(state, ids, features)
    tokens, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = vlm.backend.forward(state, np.array([tokens[-1]]))
    return tokens, all_logits


# the fast loop compares one split and one unsplit run; the full suite every combination
FAST_MATRIX = {("onnx", NAMES[0], "split"), ("torch", NAMES[0], "no-split")}


@pytest.mark.parametrize(
    "backend, name, case",
    [
        pytest.param(
            backend,
            name,
            case,
            id=f"{backend}-{name}-{case}",
            marks=() if (backend, name, case) in FAST_MATRIX else pytest.mark.slow,
        )
        for backend in ("onnx", "torch")
        for name in NAMES
        for case in CASES
    ],
)
def test_logits_and_tokens_match_transformers(tiny_onnx_dir, references, loaded, name, case, backend):
    model_dir = tiny_onnx_dir(name)
    vlm = loaded(model_dir, backend)
    assert vlm.backend.name == backend
    images, prompt, split = CASES[case]
    inputs = vlm.processor.prepare_inputs(build_messages(prompt, len(images)), images, Tiling(split=split))
    if case == "split":
        assert inputs["pixel_values"].shape[1] > 1
    if case == "no-split":
        assert inputs["pixel_values"].shape[1] == 1
    ref_tokens, ref_logits = _reference_run(references(str(model_dir)), inputs, STEPS)
    tokens, logits = _our_run(vlm, inputs, STEPS)
    for step, (ours, ref) in enumerate(zip(logits, ref_logits)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0, err_msg=f"step {step}")
    assert tokens == ref_tokens
    # The public API produces the same tokens (it stops at eos like transformers would).
    stream = vlm.stream(
        images, prompt, tiling=Tiling(split=split), max_new_tokens=STEPS, options=GenerationOptions(ignore_eos=True)
    )
    text = stream.text()
    assert stream.token_ids == ref_tokens
    assert text == vlm.tokenizer.decode(ref_tokens, skip_special_tokens=True).lstrip()
    assert stream.stats.generated_tokens == STEPS and stream.stats.stop_reason == "length"


def test_the_torch_backend_passes_the_cache_by_the_current_keyword(tiny_onnx_dir, loaded):
    """transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name warns and
    goes in 5.40): the reference backend follows, so it warns nothing and keeps working."""
    import warnings

    vlm = loaded(tiny_onnx_dir(NAMES[0]), "torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vlm.generate([photo(64, 48)], "Describe.", tiling="low", max_new_tokens=3)
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]


def test_seeded_sampling_is_reproducible(tiny_onnx_dir):
    vlm = SmolVLM.from_pretrained(tiny_onnx_dir(NAMES[0]))
    kwargs = dict(tiling="low", max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95)
    image = photo(320, 240)
    first = vlm.stream([image], "Describe.", seed=3, **kwargs)
    first.text()
    again = vlm.stream([image], "Describe.", seed=3, **kwargs)
    again.text()
    other = vlm.stream([image], "Describe.", seed=4, **kwargs)
    other.text()
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


@pytest.mark.slow  # int8 and q4 exports
@pytest.mark.parametrize("dtype", ["int8", "q4", "vision=fp32,decoder=int8"])
def test_quantized_variants_load_and_generate(tiny_onnx, dtype):
    model_dir = tiny_onnx[NAMES[0]]
    vlm = SmolVLM.from_pretrained(model_dir, dtype=dtype)
    assert vlm.backend.name == "onnx"
    stream = vlm.stream(
        [photo(320, 240)], "Describe.", tiling="low", max_new_tokens=8, options=GenerationOptions(ignore_eos=True)
    )
    stream.text()
    assert len(stream.token_ids) == 8
    assert all(0 <= t < vlm.config.vocab_size for t in stream.token_ids)


def test_stops_on_the_generation_config_eos(tiny_onnx_dir, monkeypatch):
    """Make the greedy choice of step 3 the eos id: generation stops there and prints nothing of it."""
    vlm = SmolVLM.from_pretrained(tiny_onnx_dir(NAMES[0]))
    eos = vlm.config.eos_token_ids[0]
    forward = vlm.backend.forward
    calls = []

    def forced(state, ids, features=None):
        logits = forward(state, ids, features).copy()
        calls.append(1)
        if len(calls) == 3:
            logits[eos] = logits.max() + 10
        return logits

    monkeypatch.setattr(vlm.backend, "forward", forced)
    stream = vlm.stream([], "Hello", max_new_tokens=20)
    text = stream.text()
    assert stream.token_ids[-1] == eos and len(stream.token_ids) == 3
    assert stream.stats.stop_reason == "stop"
    assert text == vlm.tokenizer.decode(stream.token_ids[:-1]).lstrip()


def test_auto_backend_selection(tiny_onnx_dir, tiny_checkpoints, tmp_path):
    import shutil

    from smolvlm_cli.builder.cache import graphs_root

    # the session fixture may hand back a folder built with more dtypes (test_export.py asks for
    # fp16 too): copy its fp32 graphs only, so that fp16 is really missing below
    with_onnx = tmp_path / "fp32-only"
    shutil.copytree(
        tiny_onnx_dir(NAMES[0]),
        with_onnx,
        ignore=shutil.ignore_patterns("*_fp16.onnx*", "*_int8.onnx*", "*_q4.onnx*", ".smolvlm-cache"),
    )
    # a folder holding our graphs runs them
    assert select_backend(str(with_onnx), "auto", "fp32") == Selection("onnx", with_onnx, with_onnx)
    # a checkpoint alone: our graphs are built from its safetensors into the cache
    torch_only = tiny_checkpoints[NAMES[0]]
    built = select_backend(str(torch_only), "auto", None)
    assert (built.backend, built.model_dir) == ("onnx", torch_only)
    assert built.graphs_dir.parent.parent == graphs_root()
    assert SmolVLM.from_pretrained(torch_only).backend.name == "onnx"
    # the repo's own graphs asked for, and it has none: torch takes over where it can run the dtype
    assert select_backend(str(torch_only), "auto", None, graphs="hub") == Selection("torch", torch_only)
    # a dtype our folder lacks is built from its safetensors, not run by torch
    fp16 = select_backend(str(with_onnx), "auto", "fp16")
    assert fp16.backend == "onnx" and fp16.graphs_dir != with_onnx
    # a variant only the Hub publishes (q4f16): the folder's own graphs, else a clear error
    with pytest.raises(BackendUnavailableError, match="no ONNX files for dtype q4f16") as err:
        select_backend(str(with_onnx), "auto", "q4f16")
    assert "--dtype" in err.value.hint
    # Neither graphs nor weights: a clear error saying what to do.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in torch_only.iterdir():
        if f.suffix in (".json", ".txt"):
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(BackendUnavailableError, match="no ONNX files") as err:
        SmolVLM.from_pretrained(bare)
    assert "safetensors" in err.value.hint


def test_onnx_graph_that_does_not_fit_the_config(tiny_onnx_dir, tmp_path):
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_onnx_dir(NAMES[0]), model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 5
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="does not match config.json"):
        SmolVLM.from_pretrained(model_dir, backend="onnx")


def test_truncated_onnx_file_is_a_clear_error(tiny_onnx_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_onnx_dir(NAMES[0]), model_dir)
    graph = model_dir / "onnx" / "decoder_model_merged.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="decoder_model_merged.onnx"):
        OnnxBackend(model_dir, SmolVLM.from_pretrained(tiny_onnx_dir(NAMES[0])).config)


def test_torch_backend_rejects_onnx_dtypes(tiny_checkpoints):
    from smolvlm_cli.config import ModelConfig

    d = tiny_checkpoints[NAMES[0]]
    with pytest.raises(ValueError, match="int8"):
        TorchBackend(d, ModelConfig.from_dir(d), dtype="int8")
