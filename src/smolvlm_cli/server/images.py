"""`image_url` (and `video_url`) parts -> PIL images (and video files), within the server's limits.

- `data:image/...;base64,...` (`data:video/...`) URIs: always accepted (the media travels in
  the request);
- `http(s)://` URLs: only with `--allow-remote-images`, capped in bytes and time (the server
  then fetches any address a client names: enable it for trusted clients only);
- `file://` URLs and paths: only with `--allow-local-files ROOT`, and only below ROOT once
  symbolic links are resolved.

Images are decoded through `image_loading.load_image` (EXIF orientation, transparency,
decompression bombs refused from the header). A video is a file for PyAV: a local one is used
where it is, the bytes of any other are written to the request's scratch folder (its frames are
decoded in the model's thread, when the request is admitted). Runs in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from smolvlm_cli.errors import ImageError, ImageTooLargeError
from smolvlm_cli.formats import VIDEO_EXTENSIONS
from smolvlm_cli.server.schema import ApiError, ImageRef
from smolvlm_cli.server.settings import ServerSettings

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.S | re.I)
_VIDEO_MIME_EXTENSIONS = {
    "quicktime": "mov",
    "x-matroska": "mkv",
    "x-msvideo": "avi",
    "mpeg": "mpg",
    "x-ms-wmv": "wmv",
    "x-flv": "flv",
    "3gpp": "3gp",
    "mp2t": "ts",
}

# (extension) -> a new file in the request's scratch folder
Scratch = Callable[[str], Path]


class ScratchFolder:
    """A request's temporary files (videos sent as bytes: PyAV reads files), made on first use."""

    def __init__(self):
        self._dir: str | None = None
        self._count = 0

    def __call__(self, extension: str) -> Path:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="smolvlm-serve-")
        self._count += 1
        return Path(self._dir) / f"video{self._count}.{extension}"

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _limit(ref: ImageRef, settings: ServerSettings) -> int:
    return settings.max_video_bytes if ref.kind == "video" else settings.max_image_bytes


def _too_large(ref: ImageRef, size: int | str, limit: int) -> ApiError:
    return ApiError(
        413,
        f"the {ref.kind} at {ref.param} is {size} bytes; this server takes {ref.kind}s of at most {limit} bytes",
        param=ref.param,
        code=f"{ref.kind}_too_large",
    )


def _data_uri(ref: ImageRef, limit: int) -> tuple[bytes, str]:
    """The bytes of a base64 data URI, and its MIME type."""
    match = _DATA_URI.fullmatch(ref.url)
    if match is None:
        raise ApiError(400, f"malformed data URI at {ref.param}", param=ref.param, code=f"invalid_{ref.kind}_url")
    mime = match["mime"].lower()
    if mime and not mime.startswith(f"{ref.kind}/"):
        raise ApiError(
            400,
            f"the data URI at {ref.param} is {mime!r}, not an {ref.kind}"
            if ref.kind == "image"
            else f"the data URI at {ref.param} is {mime!r}, not a video",
            param=ref.param,
            code=f"invalid_{ref.kind}",
        )
    if ";base64" not in match["params"].lower():
        raise ApiError(
            400, f"the data URI at {ref.param} is not base64-encoded", param=ref.param, code="invalid_base64"
        )
    data = re.sub(r"\s+", "", match["data"])
    if len(data) * 3 // 4 > limit + 3:
        raise _too_large(ref, f"about {len(data) * 3 // 4}", limit)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"the data URI at {ref.param} is not valid base64", param=ref.param, code="invalid_base64"
        ) from None
    if len(raw) > limit:
        raise _too_large(ref, len(raw), limit)
    return raw, mime


