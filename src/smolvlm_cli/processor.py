"""`Processor`: chat messages + images -> the model inputs transformers' processor would give.

Joins the image processor (pixels, tiles) and the tokenizer with the chat template (prompt ids):
each `<image>` of the rendered prompt expands to the row/column/global markers and image tokens
of its tile grid, so the prompt's image-token count always equals the encoded tiles' rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ConfigError
from smolvlm_cli.image_processing import ImageProcessor
from smolvlm_cli.prompt import ChatTemplate, expand_image_tokens, normalize_messages, row_col_token
from smolvlm_cli.tokenizer import Tokenizer

_IMAGE_KEYS = ("image", "path", "url")


def images_in_messages(messages: Sequence[dict]) -> tuple[int, list[Any]]:
    """Count the image placeholders and collect images given inline (`{"type": "image", "image": x}`).

    `messages` must be normalized (`prompt.normalize_messages`): string content and OpenAI
    `image_url` parts are rewritten there.
    """
    count, inline = 0, []
    for message in messages:
        for part in message.get("content") or ():
            if part.get("type") == "image":
                count += 1
                source = next((part[k] for k in _IMAGE_KEYS if part.get(k) is not None), None)
                if source is not None:
                    inline.append(source)
    return count, inline


class Processor:
    def __init__(self, config: ModelConfig, image_processor: ImageProcessor, tokenizer: Tokenizer,
                 chat_template: ChatTemplate):
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
                hint="config.json and tokenizer.json come from different models: download the "
                     "model again")
        return cls(config, ImageProcessor(config), tokenizer, ChatTemplate.from_dir(model_dir))

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def _check_grids(self, grids: list[tuple[int, int]], longest_edge: int | None) -> None:
        """The vocabulary has <row_r_col_c> markers up to 6x6: a larger grid would be garbage."""
        for rows, cols in grids:
            if rows and self.tokenizer.token_to_id(row_col_token(rows, cols)) is None:
                edge = longest_edge or self.config.longest_edge
                raise ValueError(f"a longest edge of {edge} px cuts the image into {rows}x{cols} tiles; "
                                 "this model knows positions up to 6x6 "
                                 f"(use a longest edge of at most {6 * self.config.tile_size})")

    def prepare_inputs(self, messages: Sequence[dict], images: Sequence[Any] | None = None,
                       longest_edge: int | None = None, split: bool | None = None,
                       add_generation_prompt: bool = True) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` [1, seq] int64 and, with images, `pixel_values` and
        `pixel_attention_mask` [1, tiles, ...], as transformers' processor returns them."""
        messages = normalize_messages(messages)
        placeholders, inline = images_in_messages(messages)
        images = list(images) if images is not None else inline
        if placeholders != len(images):
            raise ValueError(f"the messages have {placeholders} image placeholder(s) "
                             f"but {len(images)} image(s) were given")
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        inputs: dict[str, np.ndarray] = {}
        if images:
            pixels = self.image_processor.preprocess(images, longest_edge=longest_edge, split=split)
            grids = list(zip(pixels["rows"][0], pixels["cols"][0]))
            self._check_grids(grids, longest_edge)
            text = expand_image_tokens(text, grids, self.config.image_seq_len)
            inputs["pixel_values"] = pixels["pixel_values"]
            inputs["pixel_attention_mask"] = pixels["pixel_attention_mask"]
        ids = np.asarray([self.tokenizer.encode(text)], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), **inputs}
