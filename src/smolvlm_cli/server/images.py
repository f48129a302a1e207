"""`image_url` parts -> RGB PIL images, within the server's limits.

- `data:image/...;base64,...` URIs: always accepted (the image travels in the request);
- `http(s)://` URLs: only with `--allow-remote-images`, capped in bytes and time (the server
  then fetches any address a client names: enable it for trusted clients only);
- `file://` URLs and paths: only with `--allow-local-files ROOT`, and only below ROOT once
  symbolic links are resolved.

Decoding goes through `image_loading.load_image` (EXIF orientation, transparency, decompression
bombs refused from the header). Runs in a worker thread (PIL), never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from smolvlm_cli.errors import ImageError, ImageTooLargeError
from smolvlm_cli.server.schema import ApiError, ImageRef
from smolvlm_cli.server.settings import ServerSettings

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.S | re.I)


def _too_large(ref: ImageRef, size: int | str, limit: int) -> ApiError:
    return ApiError(413, f"the image at {ref.param} is {size} bytes; this server takes images of at "
                         f"most {limit} bytes", param=ref.param, code="image_too_large")


def _data_uri(ref: ImageRef, limit: int) -> bytes:
    match = _DATA_URI.fullmatch(ref.url)
    if match is None:
        raise ApiError(400, f"malformed data URI at {ref.param}", param=ref.param, code="invalid_image_url")
    mime = match["mime"].lower()
    if mime and not mime.startswith("image/"):
        raise ApiError(400, f"the data URI at {ref.param} is {mime!r}, not an image", param=ref.param,
                       code="invalid_image")
    if ";base64" not in match["params"].lower():
        raise ApiError(400, f"the data URI at {ref.param} is not base64-encoded", param=ref.param,
                       code="invalid_base64")
    data = re.sub(r"\s+", "", match["data"])
    if len(data) * 3 // 4 > limit + 3:
        raise _too_large(ref, f"about {len(data) * 3 // 4}", limit)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"the data URI at {ref.param} is not valid base64", param=ref.param,
                       code="invalid_base64") from None
    if len(raw) > limit:
        raise _too_large(ref, len(raw), limit)
    return raw


def _local_file(ref: ImageRef, settings: ServerSettings) -> bytes:
    root = settings.local_root
    if root is None:
        raise ApiError(403, f"local files are not served ({ref.param}); start the server with "
                            "--allow-local-files ROOT", param=ref.param, code="local_files_disabled")
    parsed = urlparse(ref.url)
    raw_path = unquote(parsed.path) if parsed.scheme == "file" else ref.url
    root = root.resolve()
    path = (root / Path(raw_path).expanduser()).resolve()  # an absolute path replaces root
    if not path.is_relative_to(root):
        raise ApiError(403, f"{ref.param} is outside the folder this server may read", param=ref.param,
                       code="outside_allowed_root")
    if path.exists() and not path.is_file():  # a folder, a FIFO (a read would never end), a device
        raise ApiError(400, f"{ref.param} is not a regular file", param=ref.param, code="invalid_image")
    try:
        with open(path, "rb") as fh:
            data = fh.read(settings.max_image_bytes + 1)
    except OSError as exc:
        raise ApiError(400, f"cannot read the file at {ref.param}: {exc.strerror or exc}", param=ref.param,
                       code="invalid_image") from None
    if len(data) > settings.max_image_bytes:
        raise _too_large(ref, f"more than {settings.max_image_bytes}", settings.max_image_bytes)
    return data


def _remote(ref: ImageRef, settings: ServerSettings) -> bytes:
    from smolvlm_cli.image_loading import read_url

    if not settings.allow_remote_images:
        raise ApiError(403, f"remote image URLs are not fetched by this server ({ref.param}); send the "
                            "image as a data URI, or start the server with --allow-remote-images",
                       param=ref.param, code="remote_images_disabled")
    try:
        return read_url(ref.url, f"({ref.param})", settings.max_image_bytes, settings.remote_timeout_s)
    except ImageTooLargeError:
        raise _too_large(ref, f"more than {settings.max_image_bytes}", settings.max_image_bytes) from None
    except ImageError as exc:
        raise ApiError(400, exc.message, param=ref.param, code="image_download_failed") from None


def image_bytes(ref: ImageRef, settings: ServerSettings) -> bytes:
    """The encoded bytes `ref` points to, or an `ApiError`."""
    scheme = ref.url.split(":", 1)[0].lower() if ":" in ref.url[:12] else ""
    if scheme == "data":
        return _data_uri(ref, settings.max_image_bytes)
    if scheme in ("http", "https"):
        return _remote(ref, settings)
    if scheme in ("file", ""):
        return _local_file(ref, settings)
    raise ApiError(400, f"unsupported image URL scheme {scheme!r} at {ref.param} (data:, http(s): or a "
                        "local file)", param=ref.param, code="invalid_image_url")


def load_images(refs: list[ImageRef], settings: ServerSettings) -> list:
    """Every image of a request, decoded to RGB; the first bad one raises its `ApiError`."""
    from smolvlm_cli.image_loading import load_image

    images = []
    for ref in refs:
        data = image_bytes(ref, settings)
        try:
            images.append(load_image(data, name=f"({ref.param})"))
        except ImageError as exc:
            raise ApiError(400, exc.message, param=ref.param, code="invalid_image") from None
    return images
