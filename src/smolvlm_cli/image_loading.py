"""Opening images as RGB PIL images, with one clear `ImageError` for every way a file can be bad.

Paths, http(s) URLs, encoded bytes (stdin) and PIL images are accepted. EXIF orientation is applied, the first
frame of animations kept, transparency composited on white as transformers' `convert_to_rgb`
does, 16-bit / 32-bit / float images scaled to 8 bits, HEIF opened through pillow-heif when it is
installed, and decompression bombs refused before decoding. PIL + numpy only (URLs are fetched
with httpx2, the HTTP client huggingface_hub brings).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from smolvlm_cli.errors import ImageError, ImageTooLargeError
from smolvlm_cli.formats import HEIF_BRANDS

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

_ORIENTATION_TAG = 0x0112
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-global: serialize our use
_HINT_FORMATS = "use a JPEG, PNG, WebP, GIF, BMP or TIFF image"

# Pillow's own bomb limit (89 MP) refuses 108 MP phone photos; 250 MP still refuses true bombs
# (a tiny file claiming 30000x30000), checked from the header before any pixel is decoded.
MAX_PIXELS = 250_000_000
# An image URL is downloaded whole into memory: cap its size and the time it may take.
URL_MAX_BYTES = 100_000_000
URL_TIMEOUT_S = 30.0
_URL_PREFIXES = ("http://", "https://")


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(_URL_PREFIXES)


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open `source` (a path, an http(s) URL, encoded bytes or a PIL image) as an RGB PIL image.

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
    else:
        label, data = _label_and_bytes(source, name, "load an image")
        image = _decode(data, label)
    return _to_rgb(image, label)


def _label_and_bytes(source: ImageSource, name: str | None, what: str) -> tuple[str, bytes]:
    """The name errors give a bytes, path or URL source, and its bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name or "<stdin>", bytes(source)
    if isinstance(source, (str, os.PathLike)):
        label = name or str(source)
        return label, _read_source(source, label)
    raise TypeError(f"cannot {what} from a {type(source).__name__}: pass a path, bytes or a PIL image")


def _read_source(source: str | os.PathLike, label: str) -> bytes:
    return read_url(source, label) if is_url(source) else _read_file(Path(source), label)


def read_url(url: str, label: str | None = None, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    """The body of `url`, refused (`ImageError`) beyond `max_bytes` (default URL_MAX_BYTES) or
    `timeout` seconds (default URL_TIMEOUT_S; in total, not per read)."""
    label = label or url
    max_bytes = URL_MAX_BYTES if max_bytes is None else max_bytes
    timeout = URL_TIMEOUT_S if timeout is None else timeout
    import httpx2 as httpx

    from smolvlm_cli import __version__

    hint = "check the address and the network, or download the image and give the file"
    deadline = time.monotonic() + timeout
    too_big = ImageTooLargeError(
        f"cannot download image {label}: larger than {max_bytes / 1e6:g} MB",
        hint="download it and give the file (or a smaller version)",
    )
    try:
        with httpx.stream(
            "GET", url, follow_redirects=True, timeout=timeout, headers={"User-Agent": f"smolvlm-cli/{__version__}"}
        ) as response:
            if response.status_code >= 400:
                raise ImageError(
                    f"cannot download image {label}: HTTP {response.status_code} {response.reason_phrase}".rstrip(),
                    hint=hint,
                )
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise too_big
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_big
                if time.monotonic() > deadline:
                    raise httpx.TimeoutException("too slow")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise ImageError(f"cannot download image {label}: no complete answer within {timeout:g} s", hint=hint) from None
    except httpx.HTTPError as exc:
        raise ImageError(f"cannot download image {label}: {_one_line(exc)}", hint=hint) from None
    return b"".join(chunks)


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
            raise ImageError(
                f"cannot read image {label}: it is a broken symbolic link "
                f"(to {os.readlink(path)}, which does not exist)"
            ) from None
        raise ImageError(f"cannot read image {label}: no such file") from None
    except PermissionError:
        raise ImageError(f"cannot read image {label}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read image {label}: it is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {label}: {exc.strerror or exc}") from None
    return data


def _bomb_error(label: str, size: tuple[int, int]) -> ImageError:
    return ImageError(
        f"refusing image {label}: too many pixels ({size[0]}x{size[1]} = "
        f"{size[0] * size[1]:,} pixels), a possible decompression bomb",
        hint=f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels: scale the image down",
    )


@contextlib.contextmanager
def _our_pixel_limit():
    """Pillow's bomb check off (ours, MAX_PIXELS, follows from the header); serialized, as
    Pillow's limit and the warning filters are process-global."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _open(data: bytes, label: str) -> Image.Image:
    """Identify the image and check its size from the header, without decoding pixels."""
    if not data:
        raise ImageError(f"cannot read image {label}: the file is empty (0 bytes)")
    try:
        with _our_pixel_limit():
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if _is_heif(data):
            return _open_heif(data, label)
        raise ImageError(
            f"cannot read image {label}: not an image, or an unsupported format", hint=_HINT_FORMATS
        ) from None
    except Exception as exc:  # noqa: BLE001 - plugins raise OSError, SyntaxError, ValueError, ...
        raise ImageError(f"cannot read image {label}: corrupt image header ({_one_line(exc)})") from None
    return _check_size(image, label)


def _check_size(image: Image.Image, label: str) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {label} has a zero side ({width}x{height})")
    if MAX_PIXELS and width * height > MAX_PIXELS:
        raise _bomb_error(label, image.size)
    return image


def _is_heif(data: bytes) -> bool:  # Pillow's own AVIF plugin takes `avif`/`avis`
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def _open_heif(data: bytes, label: str) -> Image.Image:
    """HEIC / HEIF through the pillow-heif plugin when it is installed, else a clear error."""
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(
            f"cannot read image {label}: it is a HEIC/HEIF image, which this Pillow cannot decode",
            hint="pip install pillow-heif (smolvlm-cli uses it when installed), or convert the image to JPEG or PNG",
        ) from None
    try:
        with _our_pixel_limit():
            pillow_heif.register_heif_opener()
            image = Image.open(io.BytesIO(data))
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


def image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) as `load_image` would return it (EXIF orientation applied), read from the
    header only: cheap, for `tile_grid`. Errors as `load_image`, except truncated pixel data."""
    if isinstance(source, Image.Image):
        label, image = name or getattr(source, "filename", "") or "<image>", source
    else:
        label, data = _label_and_bytes(source, name, "read an image size")
        image = _open(data, label)
    width, height = image.size
    if 0 in image.size:
        raise ImageError(f"image {label} has a zero side ({width}x{height})")
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


__all__ = ["ImageSource", "image_size", "load_image", "read_url"]
