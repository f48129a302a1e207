"""`SmolVLM`, the coordinator: processor -> backend -> generation -> streamed text.

    model = SmolVLM.from_pretrained("HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
    for delta in model.stream(["photo.jpg"], "What is in the box?"):
        print(delta, end="", flush=True)

`stream` returns a `TextStream`: iterate it for text deltas; its `stats` (token counts, tiles,
timings) fill in as it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smolvlm_cli.backends import BACKENDS
from smolvlm_cli.backends.base import Backend, DecoderState
from smolvlm_cli.dtypes import FALLBACK_DTYPE, format_dtype, parse_dtype
from smolvlm_cli.errors import BackendUnavailableError
from smolvlm_cli.generation import generate_tokens
from smolvlm_cli.options import DEFAULT_PROMPT, GenerationOptions
from smolvlm_cli.hub import default_model, files_for, has_onnx, has_torch_weights, is_local, resolve_model
from smolvlm_cli.processor import Processor
from smolvlm_cli.prompt import build_messages
from smolvlm_cli.tokenizer import Tokenizer

if TYPE_CHECKING:
    from smolvlm_cli.conversation import Conversation




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
    stop_reason: str = ""  # "stop" (an end-of-turn token) or "length" (max_new_tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1  # the first token comes from the prefill
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tokens_per_s": round(self.decode_tokens_per_s, 3)}


@dataclass
class PreparedInputs:
    """A prompt ready for the backend: ids and the real (unpadded) tiles of its images."""

    messages: list[dict]
    input_ids: np.ndarray  # [seq] int64
    pixel_values: np.ndarray | None  # [tiles, 3, T, T] float32
    pixel_attention_mask: np.ndarray | None  # [tiles, T, T] bool (the processor gives int64, as transformers)
    preprocess_s: float = 0.0

    @property
    def num_tiles(self) -> int:
        return 0 if self.pixel_values is None else len(self.pixel_values)


@dataclass
class Generation:
    """A finished answer."""

    text: str
    token_ids: list[int]
    stats: GenerationStats


class ReplyText:
    """Token ids -> text deltas of a reply (the same for a streamed and a batched reply)."""

    def __init__(self, tokenizer: Tokenizer):
        self._detok = tokenizer.stream(skip_special_tokens=True)
        self._at_start = True

    def put(self, token: int) -> str:
        delta = self._detok.put(token)
        if self._at_start:  # the reply starts after "Assistant:", usually with a space
            delta = delta.lstrip()
            self._at_start = not delta
        return delta

    def flush(self) -> str:
        # a reply cut inside a multi-byte character ends in U+FFFD, as decode does
        tail = self._detok.flush()
        if not tail or (self._at_start and not tail.strip()):
            return ""
        return tail.lstrip() if self._at_start else tail


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
    if dtype is None and not is_local(model) and not has_onnx(model_dir, None):
        # a Hub repo without the default variant: its fallback graphs (resolve_dtype picks them)
        model_dir = resolve_model(model, files_for("onnx", FALLBACK_DTYPE))
    if backend == "onnx" or has_onnx(model_dir, dtype):
        return model_dir, "onnx"
    from smolvlm_cli.backends.torch import TORCH_DTYPES

    # Fall back to torch only when it can honour the dtype (an explicit int8/q4 cannot be).
    if torch_available() and (dtype is None or dtype.lower() in TORCH_DTYPES):
        if not is_local(model):
            model_dir = resolve_model(model, files_for("torch", None))
        if has_torch_weights(model_dir):
            return model_dir, "torch"
    raise BackendUnavailableError(
        f"{model} has no ONNX files for dtype {format_dtype(parse_dtype(dtype))}"
        + ("" if torch_available() else " and torch is not installed"),
        hint="export them with `smolvlm export`, choose another --dtype, "
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

    # -- inputs ---------------------------------------------------------------------------
    def prepare(self, images: Sequence[Any] | Any = (), prompt: str | None = None, *,
                messages: Sequence[dict] | None = None, longest_edge: int | None = None,
                split: bool | None = None) -> PreparedInputs:
        """Load, tile and tokenize (numpy/PIL only, thread-safe): run it ahead of inference."""
        t0 = time.perf_counter()
        if isinstance(images, (str, Path, bytes)) or hasattr(images, "mode"):
            images = [images]
        images = list(images)
        if messages is None:
            messages = build_messages(prompt or DEFAULT_PROMPT, len(images))
        inputs = self.processor.prepare_inputs(messages, images or None, longest_edge=longest_edge,
                                               split=split)
        pixels = masks = None
        if "pixel_values" in inputs:
            pixels, masks = inputs["pixel_values"][0], inputs["pixel_attention_mask"][0]
            real = masks.any(axis=(-1, -2))
            if not real.all():  # drop batch-padding tiles (a copy; one prompt has none)
                pixels, masks = pixels[real], masks[real]
            masks = masks.astype(np.bool_)  # what the graphs take: an eighth of int64's memory
        return PreparedInputs(list(messages), inputs["input_ids"][0], pixels, masks,
                              time.perf_counter() - t0)

    def encode(self, prepared: PreparedInputs, stats: GenerationStats) -> np.ndarray | None:
        """Image features for the prepared prompt's image tokens ([n, hidden]), None without images."""
        if prepared.pixel_values is None:
            return None
        t0 = time.perf_counter()
        features = self.backend.encode_images(prepared.pixel_values, prepared.pixel_attention_mask)
        stats.vision_s += time.perf_counter() - t0
        stats.image_tiles += len(prepared.pixel_values)
        stats.image_tokens += int(features.shape[0] * features.shape[1])
        return features.reshape(-1, features.shape[-1])

    # -- generation ---------------------------------------------------------------------
    def stream(self, images: Sequence[Any] | Any = (), prompt: str | None = None, *,
               messages: Sequence[dict] | None = None, longest_edge: int | None = None,
               split: bool | None = None, options: GenerationOptions | None = None,
               **sampling) -> TextStream:
        """Stream the answer to `prompt` about `images` (or to chat `messages`) as text deltas.

        Sampling keywords (max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        override `options`. Preprocessing starts when the stream is first iterated.
        """
        opts = (options or GenerationOptions()).updated(**sampling)
        started = time.perf_counter()

        def prepared():
            return self.prepare(images, prompt, messages=messages, longest_edge=longest_edge,
                                split=split)

        return self._stream(prepared, opts, started)

    def stream_prepared(self, prepared: PreparedInputs, options: GenerationOptions | None = None,
                        **sampling) -> TextStream:
        """Like `stream`, for inputs already made by `prepare` (e.g. in a background thread)."""
        opts = (options or GenerationOptions()).updated(**sampling)
        # Time to first token counts the preprocessing, wherever it ran.
        return self._stream(lambda: prepared, opts, time.perf_counter() - prepared.preprocess_s)

    def generate(self, images: Sequence[Any] | Any = (), prompt: str | None = None, **kwargs) -> str:
        """The whole answer as one string (see `stream` for the arguments)."""
        return self.stream(images, prompt, **kwargs).text()

    def generate_batch(self, prepared: Sequence[PreparedInputs], options: GenerationOptions | None = None,
                       *, batch_size: int | None = None, **sampling) -> list[Generation]:
        """Answer several prepared prompts, decoding up to `batch_size` (default: all) together.

        Results are in input order and equal to one-by-one answers (int8 aside, see `generate_many`).
        """
        prepared = list(prepared)
        results: list[Generation | None] = [None] * len(prepared)
        size = batch_size or max(1, len(prepared))
        for index, generation in self.generate_many(prepared, options, batch_size=size, **sampling):
            results[index] = generation
        return results  # type: ignore[return-value]

    def generate_many(self, prepared: Iterable[PreparedInputs], options: GenerationOptions | None = None,
                      *, batch_size: int = 4, return_exceptions: bool = False,
                      **sampling) -> Iterator[tuple[int, Generation | Exception]]:
        """Answer a stream of prepared prompts, `batch_size` at a time, as `(index, Generation)`
        pairs in the order they finish (index: position in `prepared`).

        Each decode step runs every active reply at once; a finished reply's place goes to the
        next prompt (continuous batching), which is only read from `prepared` when a place is
        free. Every reply gets the tokens it would get alone (greedy, or seeded sampling: each
        reply has its own sampler seeded with `seed`), except with int8 decoders, whose
        activation quantization spans the rows of a step (see batch_generation.py). With `return_exceptions`, a prompt that
        fails alone (vision, prefill, sampling) yields its exception instead of raising; a failed
        shared step always raises. Backends without batched decoding answer one by one.
        """
        from smolvlm_cli.batch_generation import generate_many

        opts = (options or GenerationOptions()).updated(**sampling)
        return generate_many(self, prepared, opts, batch_size, return_exceptions)

    # -- conversations ----------------------------------------------------------------------
    def chat(self, options: GenerationOptions | None = None, longest_edge: int | None = None,
             split: bool | None = None, system: str | None = None, **sampling) -> Conversation:
        """A conversation that keeps its KV cache across turns: `chat().send(text, images)`."""
        from smolvlm_cli.conversation import Conversation

        opts = (options or GenerationOptions()).updated(**sampling)
        return Conversation(self, opts, longest_edge=longest_edge, split=split, system=system)

    def ask_stream(self, images: Sequence[Any] | Any, questions: Sequence[str],
                   options: GenerationOptions | None = None, longest_edge: int | None = None,
                   split: bool | None = None, system: str | None = None,
                   **sampling) -> Iterator[TextStream]:
        """One streamed answer per question; the images are encoded once for all of them."""
        from smolvlm_cli.conversation import ask_streams

        if isinstance(images, (str, Path, bytes)) or hasattr(images, "mode"):
            images = [images]
        opts = (options or GenerationOptions()).updated(**sampling)
        return ask_streams(self, list(images), list(questions), opts, longest_edge, split, system)

    def ask(self, images: Sequence[Any] | Any, questions: Sequence[str], **kwargs) -> list[str]:
        """Independent answers to each question about the same image(s)."""
        return [stream.text() for stream in self.ask_stream(images, questions, **kwargs)]

    def _stream(self, get_prepared, opts: GenerationOptions, started: float) -> TextStream:
        stats, token_ids = GenerationStats(), []

        def run() -> Iterator[str]:
            prepared = get_prepared()
            stats.preprocess_s += prepared.preprocess_s
            stats.prompt_tokens += len(prepared.input_ids)
            features = self.encode(prepared, stats)
            state = self.backend.new_state()
            yield from self.decode(state, prepared.input_ids, features, opts, stats, token_ids, started)

        return TextStream(run(), stats, token_ids)

    def decode(self, state: DecoderState, ids: np.ndarray, features: np.ndarray | None,
               opts: GenerationOptions, stats: GenerationStats, token_ids: list[int],
               started: float | None = None) -> Iterator[str]:
        """Prefill `ids` onto `state`, then decode: the loop shared by describe, ask and chat."""
        started = started if started is not None else time.perf_counter()
        t0 = time.perf_counter()
        logits = self.backend.forward(state, ids, features)
        stats.prefill_s += time.perf_counter() - t0
        reply = ReplyText(self.tokenizer)
        eos = self.config.eos_token_ids
        first_token_at = None
        for token in generate_tokens(logits, lambda t: self.backend.forward(state, np.array([t])),
                                     opts, eos, context_ids=ids):
            now = time.perf_counter()
            if first_token_at is None:
                stats.ttft_s = now - started
                first_token_at = now
            else:
                stats.decode_s = now - first_token_at
            token_ids.append(token)
            stats.generated_tokens += 1
            stats.stop_reason = "stop" if token in eos and not opts.ignore_eos else "length"
            delta = reply.put(token)
            if delta:
                yield delta
        tail = reply.flush()
        if tail:
            yield tail