def _local_path(ref: ImageRef, settings: ServerSettings) -> Path:
    """The regular file `ref` names below the allowed root, within the size limit."""
    root = settings.local_root
    if root is None:
        raise ApiError(
            403,
            f"local files are not served ({ref.param}); start the server with --allow-local-files ROOT",
            param=ref.param,
            code="local_files_disabled",
        )
    parsed = urlparse(ref.url)
    raw_path = unquote(parsed.path) if parsed.scheme == "file" else ref.url
    root = root.resolve()
    path = (root / Path(raw_path).expanduser()).resolve()  # an absolute path replaces root
    if not path.is_relative_to(root):
        raise ApiError(
            403, f"{ref.param} is outside the folder this server may read", param=ref.param, code="outside_allowed_root"
        )
    if path.exists() and not path.is_file():  # a folder, a FIFO (a read would never end), a device
        raise ApiError(400, f"{ref.param} is not a regular file", param=ref.param, code=f"invalid_{ref.kind}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _unreadable(ref, exc) from None
    if size > _limit(ref, settings):
        raise _too_large(ref, size, _limit(ref, settings))
    return path


def _unreadable(ref: ImageRef, exc: OSError) -> ApiError:
    return ApiError(
        400, f"cannot read the file at {ref.param}: {exc.strerror or exc}", param=ref.param, code=f"invalid_{ref.kind}"
    )


def _local_file(ref: ImageRef, settings: ServerSettings) -> bytes:
    path = _local_path(ref, settings)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_limit(ref, settings) + 1)
    except OSError as exc:
        raise _unreadable(ref, exc) from None
    if len(data) > _limit(ref, settings):  # it grew since
        raise _too_large(ref, f"more than {_limit(ref, settings)}", _limit(ref, settings))
    return data


def _remote(ref: ImageRef, settings: ServerSettings) -> bytes:
    from smolvlm_cli.image_loading import read_url

    if not settings.allow_remote_images:
        raise ApiError(
            403,
            f"remote URLs are not fetched by this server ({ref.param}); send the {ref.kind} "
            "as a data URI, or start the server with --allow-remote-images",
            param=ref.param,
            code="remote_images_disabled",
        )
    limit = _limit(ref, settings)
    try:
        return read_url(ref.url, f"({ref.param})", limit, settings.remote_timeout_s)
    except ImageTooLargeError:
        raise _too_large(ref, f"more than {limit}", limit) from None
    except ImageError as exc:
        raise ApiError(400, exc.message, param=ref.param, code=f"{ref.kind}_download_failed") from None


def _scheme(ref: ImageRef) -> str:
    scheme = ref.url.split(":", 1)[0].lower() if ":" in ref.url[:12] else ""
    if scheme not in ("data", "http", "https", "file", ""):
        raise ApiError(
            400,
            f"unsupported URL scheme {scheme!r} at {ref.param} (data:, http(s): or a local file)",
            param=ref.param,
            code=f"invalid_{ref.kind}_url",
        )
    return scheme


def image_bytes(ref: ImageRef, settings: ServerSettings) -> bytes:
    """The encoded bytes `ref` points to, or an `ApiError`."""
    scheme = _scheme(ref)
    if scheme == "data":
        return _data_uri(ref, _limit(ref, settings))[0]
    if scheme in ("http", "https"):
        return _remote(ref, settings)
    return _local_file(ref, settings)


def _video_file(ref: ImageRef, settings: ServerSettings, scratch: Scratch) -> str:
    """A path PyAV can open: a local file where it is, other videos written to `scratch`."""
    scheme = _scheme(ref)
    if scheme in ("file", ""):
        return str(_local_path(ref, settings))
    if scheme == "data":
        data, mime = _data_uri(ref, settings.max_video_bytes)
        subtype = mime.partition("/")[2]
        extension = subtype if subtype in VIDEO_EXTENSIONS else _VIDEO_MIME_EXTENSIONS.get(subtype, "mp4")
    else:
        data = _remote(ref, settings)
        extension = Path(urlparse(ref.url).path).suffix.lower().lstrip(".")
        extension = extension if extension in VIDEO_EXTENSIONS else "mp4"
    path = scratch(extension)
    path.write_bytes(data)
    return str(path)


def load_media(refs: list[ImageRef], settings: ServerSettings, scratch: Scratch) -> list:
    """Every image (decoded to RGB) and video (a file path) of a request, in order; the first bad
    one raises its `ApiError`."""
    from smolvlm_cli.image_loading import load_image

    media = []
    for ref in refs:
        if ref.kind == "video":
            media.append(_video_file(ref, settings, scratch))
            continue
        data = image_bytes(ref, settings)
        try:
            media.append(load_image(data, name=f"({ref.param})"))
        except ImageError as exc:
            raise ApiError(400, exc.message, param=ref.param, code="invalid_image") from None
    return media
