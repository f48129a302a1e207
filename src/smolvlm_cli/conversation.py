"""Conversations and several questions about one image, without paying twice for anything.

A `Conversation` keeps the decoder's KV cache between turns together with the ids it holds.
Each turn re-renders the whole chat (so the prompt is exactly what a fresh run would see),
keeps the longest common prefix of the cache and feeds only the rest: a new turn costs its own
tokens, a second question about an image costs the question. Images are tiled once and encoded
once per content (a hash of their pixels), however many turns or questions use them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_cli import jsontext
from smolvlm_cli.batch.files import atomic_write
from smolvlm_cli.options import GenerationOptions, Tiling
from smolvlm_cli.processor import Processor, image_list
from smolvlm_cli.prompt import build_messages, system_messages
from smolvlm_cli.reply import Replier, check_fits_context
from smolvlm_cli.values import GenerationStats, TextStream
from smolvlm_cli.video import is_video


@dataclass
class EncodedImage:
    grid: tuple[int, int]  # (rows, cols); (0, 0) when not split
    features: np.ndarray  # [image tokens, hidden]


@dataclass
class EncodedVideo:
    video: Any  # the SampledVideo (its frame times make the prompt)
    features: np.ndarray  # [frames x tokens per frame, hidden]


def media_prompt(
    processor: Processor, messages: list[dict], encoded: Sequence[Any], tiling: Tiling
) -> tuple[np.ndarray, np.ndarray | None]:
    """The prompt ids of `messages` whose media are `encoded` (in order), and their features."""
    grids = [e.grid for e in encoded if isinstance(e, EncodedImage)]
    videos = [e.video for e in encoded if isinstance(e, EncodedVideo)]
    ids = np.asarray(processor.prompt_ids(messages, grids, tiling, videos=videos), dtype=np.int64)
    return ids, (np.concatenate([e.features for e in encoded]) if encoded else None)


class ImageCache:
    """Tiles and features per image: preprocessing by source, vision by pixel content."""

    def __init__(self, replier: Replier, processor: Processor, tiling: Tiling):
        self.replier, self.processor, self.tiling = replier, processor, tiling
        self._by_source: dict[Any, EncodedImage] = {}
        self._by_content: dict[bytes, np.ndarray] = {}
        self.vision_calls = 0

    def get(self, image: Any, stats: GenerationStats) -> EncodedImage | EncodedVideo:
        if is_video(image):
            return self._video(image, stats)
        key = _source_key(image)
        if key is not None and key in self._by_source:
            return self._by_source[key]
        t0 = time.perf_counter()
        values, mask, grid = self.processor.tile_image(image, self.tiling)
        stats.preprocess_s += time.perf_counter() - t0
        digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
        features = self._by_content.get(digest)
        if features is None:
            t1 = time.perf_counter()
            features = self.replier.backend.encode_images(values, mask)
            features = features.reshape(-1, features.shape[-1])
            stats.vision_s += time.perf_counter() - t1
            self.vision_calls += 1
            self._by_content[digest] = features
        stats.image_tiles += len(values)
        stats.image_tokens += len(features)
        encoded = EncodedImage(grid, features)
        if key is not None:
            self._by_source[key] = encoded
        return encoded

    def _video(self, source: Any, stats: GenerationStats) -> EncodedVideo:
        """A video's features: its frames decoded ahead of the encoder, each frame's features
        cached by content (a frame seen before, in this clip or another, is not encoded again)."""
        from smolvlm_cli.video.encode import encode_video

        key = _source_key(source) if isinstance(source, (str, Path)) else source.source_key()
        if key is not None and key in self._by_source:
            return self._by_source[key]
        video = self.processor.open_video(source)
        features = encode_video(
            video, self.replier.backend, self.processor.image_processor, stats, self._by_content, self.replier.progress
        )
        self.vision_calls += 1
        encoded = EncodedVideo(video, features)
        if key is not None:
            self._by_source[key] = encoded
        return encoded


def _source_key(image: Any):
    """Paths are keyed by path, size and mtime; bytes by content; PIL images are not keyed."""
    if isinstance(image, (str, Path)):
        p = Path(image)
        try:
            st = p.stat()
        except OSError:
            return None  # let the image loader report the problem
        return ("path", str(p.resolve()), st.st_size, st.st_mtime_ns)
    if isinstance(image, bytes):
        return ("bytes", hashlib.blake2b(image, digest_size=16).digest())
    return None


class CachedPrompt:
    """A decoder state and the ids it holds; `extend` reuses the longest common prefix."""

    def __init__(self, replier: Replier):
        self.replier = replier
        self.state = replier.backend.new_state()
        self.ids: list[int] = []
        self.runs = 0  # runs started: a reply abandoned unread must not record over a later one

    def reuse(self, ids: Sequence[int]) -> int:
        """Rewind to the longest prefix shared with `ids` (at least one id is left to feed)."""
        limit = min(len(self.ids), len(ids) - 1)
        common = 0
        while common < limit and self.ids[common] == ids[common]:
            common += 1
        if common < self.state.length:
            self.state.truncate(common)
        self.ids = self.ids[:common]
        return common

    def run(
        self,
        ids: np.ndarray,
        features: np.ndarray | None,
        opts: GenerationOptions,
        stats: GenerationStats | None = None,
        started: float | None = None,
    ) -> TextStream:
        """Stream the reply to the prompt `ids`, whose image tokens take `features` in order.

        `stats` may carry the image work already done for this prompt, and `started` when it
        began, so that the time to first token counts it."""
        stats, token_ids = stats or GenerationStats(), []
        started = started if started is not None else time.perf_counter()

        def deltas() -> Iterator[str]:
            self.runs += 1
            run = self.runs
            kept = self.reuse(ids.tolist())
            rest = ids[kept:]
            rest_features = None
            if features is not None:
                skipped = int(np.count_nonzero(ids[:kept] == self.replier.image_token_id))
                rest_features = features[skipped:]
            stats.prompt_tokens = len(ids)
            try:
                yield from self.replier.reply_on(self.state, rest, rest_features, opts, stats, token_ids, started)
            finally:
                if run == self.runs:  # else closed later (collected): the state is another run's
                    # The state now holds the prompt and every generated token but the last.
                    self.ids = ids.tolist() + token_ids[:-1]
                    if self.state.length != len(self.ids):  # interrupted mid-step: start clean
                        self.state.truncate(0)
                        self.ids = []

        return TextStream(deltas(), stats, token_ids)


class Conversation:
    """A multi-turn chat: `send(text, images)` streams the reply and keeps the history.

    Made by `SmolVLM.chat`. Every turn re-renders the whole chat and feeds only what the kept
    KV cache does not hold; when the chat outgrows the context, the oldest turns are dropped
    (with a note in `notices`).

    Args:
        replier: runs the replies (`SmolVLM`'s).
        processor: builds the prompts and tiles the images.
        options: generation options of every turn (`send` keywords override them).
        tiling: how images are tiled: a `Tiling`, a detail level, or None (the model's own).
        max_context: the token budget of prompt and reply (default: the model's context).
        system: a system prompt that opens the chat (kept through `reset` and trimming).
    """

    def __init__(
        self,
        replier: Replier,
        processor: Processor,
        options: GenerationOptions | None = None,
        tiling: Tiling | str | None = None,
        max_context: int | None = None,
        system: str | None = None,
    ):
        self.replier, self.processor = replier, processor
        self.system = system  # kept through /reset and context trimming
        self.options = options or GenerationOptions()
        self.tiling = processor.tiling(tiling)
        self.images = ImageCache(replier, processor, self.tiling)
        self.max_context = max_context or processor.config.max_position_embeddings
        self.notices: list[str] = []  # e.g. dropped turns; the CLI prints them on stderr
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = system_messages(self.system)
        self._turn_images: list[list[Any]] = [[] for _ in self.messages]  # images of each message
        self._cache = CachedPrompt(self.replier)

    def send(self, text: str, images: Sequence[Any] | Any = (), **sampling) -> TextStream:
        """Add a user turn and stream the reply; the reply joins the history once consumed.

        A turn that cannot be sent (an error raised here) leaves the chat as it was; a reply
        left unread is dropped, with its question, at the next `send`.

        Args:
            text: the user's message.
            images: an image or a sequence of them shown with it (paths, bytes or PIL images),
                before the text; video paths and `SampledVideo`s are videos.
            **sampling: generation options for this turn only (e.g. `max_new_tokens`).

        Returns:
            A `TextStream` of the reply's text deltas, with `stats` and `token_ids`.

        Raises:
            ValueError: the turn alone does not fit the context (with videos: said before any
                frame is decoded), or an image is cut into more tiles than the model has
                positions for (too long an edge).
        """
        opts = self.options.updated(**sampling)
        if self.messages and self.messages[-1]["role"] == "user":  # a reply dropped unread: its
            del self.messages[-1], self._turn_images[-1]  # question goes too (no two user turns)
        images = [self.processor.open_video(m) if is_video(m) else m for m in image_list(images)]
        videos = [m for m in images if is_video(m)]
        if videos:  # the frames alone, whatever older turns are dropped
            config = self.processor.config
            frames = sum(v.num_frames for v in videos)
            check_fits_context(frames * (config.image_seq_len + 13), frames, len(videos), opts.max_new_tokens, config)
        content = [{"type": "video" if is_video(m) else "image"} for m in images] + [{"type": "text", "text": text}]
        before = list(self.messages), list(self._turn_images), len(self.notices)
        self.messages.append({"role": "user", "content": content})
        self._turn_images.append(images)
        started = time.perf_counter()
        try:
            ids, features, stats = self._prompt(opts)
            stream = self._cache.run(ids, features, opts, stats, started)
        except BaseException:  # a turn that could not be sent (an unreadable image, too long)
            self.messages, self._turn_images = before[:2]  # leaves the chat as it was
            del self.notices[before[2] :]
            raise

        def recorded() -> Iterator[str]:
            yield from stream
            self._finish(stream.token_ids)  # only a reply read to its end joins the history

        return TextStream(recorded(), stream.stats, stream.token_ids)

    def _prompt(self, opts: GenerationOptions) -> tuple[np.ndarray, np.ndarray | None, GenerationStats]:
        """The prompt ids of the whole chat, its image features, and the image work it took."""
        while True:
            stats = GenerationStats()
            encoded = [self.images.get(img, stats) for turn in self._turn_images for img in turn]
            ids, features = media_prompt(self.processor, self.messages, encoded, self.tiling)
            budget = self.max_context - opts.max_new_tokens
            first = 1 if self.system else 0  # the system turn is never dropped
            if len(ids) <= budget or len(self.messages) <= first + 1:
                check_fits_context(len(ids), 0, 0, opts.max_new_tokens, self.processor.config, self.max_context)
                return ids, features, stats
            dropped = 2 if len(self.messages) > first + 2 else 1  # a user turn and its reply
            del self.messages[first : first + dropped], self._turn_images[first : first + dropped]
            self.notices.append(f"context full ({len(ids)} tokens): dropped the oldest turn")

    def _finish(self, reply_ids: list[int]) -> None:
        reply = self.processor.tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        self._turn_images.append([])

    def to_json(self) -> str:
        """The transcript as Hugging Face chat messages (images as their paths when known)."""
        out, images = [], iter(img for turn in self._turn_images for img in turn)
        for message in self.messages:
            content = []
            for part in message["content"]:
                if part["type"] in ("image", "video"):
                    source = next(images)
                    name = (
                        source
                        if isinstance(source, (str, Path))
                        else getattr(source, "filename", "") or getattr(source, "path", "")
                    )
                    part = {"type": part["type"], **({"path": str(name)} if name else {})}
                content.append(part)
            out.append({"role": message["role"], "content": content})
        return jsontext.dumps(out, indent=2)  # a file name that is not UTF-8 stays savable

    def save(self, path: str | Path) -> None:
        """Write the transcript (`to_json`) to `path`; a save that fails or is killed half-way
        (a full disk, Ctrl-C) leaves the previous file whole."""
        atomic_write(Path(path), (self.to_json() + "\n").encode("utf-8"))


def ask_streams(
    replier: Replier,
    processor: Processor,
    images: Sequence[Any],
    questions: Sequence[str],
    options: GenerationOptions,
    tiling: Tiling | str | None = None,
    system: str | None = None,
) -> Iterator[TextStream]:
    """One reply stream per question, each answered independently about the same images.

    The images are tiled and encoded once; every question after the first reuses the cached
    prompt prefix (everything up to the question's own text).
    """
    tiling = processor.tiling(tiling)
    cache, prefix = ImageCache(replier, processor, tiling), CachedPrompt(replier)
    media = [processor.open_video(m) if is_video(m) else m for m in images]  # probed, not decoded
    videos = [m for m in media if is_video(m)]
    kinds = ["video" if is_video(m) else "image" for m in media]
    for question in questions:
        stats, started = GenerationStats(), time.perf_counter()
        messages = build_messages(question, kinds, system)
        images_done = {i: cache.get(m, stats) for i, m in enumerate(media) if not is_video(m)}
        if videos:  # a prompt too long for the context fails before any frame is decoded
            grids = [images_done[i].grid for i in sorted(images_done)]
            ids = processor.prompt_ids(messages, grids, tiling, videos=videos)
            check_fits_context(
                len(ids), sum(v.num_frames for v in videos), len(videos), options.max_new_tokens, processor.config
            )
        encoded = [images_done[i] if i in images_done else cache.get(m, stats) for i, m in enumerate(media)]
        ids, features = media_prompt(processor, messages, encoded, tiling)
        if not videos:
            check_fits_context(len(ids), 0, 0, options.max_new_tokens, processor.config)
        yield prefix.run(ids, features, options, stats, started)
