"""The file extensions we treat as images or videos, in one place (light: the CLI reads them for --help)."""

from __future__ import annotations

import os

# What Pillow decodes out of the box: the files `batch` picks from a folder by default.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "avif")
# Names that look like images, some needing a Pillow plugin: `describe` does not take such a last
# argument for the prompt.
IMAGE_NAME_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | {"heic", "heif", "jxl", "ico", "ppm", "pgm", "pbm", "tga"}


# ISO-BMFF `ftyp` brands of still images: HEIC / HEIF (a plugin's) and AVIF (Pillow's own). An
# MP4 or MOV starts with the same box, so telling piped bytes apart reads the brand.
HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
)
AVIF_BRANDS = frozenset({b"avif", b"avis"})


def extension(name: str) -> str:
    """A file name's extension, lower case, without the dot (`""` for `.hidden` or none)."""
    return os.path.splitext(name)[1].lower().lstrip(".")


def looks_like_image(name: str) -> bool:
    """Whether a file name ends in an image extension (any case)."""
    return extension(name) in IMAGE_NAME_EXTENSIONS


# Containers taken as videos (with the `video` extra, PyAV); a GIF stays an image (its first frame).
VIDEO_EXTENSIONS = ("mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "wmv", "flv", "3gp", "ts")
