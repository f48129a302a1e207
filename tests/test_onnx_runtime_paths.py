"""The ONNX runtime's two decoder paths, its KV-cache state, and the optimized-graph cache.

- Hugging Face's official graph contract (traced decoder: position_ids, present = concat(past,
  new), every position's logits; plain vision graph) still loads and matches transformers through
  the plain numpy loop, for both model formats.
- Our GroupQueryAttention decoder gives the same logits through IO binding over shared buffers
  as through the numpy loop; `truncate` + a multi-token chunk on a non-empty cache (chat turns,
  `ask`) equals a fresh prefill; the buffers grow past their capacity transparently.
- Sessions are cached as optimized graphs next to the model, keyed by the source file.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import torch

from conftest import fast_first  # noqa: E402
from test_engine import ATOL, CASES, NAMES, _our_run, _reference_run  # noqa: E402

from smolvlm_cli import SmolVLM  # noqa: E402
from smolvlm_cli.backends import onnx_decoder, onnx_session  # noqa: E402
from smolvlm_cli.builder.layout import ABANDONED_AFTER_S, data_files  # noqa: E402
from smolvlm_cli.backends.onnx import OnnxBackend  # noqa: E402
from smolvlm_cli.options import Tiling
from smolvlm_cli.prompt import build_messages  # noqa: E402

STEPS = 16


@pytest.fixture(scope="module")
def reference_model():
    from transformers import AutoModelForImageTextToText

    cache = {}

    def load(model_dir):
        if model_dir not in cache:
            cache[model_dir] = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
        return cache[model_dir]

    return load


def _inputs(vlm, case):
    images, prompt, split = CASES[case]
    return vlm.processor.prepare_inputs(build_messages(prompt, len(images)), images, Tiling(split=split))


# -- the official contract --------------------------------------------------------------------------


@pytest.mark.slow  # official-style exports of their own
@pytest.mark.parametrize("case", ["split", "text-only"])
@pytest.mark.parametrize("name", NAMES)
def test_official_contract_graphs_load_and_match_transformers(tiny_onnx_dir, reference_model, name, case):
    model_dir = tiny_onnx_dir(name, style="official")
    vlm = SmolVLM.from_pretrained(model_dir, backend="onnx", graphs="hub")
    assert vlm.backend.decoder_style == "official" and not vlm.backend.runner.shared
    assert "position_ids" in {i.name for i in vlm.backend.decoder.get_inputs()}
    inputs = _inputs(vlm, case)
    ref_tokens, ref_logits = _reference_run(reference_model(str(model_dir)), inputs, STEPS)
    tokens, logits = _our_run(vlm, inputs, STEPS)
    for step, (ours, ref) in enumerate(zip(logits, ref_logits)):
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0, err_msg=f"step {step}")
    assert tokens == ref_tokens


# -- shared buffers vs the numpy loop on the GQA graph ------------------------------------------------


@pytest.fixture(scope="module", params=fast_first(NAMES))
def fast_dir(request, tiny_onnx_dir):
    return tiny_onnx_dir(request.param)


def _backends(model_dir):
    vlm = SmolVLM.from_pretrained(model_dir, backend="onnx", graphs="hub")
    concat = OnnxBackend(model_dir, vlm.config, shared_kv=False)
    return vlm, vlm.backend, concat


def test_gqa_graph_uses_shared_buffers_and_matches_the_numpy_loop(fast_dir):
    vlm, shared, concat = _backends(fast_dir)
    assert shared.decoder_style == "gqa" and shared.runner.shared and not concat.runner.shared
    inputs = _inputs(vlm, "two-images")
    tokens, logits = _our_run(vlm, inputs, STEPS)
    vlm.backend = concat
    tokens2, logits2 = _our_run(vlm, inputs, STEPS)
    assert tokens == tokens2
    for a, b in zip(logits, logits2):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert len({id(x) for x in logits}) == len(logits)  # each step's logits are its own array


@pytest.mark.slow  # an fp16 export of its own
def test_float16_caches_go_through_shared_buffers_too(tiny_onnx_dir):
    model_dir = tiny_onnx_dir(NAMES[1], ("fp32", "fp16"))
    vlm = SmolVLM.from_pretrained(model_dir, backend="onnx", dtype="fp16", graphs="hub")
    assert vlm.backend.runner.shared
    state = vlm.backend.new_state()
    assert state.cache_view("past_key_values.0.key").dtype == np.float16
    concat = OnnxBackend(model_dir, vlm.config, dtype="fp16", shared_kv=False)
    inputs = _inputs(vlm, "no-split")
    tokens, logits = _our_run(vlm, inputs, 8)
    vlm.backend = concat
    tokens2, logits2 = _our_run(vlm, inputs, 8)
    assert tokens == tokens2
    for a, b in zip(logits, logits2):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


def _feed(backend, state, chunks):
    out = []
    for chunk in chunks:
        out.append(backend.forward(state, np.asarray(chunk, np.int64)))
    return out


@pytest.mark.parametrize("path", ["shared", "concat"])
def test_truncate_then_a_multi_token_chunk_equals_a_fresh_prefill(fast_dir, path):
    """What a chat turn or a second `ask` question does: rewind to the common prefix, feed the rest."""
    vlm, shared, concat = _backends(fast_dir)
    backend = shared if path == "shared" else concat
    rng = np.random.default_rng(7)
    prefix, first, second = (rng.integers(3, 49000, n) for n in (11, 6, 5))
    state = backend.new_state()
    _feed(backend, state, [np.concatenate([prefix, first])] + [[t] for t in first[:3]])
    assert state.length == 20
    state.truncate(len(prefix))
    assert state.length == len(prefix)
    resumed = _feed(backend, state, [second, [42], [43]])
    fresh_state = backend.new_state()
    fresh = _feed(backend, fresh_state, [np.concatenate([prefix, second]), [42], [43]])
    for a, b in zip(resumed, fresh):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert state.length == fresh_state.length == len(prefix) + len(second) + 2
    state.truncate(0)
    again = _feed(backend, state, [np.concatenate([prefix, second])])
    np.testing.assert_allclose(again[0], fresh[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot truncate"):
        state.truncate(state.length + 1)


def test_shared_buffers_grow_past_their_capacity(fast_dir, monkeypatch):
    vlm, shared, _ = _backends(fast_dir)
    inputs = _inputs(vlm, "text-only")
    tokens, logits = _our_run(vlm, inputs, 24)
    monkeypatch.setattr(onnx_decoder, "_GROWTH", 8)  # reallocate (and copy) every few steps
    state = shared.new_state()
    assert state.capacity == 8
    out = [shared.forward(state, inputs["input_ids"][0])]
    for t in tokens[:-1]:
        out.append(shared.forward(state, np.array([t])))
    assert state.capacity >= state.length > 24
    for a, b in zip(out, logits):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_the_context_limit_is_a_clear_error(fast_dir):
    _, shared, _ = _backends(fast_dir)
    state = shared.new_state()
    too_long = np.full(shared.config.max_position_embeddings + 1, 42, np.int64)
    with pytest.raises(ValueError, match="positions"):
        shared.forward(state, too_long)
    assert state.length == 0


# -- the optimized-graph cache ------------------------------------------------------------------------


def test_sessions_are_cached_as_optimized_graphs_next_to_the_model(tmp_path, tiny_onnx_dir, monkeypatch):
    import shutil

    monkeypatch.delenv(onnx_session.CACHE_ENV, raising=False)
    src = tiny_onnx_dir(NAMES[0]) / "onnx" / "embed_tokens.onnx"
    graph = tmp_path / "onnx" / "embed_tokens.onnx"
    graph.parent.mkdir()
    shutil.copyfile(src, graph)
    for data in data_files(src):  # our graphs keep their weights beside them
        shutil.copyfile(data, graph.parent / data.name)
    ids = {"input_ids": np.array([[1, 2, 3]], np.int64)}
    expected = onnx_session.load_session(graph, 1, cache=False).run(None, ids)[0]

    first = onnx_session.load_session(graph, 1)
    cached = sorted((graph.parent / onnx_session.CACHE_DIRNAME).iterdir())
    assert [p.suffix for p in cached] == [".onnx", ".data"]  # the graph and its memory-mapped weights
    np.testing.assert_array_equal(first.run(None, ids)[0], expected)
    assert onnx_session.cached_graph(graph) == cached[0]  # reused, not rewritten
    # a changed source gets a new entry and the stale one goes
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))
    renewed = onnx_session.cached_graph(graph)
    assert renewed != cached[0] and not cached[0].exists()
    np.testing.assert_array_equal(onnx_session.load_session(graph, 1).run(None, ids)[0], expected)
    # a damaged entry is dropped and the source used
    renewed.write_bytes(b"garbage")
    np.testing.assert_array_equal(onnx_session.load_session(graph, 1).run(None, ids)[0], expected)
    # the folder of a load killed while writing its entry goes at the next write; a live one stays
    cache = graph.parent / onnx_session.CACHE_DIRNAME
    abandoned, live = cache / ".writing-killed", cache / ".writing-live"
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "x.onnx.data").write_bytes(b"w" * 1000)
    hours_ago = time.time() - ABANDONED_AFTER_S - 60
    os.utime(abandoned, (hours_ago, hours_ago))
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # a new entry to write
    assert onnx_session.cached_graph(graph) is not None
    assert not abandoned.exists() and live.is_dir()


def test_the_first_load_says_it_optimizes_the_graphs_once(tmp_path, tiny_onnx_dir, monkeypatch):
    """Piped, a first run fell silent for seconds after "Built the graphs" (an fp32 256M model:
    ~10 s) while the sessions were optimized and saved: one line says why, once."""
    from smolvlm_cli.config import ModelConfig

    monkeypatch.setenv(onnx_session.CACHE_ENV, str(tmp_path / "sessions"))
    model_dir = tiny_onnx_dir(NAMES[0])
    config = ModelConfig.from_dir(model_dir)
    heard = []
    OnnxBackend(model_dir, config, notice=heard.append)
    assert len(heard) == 1 and "optimizing the graphs for this machine, once" in heard[0]
    OnnxBackend(model_dir, config, notice=heard.append)  # later loads read the saved graphs
    OnnxBackend(model_dir, config, cache=False, notice=heard.append)
    assert len(heard) == 1


def test_session_cache_can_move_or_be_disabled(tmp_path, tiny_onnx_dir, monkeypatch):
    graph = tiny_onnx_dir(NAMES[0]) / "onnx" / "embed_tokens.onnx"
    monkeypatch.setenv(onnx_session.CACHE_ENV, "0")
    assert onnx_session.cache_dir_for(graph) is None
    monkeypatch.setenv(onnx_session.CACHE_ENV, str(tmp_path / "elsewhere"))
    entry = onnx_session.cached_graph(graph)
    assert entry is not None and entry.is_relative_to(tmp_path / "elsewhere")
    monkeypatch.delenv(onnx_session.CACHE_ENV)
    # a read-only model folder: smolvlm-cli's cache, wherever SMOLVLM_CACHE puts it
    monkeypatch.setattr(onnx_session, "_writable_dir", lambda p: "sessions" in str(p))
    monkeypatch.setenv("SMOLVLM_CACHE", str(tmp_path / "mine"))
    assert onnx_session.cache_dir_for(graph).is_relative_to(tmp_path / "mine" / "sessions")
    monkeypatch.delenv("SMOLVLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_session.cache_dir_for(graph).is_relative_to(tmp_path / "xdg" / "smolvlm-cli" / "sessions")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME")
    monkeypatch.setattr("pwd.getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))  # a container's UID
    assert onnx_session.cache_dir_for(graph) is None  # no cache, no failure: it is optional


# -- dtype defaults ------------------------------------------------------------------------------------


def test_per_component_default_and_fallback_to_fp32(tmp_path, monkeypatch):
    from smolvlm_cli import dtypes

    monkeypatch.setattr(dtypes, "DEFAULT_DTYPE", "vision=int8,embed=fp32,decoder=int8")
    assert dtypes.parse_dtype(None) == {"vision": "int8", "embed": "fp32", "decoder": "int8"}
    assert dtypes.parse_dtype("decoder=q4") == {"vision": "int8", "embed": "fp32", "decoder": "q4"}
    assert dtypes.parse_dtype("fp32") == {"vision": "fp32", "embed": "fp32", "decoder": "fp32"}
    (tmp_path / "onnx").mkdir()
    for name in (
        "vision_encoder.onnx",
        "embed_tokens.onnx",
        "decoder_model_merged.onnx",
        "decoder_model_merged_int8.onnx",
    ):
        (tmp_path / "onnx" / name).touch()
    # the default's int8 vision graph is missing: fp32 stands in; an explicit spec is kept as asked
    assert dtypes.resolve_dtype(None, tmp_path) == {"vision": "fp32", "embed": "fp32", "decoder": "int8"}
    assert dtypes.resolve_dtype("int8", tmp_path)["vision"] == "int8"
