"""`SmolVLM`, the coordinator: processor -> backend -> generation -> streamed text.

    model = SmolVLM.from_pretrained("HuggingFaceTB/SmolVLM2-256M-Video-Instruct")
    for delta in model.stream(["photo.jpg"], "What is in the box?"):
        print(delta, end="", flush=True)

`stream` returns a `TextStream`: iterate it for text deltas; its `stats` (token counts, tiles,
timings) fill in as it runs. The replies themselves run in `reply.Replier`, which conversations
and batched decoding share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from smolvlm_cli.backends.base import Backend
from smolvlm_cli.backends.select import select_backend
from smolvlm_cli.builder.layout import Progress
from smolvlm_cli.conversation import Conversation, ask_streams
from smolvlm_cli.hub import default_model
from smolvlm_cli.options import GenerationOptions, Tiling
from smolvlm_cli.processor import Processor, image_list
from smolvlm_cli.reply import Replier
from smolvlm_cli.row_decoding import generate_many
from smolvlm_cli.tokenizer import Tokenizer
from smolvlm_cli.values import Generation, PreparedInputs, TextStream


class SmolVLM:
    """A SmolVLM / Idefics3 model ready to answer: its processor, tokenizer and backend.

    Make one with `SmolVLM.from_pretrained`. The methods take images as paths, bytes or PIL
    images (one, or a sequence), and sampling keywords (`max_new_tokens`, `temperature`,
    `top_k`, `top_p`, `repetition_penalty`, `seed`, ...) that override an `options` object.

    Args:
        processor: turns messages and images into model inputs.
        tokenizer: the processor's tokenizer.
        backend: the runner of the vision encoder and decoder (`backends.base.Backend`).
        model_id: the Hub id or directory it came from (recorded in batch outputs).
    """

    def __init__(self, processor: Processor, tokenizer: Tokenizer, backend: Backend, model_id: str | None = None):
        self.processor = processor
        self.tokenizer = tokenizer
        self.config = processor.config
        self.model_id = model_id
        self.backend = backend
        self.progress: Callable[[int, int], None] | None = None  # (video frames encoded, total)

    @property
    def _replier(self) -> Replier:
        # made per call (four attributes): a replaced backend or config takes effect at once
        return Replier(self.backend, self.tokenizer, self.config, self.progress)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        backend: str = "auto",
        dtype: str | None = None,
        threads: int | None = None,
        *,
        graphs: str = "auto",
        progress: Progress | None = None,
        notice: Callable[[str], None] = lambda _m: None,
    ) -> SmolVLM:
        """Load a model from the Hub or a local directory.

        By default our fast ONNX graphs are built once from the checkpoint's safetensors and
        cached (`builder/cache.py`); a folder made by `smolvlm export` runs its own graphs.

        Args:
            model: a Hub id or a directory (default: `$SMOLVLM_MODEL`, else `hub.DEFAULT_MODEL`).
            backend: "auto" (ONNX, else torch when the graphs cannot be had), "onnx" or "torch".
            dtype: the ONNX variant, e.g. "fp32", "int8" (the default), "q4" or
                "vision=fp32,decoder=int8"; torch takes fp32, bf16 or fp16.
            threads: onnxruntime / torch threads (default: the CPUs this process may use).
            graphs: "auto", "build" (always ours) or "hub" (the repo's own `onnx/` graphs); see
                `backends/select.py`.
            progress: receives the steps of a graph build (`builder.layout.Progress`).
            notice: gets one line when a damaged cache entry is rebuilt, or the graphs are
                first optimized for this machine.

        Returns:
            A ready `SmolVLM`.

        Raises:
            ModelNotFoundError, BackendUnavailableError, ConfigError: no such model, no files for
            this backend and dtype, or files that do not fit together.
        """
        model = str(model) if model is not None else default_model()
        chosen = select_backend(model, backend, dtype, graphs, progress=progress, notice=notice)
        processor = Processor.from_pretrained(chosen.model_dir)
        if chosen.backend == "onnx":
            from smolvlm_cli.backends.onnx import OnnxBackend

            runner = OnnxBackend(chosen.graphs_dir, processor.config, dtype=dtype, threads=threads, notice=notice)
        else:
            from smolvlm_cli.backends.torch import TorchBackend

            runner = TorchBackend(chosen.model_dir, processor.config, dtype=dtype, threads=threads)
        return cls(processor, processor.tokenizer, runner, model_id=model)

    # -- inputs ---------------------------------------------------------------------------
    def prepare(
        self,
        images: Sequence[Any] | Any = (),
        prompt: str | None = None,
        *,
        messages: Sequence[dict] | None = None,
        tiling: Tiling | str | None = None,
        videos: Sequence[Any] = (),
        video_options: dict[str, Any] | None = None,
    ) -> PreparedInputs:
        """`Processor.prepare`: load, tile and tokenize ahead of inference (thread-safe)."""
        return self.processor.prepare(
            images, prompt, messages=messages, tiling=tiling, videos=videos, video_options=video_options
        )

    # -- generation ---------------------------------------------------------------------
    def stream(
        self,
        images: Sequence[Any] | Any = (),
        prompt: str | None = None,
        *,
        messages: Sequence[dict] | None = None,
        tiling: Tiling | str | None = None,
        options: GenerationOptions | None = None,
        videos: Sequence[Any] = (),
        video_options: dict[str, Any] | None = None,
        **sampling,
    ) -> TextStream:
        """Stream the answer to `prompt` about `images` (or to chat `messages`) as text deltas.

        Args:
            images: an image or a sequence of them (paths, bytes or PIL images); may be empty.
                Video paths (by extension: .mp4, .mov, .mkv, .webm, ...) are taken as videos.
            videos: videos after the images (paths or `SampledVideo`s from `video.clip.open_video`).
            video_options: how video paths are sampled: `fps`, `max_frames` (default: the
                model's `video_sampling`), `start`, `end` (seconds: a segment).
            prompt: the question (default: "Describe this image in detail.").
            messages: Hugging Face chat messages instead of `prompt`, one image placeholder per image.
            tiling: how images are tiled, the main speed knob: a detail level ("low": one
                512-px view; "auto": the model's own tiling; "high": more tiles), or a
                `Tiling(longest_edge=..., split=...)`; None is the model's own preprocessing.
            options: generation options; `**sampling` keywords override them.

        Returns:
            A `TextStream`: iterate it for text deltas; its `stats` and `token_ids` fill in as it
            runs. Preprocessing starts when it is first iterated.

        Raises:
            ValueError: e.g. a longest edge the model has no tile positions for.
        """
        opts = (options or GenerationOptions()).updated(**sampling)
        started = time.perf_counter()

        def prepared():
            return self.prepare(
                images, prompt, messages=messages, tiling=tiling, videos=videos, video_options=video_options
            )

        return self._replier.stream(prepared, opts, started)

    def stream_prepared(
        self, prepared: PreparedInputs, options: GenerationOptions | None = None, **sampling
    ) -> TextStream:
        """Like `stream`, for inputs already made by `prepare` (e.g. in a background thread)."""
        opts = (options or GenerationOptions()).updated(**sampling)
        return self._replier.stream_prepared(prepared, opts)

    def generate(self, images: Sequence[Any] | Any = (), prompt: str | None = None, **kwargs) -> str:
        """The whole answer as one string.

        Args:
            images, prompt, **kwargs: as for `stream`.

        Returns:
            The answer's text.
        """
        return self.stream(images, prompt, **kwargs).text()

    def generate_batch(
        self,
        prepared: Sequence[PreparedInputs],
        options: GenerationOptions | None = None,
        *,
        batch_size: int | None = None,
        **sampling,
    ) -> list[Generation]:
        """Answer several prepared prompts, decoding up to `batch_size` (default: all) together.

        Results are in input order and equal to one-by-one answers (int8 aside, see `generate_many`).
        """
        prepared = list(prepared)
        wrong = next((p for p in prepared if not isinstance(p, PreparedInputs)), None)
        if wrong is not None:  # a path or an image: what `prepare` takes, not this
            raise TypeError(
                f"generate_batch takes prompts from `prepare(...)`, not {type(wrong).__name__}: {wrong!r:.80}"
            )
        results: list[Generation | None] = [None] * len(prepared)
        size = batch_size or max(1, len(prepared))
        for index, generation in self.generate_many(prepared, options, batch_size=size, **sampling):
            results[index] = generation
        return results  # type: ignore[return-value]

    def generate_many(
        self,
        prepared: Iterable[PreparedInputs],
        options: GenerationOptions | None = None,
        *,
        batch_size: int = 4,
        return_exceptions: bool = False,
        **sampling,
    ) -> Iterator[tuple[int, Generation | Exception]]:
        """Answer a stream of prepared prompts, `batch_size` at a time, as `(index, Generation)`
        pairs in the order they finish (index: position in `prepared`).

        Each decode step runs every active reply at once; a finished reply's place goes to the
        next prompt (continuous batching), which is only read from `prepared` when a place is
        free. Every reply gets the tokens it would get alone (greedy, or seeded sampling: each
        reply has its own sampler seeded with `seed`), except with int8 decoders, whose
        activation quantization spans the rows of a step (see row_decoding.py). With
        `return_exceptions`, a prompt that fails alone (vision, prefill, sampling) yields its
        exception instead of raising; a failed shared step always raises. Backends without
        batched decoding answer one by one.
        """
        opts = (options or GenerationOptions()).updated(**sampling)
        return generate_many(self._replier, prepared, opts, batch_size, return_exceptions)

    # -- conversations ----------------------------------------------------------------------
    def chat(
        self,
        options: GenerationOptions | None = None,
        tiling: Tiling | str | None = None,
        system: str | None = None,
        **sampling,
    ) -> Conversation:
        """A conversation that keeps its KV cache across turns: `chat().send(text, images)`.

        Args:
            options: generation options for every turn; `**sampling` keywords override them.
            tiling: how the conversation's images are tiled (as for `stream`).
            system: a system prompt that opens the conversation (kept across /reset).

        Returns:
            A `Conversation`.
        """
        opts = (options or GenerationOptions()).updated(**sampling)
        return Conversation(self._replier, self.processor, opts, tiling=tiling, system=system)

    def ask_stream(
        self,
        images: Sequence[Any] | Any,
        questions: Sequence[str] | str,
        options: GenerationOptions | None = None,
        tiling: Tiling | str | None = None,
        system: str | None = None,
        **sampling,
    ) -> Iterator[TextStream]:
        """One streamed answer per question; the images are encoded once for all of them.

        Args:
            images: an image or a sequence of them, shared by every question.
            questions: each is answered independently (not as a conversation); a string is one question.
            options, tiling, **sampling: as for `stream`.
            system: a system prompt before each question.

        Returns:
            An iterator of `TextStream`s, one per question; consume each before the next.
        """
        opts = (options or GenerationOptions()).updated(**sampling)
        questions = [questions] if isinstance(questions, str) else list(questions)  # one question, not its letters
        return ask_streams(self._replier, self.processor, image_list(images), questions, opts, tiling, system)

    def ask(self, images: Sequence[Any] | Any, questions: Sequence[str] | str, **kwargs) -> list[str]:
        """Independent answers to each question about the same image(s).

        Args:
            images, questions, **kwargs: as for `ask_stream`.

        Returns:
            The answers' texts, in the order of `questions`.
        """
        return [stream.text() for stream in self.ask_stream(images, questions, **kwargs)]
