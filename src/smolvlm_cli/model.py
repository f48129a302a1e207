"""`SmolVLM`, the coordinator: processor -> backend -> generation -> streamed text.

    model = SmolVLM.from_pretrained("HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
    for delta in model.stream(["photo.jpg"], "What is in the box?"):
        print(delta, end="", flush=True)

`stream` returns a `TextStream`: iterate it for text deltas; its `stats` (token counts, tiles,
timings) fill in as it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_cli.backends import BACKENDS
from smolvlm_cli.backends.base import Backend, DecoderState
from smolvlm_cli.errors import BackendUnavailableError
from smolvlm_cli.generation import generate_tokens
from smolvlm_cli.options import DEFAULT_PROMPT, GenerationOptions
from smolvlm_cli.hub import default_model, files_for, has_onnx, has_torch_weights, is_local, resolve_model
from smolvlm_cli.processor import Processor
from smolvlm_cli.prompt import build_messages
from smolvlm_cli.tokenizer import Tokenizer




@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    image_tiles: int = 0
    image_tokens: int = 0
    preprocess_s: float = 0.0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0  # from the call to the first generated token
    stop_reason: str = ""  # "eos" or "length"

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1  # the first token comes from the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tokens_per_s": round(self.decode_tokens_per_s, 3)}


class TextStream:
    """An iterator of text deltas whose `stats` and `token_ids` fill in as it is consumed."""

    def __init__(self, deltas: Iterator[str], stats: GenerationStats, token_ids: list[int]):
        self._deltas = deltas
        self.stats = stats
        self.token_ids = token_ids

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __next__(self) -> str:
        return next(self._deltas)

    def text(self) -> str:
        return "".join(self._deltas)


def select_backend(model: str, backend: str, dtype: str | None) -> tuple[Path, str]:
    """Resolve the model and pick the backend: ONNX when it has the graphs, else torch."""
    from smolvlm_cli.backends.torch import torch_available

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "torch":
        return resolve_model(model, files_for("torch", None)), "torch"
    model_dir = resolve_model(model, files_for("onnx", dtype))
    if backend == "onnx" or has_onnx(model_dir, dtype):
        return model_dir, "onnx"
    if torch_available():
        if not is_local(model):
            model_dir = resolve_model(model, files_for("torch", None))
        if has_torch_weights(model_dir):
            return model_dir, "torch"
    raise BackendUnavailableError(
        f"{model} has no ONNX files for dtype {dtype or 'fp32'}"
        + ("" if torch_available() else " and torch is not installed"),
        hint="export them with scripts/export_onnx.py, choose another --dtype, "
             "or pip install 'smolvlm-cli[torch]' for the torch backend")


class SmolVLM:
    def __init__(self, processor: Processor, tokenizer: Tokenizer, backend: Backend,
                 model_id: str | None = None):
        self.processor = processor
        self.tokenizer = tokenizer
        self.backend = backend
        self.config = processor.config
        self.model_id = model_id

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, backend: str = "auto",
                        dtype: str | None = None, threads: int | None = None) -> SmolVLM:
        model = str(model) if model is not None else default_model()
        model_dir, chosen = select_backend(model, backend, dtype)
        processor = Processor.from_pretrained(model_dir)
        if chosen == "onnx":
            from smolvlm_cli.backends.onnx import OnnxBackend

            runner = OnnxBackend(model_dir, processor.config, dtype=dtype, threads=threads)
        else:
            from smolvlm_cli.backends.torch import TorchBackend

            runner = TorchBackend(model_dir, processor.config, dtype=dtype, threads=threads)
        return cls(processor, processor.tokenizer, runner, model_id=model)

    # -- encoding -----------------------------------------------------------------------
    def encode(self, messages: Sequence[dict], images: Sequence[Any] | None = None,
               longest_edge: int | None = None, split: bool | None = None,
               stats: GenerationStats | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Prompt ids [seq] and the image features for its image tokens (None without images)."""
        stats = stats if stats is not None else GenerationStats()
        t0 = time.perf_counter()
        inputs = self.processor.prepare_inputs(messages, images, longest_edge=longest_edge, split=split)
        t1 = time.perf_counter()
        stats.preprocess_s += t1 - t0
        ids = inputs["input_ids"][0]
        stats.prompt_tokens += len(ids)
        if "pixel_values" not in inputs:
            return ids, None
        real = inputs["pixel_attention_mask"][0].any(axis=(-1, -2))  # drop batch-padding tiles
        features = self.backend.encode_images(inputs["pixel_values"][0][real],
                                              inputs["pixel_attention_mask"][0][real])
        stats.vision_s += time.perf_counter() - t1
        stats.image_tiles += int(real.sum())
        stats.image_tokens += int(features.shape[0] * features.shape[1])
        return ids, features.reshape(-1, features.shape[-1])

    # -- generation ---------------------------------------------------------------------
    def options(self, options: GenerationOptions | None = None, **sampling) -> GenerationOptions:
        return (options or GenerationOptions()).updated(**sampling)

    def stream(self, images: Sequence[Any] | Any = (), prompt: str | None = None, *,
               messages: Sequence[dict] | None = None, longest_edge: int | None = None,
               split: bool | None = None, options: GenerationOptions | None = None,
               **sampling) -> TextStream:
        """Stream the answer to `prompt` about `images` (or to chat `messages`) as text deltas."""
        if isinstance(images, (str, Path, bytes)) or hasattr(images, "mode"):
            images = [images]
        images = list(images)
        if messages is None:
            messages = build_messages(prompt or DEFAULT_PROMPT, len(images))
        elif not images:
            images = None  # take them from the messages
        opts = self.options(options, **sampling)
        stats, token_ids = GenerationStats(), []
        deltas = self._run(messages, images, longest_edge, split, opts, stats, token_ids)
        return TextStream(deltas, stats, token_ids)

    def generate(self, images: Sequence[Any] | Any = (), prompt: str | None = None, **kwargs) -> str:
        return self.stream(images, prompt, **kwargs).text()

    def _run(self, messages, images, longest_edge, split, opts: GenerationOptions,
             stats: GenerationStats, token_ids: list[int]) -> Iterator[str]:
        start = time.perf_counter()
        ids, features = self.encode(messages, images, longest_edge, split, stats)
        state = self.backend.new_state()
        yield from self.continue_stream(state, ids, features, opts, stats, token_ids, start)

    def continue_stream(self, state: DecoderState, ids: np.ndarray, features: np.ndarray | None,
                        opts: GenerationOptions, stats: GenerationStats, token_ids: list[int],
                        start: float | None = None) -> Iterator[str]:
        """Prefill `ids` onto `state`, then decode: the loop shared by describe, ask and chat."""
        start = start if start is not None else time.perf_counter()
        t0 = time.perf_counter()
        logits = self.backend.forward(state, ids, features)
        stats.prefill_s += time.perf_counter() - t0
        detok = self.tokenizer.stream(skip_special_tokens=True)
        eos = self.config.eos_token_ids
        step_start = None
        at_start = True
        for token in generate_tokens(logits, lambda t: self.backend.forward(state, np.array([t])),
                                     opts, eos, context_ids=ids):
            now = time.perf_counter()
            if step_start is None:
                stats.ttft_s = now - start
                step_start = now
            else:
                stats.decode_s = now - step_start
            token_ids.append(token)
            stats.generated_tokens += 1
            stats.stop_reason = "eos" if token in eos and not opts.ignore_eos else "length"
            delta = detok.put(token)
            if at_start:  # the reply starts after "Assistant:", usually with a space
                delta = delta.lstrip()
                at_start = not delta
            if delta:
                yield delta
