"""The token loop shared by every backend: logits processing, sampling and stopping.

Backends only turn ids (and image features) into next-token logits; everything that decides
which token comes next lives here, so the ONNX and torch backends pick identical tokens from
identical logits. The processors follow transformers' semantics (repetition penalty over prompt
and generated ids, temperature, then top-k, then top-p) so seeded sampling is comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from smolvlm_cli.options import GenerationOptions


class Sampler:
    """Picks the next token from a [vocab] logits row."""

    def __init__(self, options: GenerationOptions):
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def process(self, logits: np.ndarray, context_ids: Sequence[int]) -> np.ndarray:
        """The scores sampling draws from: penalized, tempered, filtered (-inf) logits."""
        opts = self.options
        scores = np.array(logits, dtype=np.float32)  # a copy: the caller's logits stay intact
        if opts.repetition_penalty != 1.0 and len(context_ids):
            seen = np.unique(np.asarray(context_ids, dtype=np.int64))
            picked = scores[seen]
            scores[seen] = np.where(picked < 0, picked * opts.repetition_penalty,
                                    picked / opts.repetition_penalty)
        if opts.greedy:
            return scores
        scores /= np.float32(opts.temperature)
        if opts.top_k and opts.top_k < scores.shape[-1]:
            kth = np.partition(scores, -opts.top_k)[-opts.top_k]
            scores[scores < kth] = -np.inf
        if opts.top_p < 1.0:
            order = np.argsort(scores, kind="stable")  # ascending, as transformers' top-p
            removed = np.cumsum(_softmax(scores[order])) <= 1 - opts.top_p
            removed[-1] = False  # always keep the most likely token
            scores[order[removed]] = -np.inf
        return scores

    def __call__(self, logits: np.ndarray, context_ids: Sequence[int]) -> int:
        scores = self.process(logits, context_ids)
        if self.options.greedy:
            return int(np.argmax(scores))
        probs = _softmax(scores).astype(np.float64)
        probs /= probs.sum()
        return int(self._rng.choice(probs.shape[-1], p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def generate_tokens(
    first_logits: np.ndarray,
    step: Callable[[int], np.ndarray],
    options: GenerationOptions,
    eos_token_ids: Sequence[int],
    context_ids: Sequence[int] = (),
) -> Iterator[int]:
    """Yield new token ids until a stop id or max_new_tokens.

    `first_logits` are the prefill's last-position logits; `step(token)` feeds one token and
    returns the next logits. A stop token is yielded too (callers decide whether to print it)
    and nothing is fed after it, so a kept KV cache ends exactly after the stop token.
    """
    sampler = Sampler(options)
    stops = set() if options.ignore_eos else {*eos_token_ids, *options.stop_token_ids}
    history = list(context_ids)
    logits = first_logits
    for i in range(options.max_new_tokens):
        token = sampler(logits, history)
        history.append(token)
        yield token
        if token in stops or i + 1 == options.max_new_tokens:
            return
        logits = step(token)
