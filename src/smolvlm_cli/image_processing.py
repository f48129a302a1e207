"""SmolVLM tiling with PIL + numpy only (never torch or transformers); loading is in image_loading.

`ImageProcessor.preprocess` gives bit-identical `pixel_values` / `pixel_attention_mask` / rows /
cols to transformers' `SmolVLMImageProcessorPil` (and `Idefics3ImageProcessorPil`) with
`return_tensors="np"`:

1. Convert to RGB; anything with an alpha band or a `transparency` entry is composited on white.
2. Resize (config `resample`) so the longest edge is `longest_edge` (small images are upscaled),
   the short edge truncated then rounded up to even; then capped so no side exceeds 4096.
3. Splitting: resize so both sides are multiples of the tile size T; if larger than T, cut
   rows x cols tiles row-major and append the whole image resized to T x T (the global tile).
   Without splitting the step-2 image is resized straight to T x T (rows = cols = 0).
4. Rescale then normalize in float32 (through a 256-entry lookup table computed with the same
   float64 multiply / float32 subtract-divide as the reference), pad every prompt to the batch's
   largest tile count. The mask is int64 like the reference's: 1 on real tiles, 0 on padding.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.image_loading import ImageSource, image_size, load_image

MAX_IMAGE_SIDE = 4096  # transformers' absolute cap on a side after the longest-edge resize


# -- geometry ------------------------------------------------------------------------------


def _longest_edge_size(width: int, height: int, max_len: int) -> tuple[int, int]:
    """Step 2: longest edge to `max_len` (short edge made even), then the 4096 cap. (w, h)."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        height += height % 2
    else:
        height = max_len
        width = int(height * aspect)
        width += width % 2
    width, height = max(width, 1), max(height, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIDE:
        width = MAX_IMAGE_SIDE
        height = int(width / aspect)
    elif height > width and height > MAX_IMAGE_SIDE:
        height = MAX_IMAGE_SIDE
        width = int(height * aspect)
    return max(width, 1), max(height, 1)


def _tile_multiple_size(width: int, height: int, tile: int) -> tuple[int, int]:
    """Step 3: round the long side up to a multiple of the tile, derive the other from the
    aspect ratio (truncated), round it up too. Same float operations as the reference. (w, h)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return width, height


def _plan(
    width: int, height: int, config: ModelConfig, longest_edge: int | None, split: bool | None
) -> tuple[tuple[int, int], tuple[int, int] | None, int, int]:
    """(size after step 2, canvas size when splitting or None, rows, cols) for a w x h image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    max_len = config.longest_edge if longest_edge is None else int(longest_edge)
    if max_len < 1:
        raise ValueError(f"longest_edge must be a positive number of pixels, got {longest_edge}")
    split = config.do_image_splitting if split is None else bool(split)
    tile = config.tile_size
    size = _longest_edge_size(width, height, max_len) if config.do_resize else (width, height)
    if not split:
        return size, None, 0, 0
    canvas = _tile_multiple_size(*size, tile)
    if canvas[0] > tile or canvas[1] > tile:
        return size, canvas, (canvas[1] - tile) // tile + 1, (canvas[0] - tile) // tile + 1
    return size, canvas, 0, 0


def tile_grid(
    width: int, height: int, config: ModelConfig, longest_edge: int | None = None, split: bool | None = None
) -> tuple[int, int]:
    """(rows, cols) of the tile grid for a width x height image, without touching pixels.

    (0, 0) means a single tile (splitting off, or an image no larger than one tile); otherwise
    the image becomes rows * cols tiles plus the global tile. Agrees with `preprocess`.
    """
    _, _, rows, cols = _plan(width, height, config, longest_edge, split)
    return rows, cols


def num_tiles(rows: int, cols: int) -> int:
    """Tiles encoded for a (rows, cols) grid: rows * cols + the global tile, or 1 when unsplit."""
    return rows * cols + 1 if rows * cols else 1


# -- preprocessing -------------------------------------------------------------------------


def _normalize_table(config: ModelConfig) -> np.ndarray:
    """[3, 256] float32: what rescale + normalize turn each uint8 value into, per channel,
    computed exactly as the reference does it (float64 multiply, float32 cast, float32 ops)."""
    values = np.arange(256, dtype=np.uint8)
    if config.do_rescale:
        table = (values.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        table = values.astype(np.float32)
    table = np.broadcast_to(table, (3, 256))
    if config.do_normalize:
        mean = np.array(config.image_mean, dtype=np.float32)
        std = np.array(config.image_std, dtype=np.float32)
        if mean.shape != (3,) or std.shape != (3,):
            raise ValueError("image_mean and image_std must have 3 values")
        table = (table - mean[:, None]) / std[:, None]
    return np.ascontiguousarray(table, dtype=np.float32)


def _as_batch(images: Any) -> list[list[Any]]:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [[images]]
    images = list(images)
    nested = [isinstance(item, (list, tuple)) for item in images]
    if images and all(nested):
        return [list(item) for item in images]
    if any(nested):
        raise ValueError("pass a flat list of images (one prompt) or a list of lists (a batch), not a mix")
    return [images]


class ImageProcessor:
    """SmolVLM image preprocessing with every geometry number read from a `ModelConfig`."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.tile_size = config.tile_size
        self.resample = Image.Resampling(config.resample)
        self._table = _normalize_table(config)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ImageProcessor:
        return cls(ModelConfig.from_dir(model_dir))

    def tile_grid(
        self, width: int, height: int, longest_edge: int | None = None, split: bool | None = None
    ) -> tuple[int, int]:
        return tile_grid(width, height, self.config, longest_edge, split)

    def tiles(
        self, image: ImageSource, longest_edge: int | None = None, split: bool | None = None
    ) -> tuple[list[np.ndarray], int, int]:
        """One image's uint8 HWC tiles (row-major, then the global tile), rows, cols."""
        image = load_image(image)
        size, canvas, rows, cols = _plan(image.width, image.height, self.config, longest_edge, split)
        tile = self.tile_size
        if size != image.size:  # Pillow's same-size resize is a plain copy, so skipping it is exact
            image = image.resize(size, self.resample)
        if canvas is None:  # no splitting: straight to one T x T tile
            return [np.asarray(image.resize((tile, tile), self.resample))], 0, 0
        if canvas != image.size:
            image = image.resize(canvas, self.resample)
        pixels = np.asarray(image)
        if not rows:
            return [pixels], 0, 0
        crops = [pixels[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
        crops.append(np.asarray(image.resize((tile, tile), self.resample)))
        return crops, rows, cols

    def preprocess(self, images: Any, longest_edge: int | None = None, split: bool | None = None) -> dict[str, Any]:
        """Images of one prompt (a flat list) or of a batch of prompts (a list of lists) ->
        `pixel_values` float32 [batch, max_tiles, 3, T, T], `pixel_attention_mask` int64
        [batch, max_tiles, T, T], `rows` and `cols` (lists of lists of ints, per prompt and image).

        `longest_edge` overrides the resize target (`size.longest_edge`), `split=False` turns
        tiling off; None keeps the model's values.
        """
        batch = _as_batch(images)
        tiles: list[list[np.ndarray]] = []
        rows: list[list[int]] = []
        cols: list[list[int]] = []
        for prompt_images in batch:
            prompt_tiles, prompt_rows, prompt_cols = [], [], []
            for source in prompt_images:
                image_tiles, r, c = self.tiles(source, longest_edge, split)
                prompt_tiles.extend(image_tiles)
                prompt_rows.append(r)
                prompt_cols.append(c)
            tiles.append(prompt_tiles)
            rows.append(prompt_rows)
            cols.append(prompt_cols)
        max_tiles = max(len(t) for t in tiles)
        if max_tiles == 0:
            raise ValueError("no images to preprocess")
        tile = self.tile_size
        pixel_values = np.empty((len(batch), max_tiles, 3, tile, tile), dtype=np.float32)
        mask = np.zeros((len(batch), max_tiles, tile, tile), dtype=np.int64)
        for b, prompt_tiles in enumerate(tiles):
            for k, pixels in enumerate(prompt_tiles):
                self.normalize(pixels, out=pixel_values[b, k])
            pixel_values[b, len(prompt_tiles) :] = 0.0
            mask[b, : len(prompt_tiles)] = 1
        return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "rows": rows, "cols": cols}

    __call__ = preprocess

    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One uint8 HWC tile -> float32 CHW, rescaled and normalized (into `out` when given)."""
        if out is None:
            out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for ch in range(3):  # uint8 indices never leave the 256-entry table: "clip" skips the bounds check
            np.take(self._table[ch], pixels[:, :, ch], out=out[ch], mode="clip")
        return out


__all__ = ["ImageProcessor", "ImageSource", "MAX_IMAGE_SIDE", "image_size", "load_image", "num_tiles", "tile_grid"]
