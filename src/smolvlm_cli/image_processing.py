"""Image loading and SmolVLM tiling with PIL + numpy only (never torch or transformers).

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

import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

MAX_IMAGE_SIDE = 4096  # transformers' absolute cap on a side after the longest-edge resize
_ORIENTATION_TAG = 0x0112
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-global: serialize our use
_HINT_FORMATS = "use a JPEG, PNG, WebP, GIF, BMP or TIFF image"


# -- loading -------------------------------------------------------------------------------

def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open `source` (a path, encoded bytes or a PIL image) as an RGB PIL image.

    Applies the EXIF orientation, keeps the first frame of animations (files and bytes; a PIL
    image is used at its current frame), composites transparency on white exactly like
    transformers' `convert_to_rgb`, and scales 16-bit / 32-bit / float images to 8 bits instead
    of letting Pillow clip them to white. Every failure is an `ImageError` naming the image
    (`name`, else the path, else "<stdin>" for bytes). May return `source` itself when it is
    already an upright RGB image.
    """
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "<image>"
        image = source
        if 0 in image.size:
            raise ImageError(f"image {label} has a zero side ({image.width}x{image.height})")
        _load_pixels(image, label)
        if _orientation(image) not in (None, 1):
            image = _exif_transpose(image, label, in_place=False)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<stdin>"
        image = _decode(bytes(source), label)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        image = _decode(_read_file(path, label), label)
    else:
        raise TypeError(f"cannot load an image from a {type(source).__name__}: "
                        "pass a path, bytes or a PIL image")
    return _to_rgb(image, label)


def _read_file(path: Path, label: str) -> bytes:
    try:
        if path.is_dir():
            raise ImageError(f"cannot read image {label}: it is a directory")
        if path.exists() and not path.is_file() and not path.is_fifo():  # /dev/zero, a socket
            raise ImageError(f"cannot read image {label}: not a regular file")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"cannot read image {label}: it is a broken symbolic link "
                             f"(to {os.readlink(path)}, which does not exist)") from None
        raise ImageError(f"cannot read image {label}: no such file") from None
    except PermissionError:
        raise ImageError(f"cannot read image {label}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {label}: it is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {label}: {exc.strerror or exc}") from None
    return data


def _bomb_error(label: str, size: tuple[int, int] | None = None, data: bytes = b"") -> ImageError:
    if size is None:
        size = _header_size(data)
    what = f" ({size[0]}x{size[1]} = {size[0] * size[1]:,} pixels)" if size else ""
    return ImageError(f"refusing image {label}: too many pixels{what}, a possible decompression bomb",
                      hint=f"the limit is PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}")


def _open(data: bytes, label: str) -> Image.Image:
    """Identify the image and check its size from the header, without decoding pixels."""
    if not data:
        raise ImageError(f"cannot read image {label}: the file is empty (0 bytes)")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb_error(label, data=data) from None
    except UnidentifiedImageError:
        if _is_heif(data):
            return _open_heif(data, label)
        raise ImageError(f"cannot read image {label}: not an image, or an unsupported format",
                         hint=_HINT_FORMATS) from None
    except Exception as exc:  # noqa: BLE001 - plugins raise OSError, SyntaxError, ValueError, ...
        raise ImageError(f"cannot read image {label}: corrupt image header ({_one_line(exc)})") from None
    return _check_size(image, label)


def _check_size(image: Image.Image, label: str) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {label} has a zero side ({width}x{height})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise _bomb_error(label, image.size)
    return image


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, for the decompression-bomb message (None: unknown)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


# ISO-BMFF `ftyp` brands of HEIC / HEIF images (Pillow's own AVIF plugin takes `avif`/`avis`).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
                b"msf1", b"mif2"}


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _open_heif(data: bytes, label: str) -> Image.Image:
    """HEIC / HEIF through the pillow-heif plugin when it is installed, else a clear error."""
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(f"cannot read image {label}: it is a HEIC/HEIF image, which this Pillow "
                         "cannot decode",
                         hint="pip install pillow-heif (smolvlm-cli uses it when installed), or "
                              "convert the image to JPEG or PNG") from None
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pillow_heif.register_heif_opener()
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb_error(label) from None
    except Exception as exc:  # noqa: BLE001 - libheif errors vary
        raise ImageError(f"cannot read image {label}: corrupt HEIC/HEIF image ({_one_line(exc)})") from None
    return _check_size(image, label)


