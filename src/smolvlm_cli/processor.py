"""`Processor`: chat messages + images and videos -> the model inputs transformers' processor would give.

Joins the image processor (pixels, tiles) and the tokenizer with the chat template (prompt ids):
each `<image>` of the rendered prompt expands to the row/column/global markers and image tokens
of its tile grid, each `<video>` to its timestamped frames (`video/`: a conversation with a
video renders with transformers' video template), so the prompt's image-token count always
equals the encoded tiles' rows. A video's frames are decoded only when it is encoded.

`prompt_ids` is the one place a prompt is built (render, grid check, `<image>` expansion,
encode): describe, ask, chat, batch and the Ray workers all go through it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ConfigError, InputError
from smolvlm_cli.image_processing import ImageProcessor, load_image, num_tiles
from smolvlm_cli.options import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT, Tiling
from smolvlm_cli.prompt import (
    VIDEO_CHAT_TEMPLATE,
    ChatTemplate,
    build_messages,
    expand_image_tokens,
    expand_video_tokens,
    has_video,
    normalize_messages,
    row_col_token,
)
from smolvlm_cli.tokenizer import Tokenizer
from smolvlm_cli.values import PreparedInputs
from smolvlm_cli.video import is_video

_IMAGE_KEYS = ("image", "path", "url")
_VIDEO_KEYS = ("video", "path", "url")


def images_in_messages(messages: Sequence[dict]) -> tuple[int, list[Any]]:
    """Count the image placeholders and collect images given inline (`{"type": "image", "image": x}`).

    `messages` must be normalized (`prompt.normalize_messages`): string content and OpenAI
    `image_url` parts are rewritten there.
    """
    kinds, inline = media_in_messages(messages)
    return kinds.count("image"), [source for kind, source in inline if kind == "image"]


def media_in_messages(messages: Sequence[dict]) -> tuple[list[str], list[tuple[str, Any]]]:
    """The kinds ("image" / "video") of the media placeholders in order, and the media given
    inline as (kind, source): `{"type": "video", "path": "clip.mp4"}` (keys `video`, `path`,
    `url`; for images `image`, `path`, `url`)."""
    kinds, inline = [], []
    for message in messages:
        for part in message.get("content") or ():
            kind = part.get("type")
            if kind in ("image", "video"):
                kinds.append(kind)
                keys = _IMAGE_KEYS if kind == "image" else _VIDEO_KEYS
                source = next((part[k] for k in keys if part.get(k) is not None), None)
                if source is not None:
                    inline.append((kind, source))
    return kinds, inline


def image_list(images: Sequence[Any] | Any) -> list[Any]:
    """One image or video (a path, bytes, a PIL image, a `SampledVideo`) or a sequence of them,
    as a list."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(images, "mode"):
        return [images]
    if is_video(images):
        return [images]
    if images is None or not isinstance(images, Iterable):
        raise TypeError(f"images are paths, bytes or PIL images (or a sequence of them), not {type(images).__name__}")
    return list(images)


