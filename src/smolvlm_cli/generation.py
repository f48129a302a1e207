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

# Scores are float64 within +-_BOUND, so every step stays finite (a difference of two is too):
# a penalty of 1e-300 scales a logit by 1e300, and (logit - max) / temperature is kept above
# -_BOUND (exp of it is 0 anyway).
_BOUND = float(np.finfo(np.float64).max) / 4


class Sampler:
    """Picks the next token from a [vocab] logits row."""

    def __init__(self, options: GenerationOptions):
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def process(self, logits: np.ndarray, context_ids: Sequence[int]) -> np.ndarray:
        """The scores sampling draws from: penalized, tempered, filtered (-inf) logits, shifted
        so that the largest tempered one is 0 (sampling is the same for any shift)."""
        opts = self.options
        scores = np.array(logits, dtype=np.float64)  # a copy: the caller's logits stay intact
        if opts.repetition_penalty != 1.0 and len(context_ids):
            seen = np.unique(np.asarray(context_ids, dtype=np.int64))
            picked = scores[seen]
            with np.errstate(over="ignore"):  # an overflow is clipped to the bound below
                penalized = np.where(picked < 0, picked * opts.repetition_penalty, picked / opts.repetition_penalty)
            scores[seen] = np.clip(penalized, -_BOUND, _BOUND)
        if opts.greedy:
            return scores
        # the max subtracted before dividing: a tiny temperature sends the other logits towards
        # -inf (greedy in the limit) instead of overflowing every one of them (NaN probabilities)
        temperature = opts.temperature
        scores -= scores.max()
        scores = np.maximum(scores, -_BOUND * temperature) / temperature
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


class TokenLoop:
    """One reply's token choices: its own sampler (seeded like a single run), history and stop.

    `generate_tokens` drives one of these per reply and the batched loop one per row, so a row of
    a batch picks exactly the tokens the same prompt would get alone.
    """

    def __init__(self, options: GenerationOptions, eos_token_ids: Sequence[int], context_ids: Sequence[int] = ()):
        self.options = options
        self.sampler = Sampler(options)
        self.stops = set() if options.ignore_eos else {*eos_token_ids, *options.stop_token_ids}
        self.history = list(context_ids)
        self.count = 0
        self.done = False

    def pick(self, logits: np.ndarray) -> int:
        """The next token for these logits; sets `done` after a stop token or max_new_tokens."""
        token = self.sampler(logits, self.history)
        self.history.append(token)
        self.count += 1
        self.done = token in self.stops or self.count >= self.options.max_new_tokens
        return token


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
    loop = TokenLoop(options, eos_token_ids, context_ids)
    logits = first_logits
    while True:
        token = loop.pick(logits)
        yield token
        if loop.done:
            return
        logits = step(token)
