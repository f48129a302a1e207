"""Batched decoding: N replies share every decoder step and each gets exactly its one-by-one reply.

Tiny exported models of both decoder styles ("fast": GroupQueryAttention over shared KV buffers;
"official": the Hub's contract, traced, with position_ids), plus the fast graph run through the
plain numpy loop. Prompts differ in length (split and unsplit images, text only, other
prompts) and stop at different steps (stop tokens picked from the one-by-one replies, including
a reply that stops at its first token, and rows that run to max_new_tokens).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import fast_first
from smolvlm_cli import SmolVLM
from smolvlm_cli.backends import onnx_decoder
from smolvlm_cli.backends.onnx import OnnxBackend
from smolvlm_cli.batch.local import LocalEngine
from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.batch.records import Job
from smolvlm_cli.reply import Replier
from smolvlm_cli.values import GenerationStats
from smolvlm_cli.options import GenerationOptions, Tiling

MODEL = "SmolVLM2-256M-Video-Instruct"
GREEDY = GenerationOptions(max_new_tokens=14)
SAMPLED = GenerationOptions(max_new_tokens=14, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.3, seed=11)


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * rng.uniform(90, 230, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module", params=fast_first(["fast", "official", "fast-numpy"]))
def vlm(request, tiny_onnx_dir):
    style = request.param.split("-")[0]
    model = SmolVLM.from_pretrained(tiny_onnx_dir(MODEL, style=style), backend="onnx", graphs="hub")
    if request.param == "fast-numpy":  # the GQA graph without shared buffers: right-padded caches
        model.backend = OnnxBackend(model.backend.model_dir, model.config, shared_kv=False)
    return model


@pytest.fixture(scope="module")
def prompts(vlm):
    return five_prompts(vlm)


def five_prompts(vlm):
    """Five prompts of different lengths: 1, 3 and 5 tiles, text only, two images."""
    return [
        vlm.prepare([photo(300, 200, 0)], "Describe.", tiling="low"),
        vlm.prepare(
            [photo(900, 500, 1)], "What is going on in this picture? Be precise.", tiling=Tiling(longest_edge=1024)
        ),
        vlm.prepare([], "Write a haiku about the sea."),
        vlm.prepare([photo(700, 700, 2)], "Caption it.", tiling=Tiling(longest_edge=1024)),
        vlm.prepare([photo(256, 400, 3), photo(500, 260, 4)], "Compare the two images.", tiling="low"),
    ]


def one_by_one(vlm, prompts, opts):
    out = []
    for p in prompts:
        stream = vlm.stream_prepared(p, opts)
        out.append((stream.text(), list(stream.token_ids), stream.stats.stop_reason))
    return out


def summary(generations):
    return [(g.text, list(g.token_ids), g.stats.stop_reason) for g in generations]


_STAGGERED: dict = {}


def staggered_stops(vlm, prompts, opts):
    """Options whose stop tokens end the replies at different steps (one at its first token)."""
    key = (id(vlm), opts)
    if key not in _STAGGERED:
        _STAGGERED[key] = _staggered_stops(vlm, prompts, opts)
    return _STAGGERED[key]


def _staggered_stops(vlm, prompts, opts):
    free = one_by_one(vlm, prompts, dataclasses.replace(opts, ignore_eos=True))
    stops = (free[1][1][0], free[3][1][4], free[0][1][9])  # reply 1 stops at once, 3 after 5, 0 after 10
    staggered = dataclasses.replace(opts, stop_token_ids=stops)
    reference = one_by_one(vlm, prompts, staggered)
    lengths = [len(tokens) for _, tokens, _ in reference]
    assert lengths[1] == 1 and len(set(lengths)) >= 3, lengths  # the test really staggers them
    return staggered, reference


@pytest.mark.parametrize("batch_size", [2, 3, 5])
def test_batched_greedy_equals_one_by_one(vlm, prompts, batch_size):
    opts, reference = staggered_stops(vlm, prompts, GREEDY)
    batched = vlm.generate_batch(prompts, opts, batch_size=batch_size)
    assert summary(batched) == reference
    assert [g.stats.prompt_tokens for g in batched] == [len(p.input_ids) for p in prompts]
    assert [g.stats.image_tiles for g in batched] == [p.num_tiles for p in prompts]


def test_batched_seeded_sampling_equals_one_by_one(vlm, prompts):
    opts, reference = staggered_stops(vlm, prompts, SAMPLED)
    assert summary(vlm.generate_batch(prompts, opts, batch_size=3)) == reference
    assert summary(vlm.generate_batch(prompts, opts)) == reference  # all five at once


def test_the_eos_of_the_model_stops_a_row(vlm, prompts, monkeypatch):
    free = one_by_one(vlm, prompts[:3], GREEDY)
    monkeypatch.setattr(vlm, "config", dataclasses.replace(vlm.config, eos_token_ids=(free[2][1][3],)))
    reference = one_by_one(vlm, prompts[:3], GREEDY)
    assert reference[2][2] == "stop" and len(reference[2][1]) <= 4
    assert summary(vlm.generate_batch(prompts[:3], GREEDY)) == reference


class CountingSession:
    """The decoder session, counting its runs (a sequential loop makes N times more)."""

    def __init__(self, session):
        self._session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self._session.run(*args, **kwargs)

    def run_with_iobinding(self, *args, **kwargs):
        self.runs += 1
        return self._session.run_with_iobinding(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_rows_really_share_the_decoder_steps(vlm, prompts, monkeypatch):
    counter = CountingSession(vlm.backend.runner.session)
    monkeypatch.setattr(vlm.backend.runner, "session", counter)
    opts = GenerationOptions(max_new_tokens=9, ignore_eos=True)
    batched = vlm.generate_batch(prompts[:4], opts)
    assert [len(g.token_ids) for g in batched] == [9] * 4
    assert counter.runs == 4 + 8  # one prefill per row, then 8 shared steps (sequential: 36)
    counter.runs = 0
    assert summary(vlm.generate_batch(prompts[:4], opts, batch_size=2)) == summary(batched)
    assert counter.runs == 4 + 2 * 8


def batched_and_alone(vlm, rows):
    """Logits of a prefill and 3 steps per row: the rows as one batch, and each row alone."""
    backend = vlm.backend
    replier = Replier(backend, vlm.tokenizer, vlm.config)
    features = [replier.image_features(p, GenerationStats()) for p in rows]
    tokens = [[7, 300, 4000], [42, 43, 44], [5, 6, 49000]]
    alone = []
    for p, f, toks in zip(rows, features, tokens):
        state = backend.new_state()
        out = [backend.forward(state, p.input_ids, f)]
        out += [backend.forward(state, np.array([t])) for t in toks]
        alone.append(np.stack(out))
    batch = backend.new_rows(3)
    first = [batch.prefill(b, p.input_ids, f) for b, (p, f) in enumerate(zip(rows, features))]
    steps = [batch.step([toks[i] for toks in tokens]) for i in range(3)]
    together = np.stack([np.stack([first[b]] + [s[b] for s in steps]) for b in range(3)])
    return together, np.stack(alone)


def test_step_logits_equal_single_row_logits(vlm, prompts):
    """Per-row logits of a batched step against the same row alone: equal (fp32 GQA: bit-equal)."""
    together, alone = batched_and_alone(vlm, prompts[:3])
    if vlm.backend.runner.shared:
        np.testing.assert_array_equal(together, alone)
    else:  # padded attention sums in another order: float noise only
        np.testing.assert_allclose(together, alone, atol=2e-5, rtol=0)


def test_continuous_batching_refills_free_slots(vlm, prompts, monkeypatch):
    opts, reference = staggered_stops(vlm, prompts, GREEDY)
    pulled = []

    def source():
        for p in prompts:
            pulled.append(p)
            yield p

    seen = []
    for index, generation in vlm.generate_many(source(), opts, batch_size=2):
        seen.append((index, len(pulled)))
        assert summary([generation]) == [reference[index]]
    assert sorted(i for i, _ in seen) == list(range(5))
    # prompts are read only when a slot is free: reply 1 stops at its first token and comes out
    # before a third prompt is read
    assert seen[0] == (1, 2)
    assert [i for i, _ in seen] != list(range(5))  # out of order: short replies come out first


def test_a_failing_prompt_fails_alone(vlm, prompts):
    broken = dataclasses.replace(
        prompts[1], pixel_values=prompts[1].pixel_values[:1], pixel_attention_mask=prompts[1].pixel_attention_mask[:1]
    )
    items = [prompts[0], broken, prompts[2]]
    results = dict(vlm.generate_many(items, GREEDY, batch_size=3, return_exceptions=True))
    assert isinstance(results[1], ValueError) and "image tokens" in str(results[1])
    assert summary([results[0], results[2]]) == [one_by_one(vlm, [p], GREEDY)[0] for p in items[::2]]
    with pytest.raises(ValueError, match="image tokens"):
        vlm.generate_batch(items, GREEDY)


def test_shared_kv_batch_grows_past_its_capacity(fast_vlm, monkeypatch):
    vlm, prompts = fast_vlm, five_prompts(fast_vlm)
    assert vlm.backend.runner.shared
    opts = GenerationOptions(max_new_tokens=20, ignore_eos=True)
    reference = one_by_one(vlm, prompts[:3], opts)
    monkeypatch.setattr(onnx_decoder, "_GROWTH", 16)  # reallocate (and copy) every few steps
    assert summary(vlm.generate_batch(prompts[:3], opts)) == reference


@pytest.fixture(scope="module")
def fast_vlm(tiny_onnx_dir):
    return SmolVLM.from_pretrained(tiny_onnx_dir(MODEL), backend="onnx")


@pytest.mark.slow  # ten engine runs over five images
def test_local_engine_with_real_batches_equals_one_by_one(fast_vlm, tmp_path):
    """The engine feeds `generate_many` (continuous batching); records come out in job order."""
    vlm, paths = fast_vlm, []
    for i, size in enumerate([(300, 200), (900, 500), (700, 700), (256, 400), (500, 260)]):
        path = tmp_path / f"img{i}.png"
        photo(*size, seed=i).save(path)
        paths.append(path)
    prompts = ["Describe.", "What is this?", "Caption it in detail please.", "Hi.", "Colours?"]
    jobs = [Job(ImageItem(str(p), p.name), q) for p, q in zip(paths, prompts)]
    free = GenerationOptions(max_new_tokens=12, ignore_eos=True)

    def runs(batch_size, opts):
        out = []
        engine = LocalEngine(vlm, opts, batch_size=batch_size, tiling=Tiling(longest_edge=1024))
        engine.run(jobs, lambda job, record: out.append(record))
        return [(r.path, r.caption, r.generated_tokens, r.prompt_tokens, r.error) for r in out]

    def tokens(job):
        stream = vlm.stream_prepared(LocalEngine(vlm, free, tiling=Tiling(longest_edge=1024))._prepare(job)[0], free)
        stream.text()
        return stream.token_ids

    assert runs(4, free) == runs(1, free)
    first = [tokens(job) for job in jobs[:3]]
    stops = dataclasses.replace(free, ignore_eos=False, stop_token_ids=(first[0][2], first[1][0], first[2][6]))
    staggered = runs(1, stops)
    assert len({r[2] for r in staggered}) >= 3
    assert runs(3, stops) == staggered


@pytest.mark.slow  # loads the torch model
def test_torch_backend_answers_one_by_one(tiny_checkpoints):
    """The reference backend has no batched decoding: generate_batch/generate_many still work."""
    vlm = SmolVLM.from_pretrained(tiny_checkpoints[MODEL], backend="torch")
    assert vlm.backend.new_rows(2) is None
    items = [vlm.prepare([photo(300, 200, 0)], "Describe.", tiling="low"), vlm.prepare([], "Hello.")]
    assert summary(vlm.generate_batch(items, GREEDY)) == one_by_one(vlm, items, GREEDY)
    assert [i for i, _ in vlm.generate_many(items, GREEDY, batch_size=2)] == [0, 1]