def _load_pixels(image: Image.Image, label: str) -> None:
    """Fully decode the (current) frame so truncation is caught here, not later."""
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated files raise OSError, others vary
        reason = _one_line(exc)
        kind = "truncated image" if "truncated" in reason else "corrupt image data"
        raise ImageError(f"cannot decode image {label}: {kind} ({reason})") from None


def _decode(data: bytes, label: str) -> Image.Image:
    image = _open(data, label)
    _load_pixels(image, label)
    if _orientation(image) not in (None, 1):
        _exif_transpose(image, label, in_place=True)
    return image


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unusable
        return None


def _exif_transpose(image: Image.Image, label: str, *, in_place: bool) -> Image.Image:
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"cannot apply the EXIF orientation of image {label}: {_one_line(exc)}") from None


def _is_high_bit(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    mode = image.mode
    try:
        if _is_high_bit(mode):
            return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
        if mode == "La":  # premultiplied L + alpha: Pillow converts it to LA only
            image = image.convert("LA")
        # transformers' convert_to_rgb: any "A" band (also LAB's!) or a transparency entry.
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image if mode == "RGB" else image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert image {label} (mode {mode}) to RGB: {_one_line(exc)}") from None


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit / 32-bit / float plane to 8 bits by its bit depth, else by its range."""
    values = values.astype(np.float64)
    if mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scale, offset = 255.0 / 65535.0, 0.0
    elif lo >= 0 and hi <= (1.0 if mode == "F" else 255.0):
        scale, offset = (255.0 if mode == "F" else 1.0), 0.0
    elif lo >= 0 and hi <= (255.0 if mode == "F" else 65535.0):
        scale, offset = (1.0 if mode == "F" else 255.0 / 65535.0), 0.0
    else:  # anything else (negative, > 16 bits): stretch the actual range
        scale, offset = (255.0 / (hi - lo) if hi > lo else 0.0), lo
    return np.clip(np.rint((values - offset) * scale), 0, 255).astype(np.uint8)


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


def _plan(width: int, height: int, config: ModelConfig, longest_edge: int | None,
          split: bool | None) -> tuple[tuple[int, int], tuple[int, int] | None, int, int]:
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


def tile_grid(width: int, height: int, config: ModelConfig, longest_edge: int | None = None,
              split: bool | None = None) -> tuple[int, int]:
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

    def tile_grid(self, width: int, height: int, longest_edge: int | None = None,
                  split: bool | None = None) -> tuple[int, int]:
        return tile_grid(width, height, self.config, longest_edge, split)

    def tiles(self, image: ImageSource, longest_edge: int | None = None,
              split: bool | None = None) -> tuple[list[np.ndarray], int, int]:
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
        crops = [pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                 for r in range(rows) for c in range(cols)]
        crops.append(np.asarray(image.resize((tile, tile), self.resample)))
        return crops, rows, cols

    def preprocess(self, images: Any, longest_edge: int | None = None,
                   split: bool | None = None) -> dict[str, Any]:
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
        table = self._table
        for b, prompt_tiles in enumerate(tiles):
            for k, pixels in enumerate(prompt_tiles):
                for ch in range(3):
                    np.take(table[ch], pixels[:, :, ch], out=pixel_values[b, k, ch])
            pixel_values[b, len(prompt_tiles):] = 0.0
            mask[b, :len(prompt_tiles)] = 1
        return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "rows": rows, "cols": cols}

    __call__ = preprocess


def image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) as `load_image` would return it (EXIF orientation applied), read from the
    header only: cheap, for `tile_grid`. Errors as `load_image`, except truncated pixel data."""
    if isinstance(source, Image.Image):
        label, image = name or getattr(source, "filename", "") or "<image>", source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<stdin>"
        image = _open(bytes(source), label)
    elif isinstance(source, (str, os.PathLike)):
        label = name or str(source)
        image = _open(_read_file(Path(source), label), label)
    else:
        raise TypeError(f"cannot read an image size from a {type(source).__name__}")
    width, height = image.size
    if 0 in image.size:
        raise ImageError(f"image {label} has a zero side ({width}x{height})")
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


__all__ = ["ImageProcessor", "ImageSource", "MAX_IMAGE_SIDE", "image_size", "load_image",
           "num_tiles", "tile_grid"]