def drop_padding_tiles(pixel_values: np.ndarray, pixel_attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One prompt's tiles ([tiles, ...]) without the all-padding tiles of a padded batch, and the
    mask as bool (what the graphs take: an eighth of int64's memory)."""
    real = pixel_attention_mask.any(axis=(-1, -2))
    if not real.all():  # a copy; one prompt's tiles have no padding
        pixel_values, pixel_attention_mask = pixel_values[real], pixel_attention_mask[real]
    return pixel_values, pixel_attention_mask.astype(np.bool_)


class Processor:
    """Chat messages and images -> model inputs: the chat template, the image processor and
    the tokenizer of one model directory.

    Args:
        config: the model's configuration (`ModelConfig.from_dir`).
        image_processor: resizes and tiles images (`ImageProcessor(config)`).
        tokenizer: the model's tokenizer.
        chat_template: renders chat messages to the prompt text.
    """

    def __init__(
        self, config: ModelConfig, image_processor: ImageProcessor, tokenizer: Tokenizer, chat_template: ChatTemplate
    ):
        self.config = config
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Processor:
        """From a local model directory (use `smolvlm_cli.hub.resolve_model` for Hub ids)."""
        config = ModelConfig.from_dir(model_dir)
        tokenizer = Tokenizer.from_dir(model_dir)
        if tokenizer.image_token_id != config.image_token_id:
            raise ConfigError(
                f"{model_dir}: config.json's image_token_id is {config.image_token_id} but the "
                f"tokenizer gives {tokenizer.image_token!r} the id {tokenizer.image_token_id}",
                hint="config.json and tokenizer.json come from different models: download the model again",
            )
        return cls(config, ImageProcessor(config), tokenizer, ChatTemplate.from_dir(model_dir))

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text; a conversation holding a video renders with transformers' video
        template (`prompt.VIDEO_CHAT_TEMPLATE`), as its processor does."""
        template = self.chat_template
        if has_video(normalize_messages(messages)):
            template = ChatTemplate(VIDEO_CHAT_TEMPLATE, template.special_tokens, origin="video chat template")
        return template.render(messages, add_generation_prompt=add_generation_prompt)

    def prompt_ids(
        self,
        messages: Sequence[dict],
        grids: Sequence[tuple[int, int]],
        tiling: Tiling | str | None = None,
        add_generation_prompt: bool = True,
        videos: Sequence[Any] = (),
    ) -> list[int]:
        """The prompt's token ids: `messages` rendered, each `<image>` expanded for its tile grid
        (`(rows, cols)`, `(0, 0)` unsplit, in order), each `<video>` for its `SampledVideo`
        (`videos`, in order), then encoded.

        Raises ValueError when a grid has more rows or columns than the vocabulary has markers
        for (`tiling`, the one that cut the images, goes into the message)."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        if grids:
            self._check_grids(grids, self.tiling(tiling))
            text = expand_image_tokens(text, grids, self.config.image_seq_len)
        if videos or has_video(normalize_messages(messages)):
            text = expand_video_tokens(text, videos, self.config.image_seq_len)
        return self.tokenizer.encode(text)

    def open_video(self, source: Any, **sampling) -> Any:
        """A video path as a `SampledVideo` (probed and sampled: `fps`, `max_frames`, `start`,
        `end`; the model's sampling by default; `label` and `probed` as `open_video` takes
        them); a `SampledVideo` as it is."""
        unknown = sorted(set(sampling) - {"fps", "max_frames", "start", "end", "label", "probed"})
        if unknown:
            raise ValueError(f"unknown video option(s) {', '.join(unknown)} (choose from fps, max_frames, start, end)")
        if not isinstance(source, (str, os.PathLike)):
            if is_video(source):
                return source
            raise TypeError(f"a video is a file path or a SampledVideo, not {type(source).__name__}")
        from smolvlm_cli.video.clip import open_video

        return open_video(source, self.config, **sampling)

    def tiling(self, tiling: Tiling | str | None) -> Tiling:
        """`tiling` as a `Tiling` for this model (see `Tiling.of`)."""
        return Tiling.of(tiling, self.config)

    def _preprocess(self, images: Sequence[Any], tiling: Tiling) -> dict[str, Any]:
        """One prompt's images, their grids checked from their sizes before any resize: an edge
        the model cannot place is refused at once, not after seconds of pixel work."""
        images = [load_image(image) for image in images]
        edge, split = tiling.longest_edge, tiling.split
        self._check_grids([self.image_processor.tile_grid(i.width, i.height, edge, split) for i in images], tiling)
        return self.image_processor.preprocess(images, longest_edge=edge, split=split)

    def tile_image(
        self, image: Any, tiling: Tiling | str | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """One image's tiles [tiles, 3, T, T], their bool mask and its grid `(rows, cols)`.

        Checks the grid as `prompt_ids` will, before any pixel or vision work is spent."""
        tiling = self.tiling(tiling)
        pixels = self._preprocess([image], tiling)
        grid = (pixels["rows"][0][0], pixels["cols"][0][0])
        values, mask = drop_padding_tiles(pixels["pixel_values"][0], pixels["pixel_attention_mask"][0])
        return values, mask, grid

    def _check_grids(self, grids: list[tuple[int, int]], tiling: Tiling) -> None:
        """The vocabulary has <row_r_col_c> markers up to 6x6: a larger grid would be garbage."""
        for rows, cols in grids:
            if rows and self.tokenizer.token_to_id(row_col_token(rows, cols)) is None:
                edge = tiling.longest_edge or self.config.longest_edge
                raise InputError(
                    f"a longest edge of {edge} px cuts the image into {rows}x{cols} tiles; "
                    "this model knows positions up to 6x6 "
                    f"(use a longest edge of at most {6 * self.config.tile_size})"
                )

    def prepare_inputs(
        self,
        messages: Sequence[dict],
        images: Sequence[Any] | None = None,
        tiling: Tiling | str | None = None,
        add_generation_prompt: bool = True,
        videos: Sequence[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` [1, seq] int64 and, with images or videos, `pixel_values`
        and `pixel_attention_mask` [1, tiles, ...], as transformers' processor returns them (a
        video's frames are decoded here; its tiles follow the images' in prompt order)."""
        kinds, inline = media_in_messages(normalize_messages(messages, plain=False))
        messages, tiling = normalize_messages(messages), self.tiling(tiling)
        images = image_list(images) if images is not None else [s for k, s in inline if k == "image"]
        videos = [
            self.open_video(v)
            for v in (image_list(videos) if videos is not None else [s for k, s in inline if k == "video"])
        ]
        for kind, given in (("image", images), ("video", videos)):
            if kinds.count(kind) != len(given):
                raise ValueError(
                    f"the messages have {kinds.count(kind)} {kind} placeholder(s) but {len(given)} {kind}(s) were given"
                )
        inputs: dict[str, np.ndarray] = {}
        grids: list[tuple[int, int]] = []
        tiles: list[np.ndarray] = []
        if images:
            pixels = self._preprocess(images, tiling)
            grids = list(zip(pixels["rows"][0], pixels["cols"][0]))
            inputs["pixel_values"] = pixels["pixel_values"]
            inputs["pixel_attention_mask"] = pixels["pixel_attention_mask"]
        if videos:
            per_image = (
                iter(np.split(inputs["pixel_values"][0], np.cumsum([num_tiles(r, c) for r, c in grids])[:-1]))
                if images
                else iter(())
            )
            next_video = iter(videos)
            for kind in kinds:
                if kind == "image":
                    tiles.extend(next(per_image))
                else:
                    tiles.extend(self.image_processor.normalize(t) for t in next(next_video).tiles(self.config))
            inputs["pixel_values"] = np.stack(tiles)[None]
            inputs["pixel_attention_mask"] = np.ones((1, len(tiles), *tiles[0].shape[1:]), dtype=np.int64)
        ids = np.asarray([self.prompt_ids(messages, grids, tiling, add_generation_prompt, videos)], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), **inputs}

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
        """Load, tile and tokenize one prompt (numpy/PIL only, thread-safe): run it ahead of inference.

        Videos are probed and sampled here (their prompt is then known); their frames are
        decoded when the prompt is encoded, overlapping the vision encoder.

        Args:
            images: an image or a sequence of them (paths, bytes or PIL images); video paths
                (by extension) and `SampledVideo`s among them are taken as videos, in place.
            prompt: the question; `DEFAULT_PROMPT` (`DEFAULT_VIDEO_PROMPT` with a video) when
                None. Ignored when `messages` is given.
            messages: Hugging Face chat messages with one placeholder per image or video
                (`{"type": "video", "path": ...}` parts may carry their video).
            tiling: how images are tiled: a `Tiling`, a detail level ("low", "auto", "high"),
                or None for the model's own preprocessing. Video frames are one tile each.
            videos: videos after the images (paths or `SampledVideo`s).
            video_options: `fps`, `max_frames`, `start`, `end` for the video paths.

        Returns:
            `PreparedInputs`: the prompt ids and the real (unpadded) tiles.
        """
        t0, tiling = time.perf_counter(), self.tiling(tiling)
        # what each medium is: `videos=` and video parts say so; an image argument by its type
        given = [(m, "video" if is_video(m) else "image") for m in image_list(images)]
        given += [(v, "video") for v in image_list(videos)]
        if messages is None:
            kinds = [kind for _, kind in given]
            default = DEFAULT_VIDEO_PROMPT if "video" in kinds else DEFAULT_PROMPT
            messages = build_messages(prompt or default, kinds)
        else:
            kinds, inline = media_in_messages(normalize_messages(messages, plain=False))
            messages = normalize_messages(messages)
            given = given or [(source, kind) for kind, source in inline]
        if [kind for _, kind in given] != kinds:
            raise ValueError(
                f"the messages hold {kinds.count('image')} image and {kinds.count('video')} "
                f"video placeholder(s), which the {len(given)} media given do not match"
            )
        media = [m for m, _ in given]
        media = [self.open_video(m, **(video_options or {})) if k == "video" else m for m, k in zip(media, kinds)]
        images = [m for m, k in zip(media, kinds) if k == "image"]
        videos = [m for m, k in zip(media, kinds) if k == "video"]
        if not videos:
            inputs = self.prepare_inputs(messages, images or None, tiling)
            pixels = masks = None
            if "pixel_values" in inputs:
                pixels, masks = drop_padding_tiles(inputs["pixel_values"][0], inputs["pixel_attention_mask"][0])
            return PreparedInputs(list(messages), inputs["input_ids"][0], pixels, masks, time.perf_counter() - t0)
        grids, pixels, masks, counts = [], None, None, iter(())
        if images:
            tiled = [self.tile_image(image, tiling) for image in images]
            grids = [grid for _, _, grid in tiled]
            pixels = np.concatenate([values for values, _, _ in tiled])
            masks = np.concatenate([mask for _, mask, _ in tiled])
            counts = iter([len(values) for values, _, _ in tiled])
        ids = np.asarray(self.prompt_ids(messages, grids, tiling, videos=videos), dtype=np.int64)
        order = [next(counts) if k == "image" else m for m, k in zip(media, kinds)]
        return PreparedInputs(list(messages), ids, pixels, masks, time.perf_counter() - t0, media=order)
