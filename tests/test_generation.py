"""Sampling against transformers' logits processors (the independent reference)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from smolvlm_cli.generation import Sampler, generate_tokens
from smolvlm_cli.options import GenerationOptions


def _reference(logits: np.ndarray, context: list[int], opts: GenerationOptions) -> np.ndarray:
    chain = LogitsProcessorList()
    if opts.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(opts.repetition_penalty))
    if not opts.greedy:
        chain.append(TemperatureLogitsWarper(opts.temperature))
        if opts.top_k:
            chain.append(TopKLogitsWarper(opts.top_k))
        if opts.top_p < 1.0:
            chain.append(TopPLogitsWarper(opts.top_p))
    ids = torch.tensor([context], dtype=torch.long)
    return chain(ids, torch.from_numpy(logits.copy())[None])[0].numpy()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"repetition_penalty": 1.3},
        {"temperature": 0.7},
        {"temperature": 1.0, "top_k": 20},
        {"temperature": 0.8, "top_p": 0.9},
        {"temperature": 1.2, "top_k": 50, "top_p": 0.5, "repetition_penalty": 1.1},
    ],
)
def test_processed_scores_match_transformers(kwargs):
    rng = np.random.default_rng(0)
    opts = GenerationOptions(**kwargs)
    for _ in range(5):
        logits = (rng.standard_normal(1000) * 3).astype(np.float32)
        context = rng.integers(0, 1000, size=40).tolist()
        ours = Sampler(opts).process(logits, context)
        ref = _reference(logits, context, opts)
        assert np.array_equal(np.isinf(ours), np.isinf(ref))
        finite = np.isfinite(ref)
        # equal up to a shift (ours puts the largest at 0), which changes no probability
        np.testing.assert_allclose(ours[finite] - ours.max(), ref[finite] - ref.max(), rtol=1e-6, atol=1e-5)
        if opts.greedy:
            assert Sampler(opts)(logits, context) == int(np.argmax(ref))


@pytest.mark.parametrize("temperature", [1e-39, 1e-40, 5e-324])
def test_a_tiny_temperature_is_greedy_without_warnings(temperature):
    """The logits were divided by the temperature before their max was subtracted: 1e-40 made
    every one of them +-inf and the probabilities NaN (the server's 500). In the limit a tiny
    temperature is greedy."""
    rng = np.random.default_rng(2)
    for seed in range(20):
        logits = (rng.standard_normal(1000) * 3).astype(np.float32)
        context = rng.integers(0, 1000, size=20).tolist()
        for kwargs in ({}, {"top_k": 40}, {"top_p": 0.9}, {"repetition_penalty": 1.3}):
            opts = GenerationOptions(temperature=temperature, seed=seed, **kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an overflow or NaN warning fails the test
                assert Sampler(opts)(logits, context) == Sampler(opts.updated(temperature=0))(logits, context)


@pytest.mark.parametrize("penalty", [1e-300, 5e-324, 3e38])
@pytest.mark.parametrize("temperature", [0.0, 1.0, 1e-40])
def test_an_extreme_repetition_penalty_keeps_the_scores_finite(penalty, temperature):
    """`repetition_penalty: 1e-300` divided the seen positive logits into +inf (float32) with
    divide/overflow warnings, and the sampled tokens were garbage: the penalized logits are
    now finite and the distribution well defined."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(500) * 3).astype(np.float32)
    context = rng.integers(0, 500, size=60).tolist()
    opts = GenerationOptions(temperature=temperature, repetition_penalty=penalty, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = Sampler(opts).process(logits, context)
        token = Sampler(opts)(logits, context)
        probs = np.exp(scores - scores.max())
    assert np.isfinite(scores).all() and np.isfinite(probs).all() and probs.max() == 1.0
    seen = np.unique(context)
    # a tiny penalty favours the seen tokens (positive ones grow), a huge one the others
    best_seen, best_other = scores[seen].max(), np.delete(scores, seen).max()
    assert (best_seen > best_other) if penalty < 1 else (best_seen < best_other)
    if temperature < 1:  # greedy, or greedy in the limit (one of the tied maxima at 5e-324)
        assert scores[token] == scores.max()


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(500).astype(np.float32) for _ in range(30)]

    def draw(seed):
        sampler = Sampler(GenerationOptions(temperature=1.0, seed=seed))
        return [sampler(r, []) for r in rows]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampled_tokens_stay_inside_top_k():
    logits = np.arange(100, dtype=np.float32)
    sampler = Sampler(GenerationOptions(temperature=5.0, top_k=3, seed=0))
    assert {sampler(logits, []) for _ in range(200)} <= {97, 98, 99}


def test_generate_tokens_stops_on_eos_and_on_length():
    vocab = 10
    script = [3, 4, 9, 5]  # 9 is eos

    def logits_for(token):
        row = np.zeros(vocab, dtype=np.float32)
        row[token] = 1.0
        return row

    fed = []

    def step(token):
        fed.append(token)
        return logits_for(script[len(fed)])

    out = list(generate_tokens(logits_for(script[0]), step, GenerationOptions(max_new_tokens=10), [9]))
    assert out == [3, 4, 9]
    assert fed == [3, 4]  # nothing is fed after the stop token

    fed.clear()
    out = list(generate_tokens(logits_for(script[0]), step, GenerationOptions(max_new_tokens=2), [9]))
    assert out == [3, 4] and fed == [3]

    fed.clear()
    forced = GenerationOptions(max_new_tokens=4, ignore_eos=True)
    assert list(generate_tokens(logits_for(script[0]), step, forced, [9])) == script


@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"repetition_penalty": 0},
    ],
)
def test_invalid_options_are_rejected(bad):
    with pytest.raises(ValueError):
        GenerationOptions(**bad)
