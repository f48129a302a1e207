"""Hostile and unusual inputs for the robustness tests, all made on the fly and kept tiny.

`make_inputs(folder)` writes every case into `folder` and returns {case name: InputCase}: the
good-but-odd images (1x1, a 20000x50 panorama, CMYK, 16-bit, palette + transparency, animated
GIF, WebP, AVIF, corrupt EXIF, names with spaces, non-ASCII letters or non-UTF-8 bytes) that
must be captioned, and the bad ones (empty, truncated JPEG/PNG, text, directory, unreadable,
broken symlink, a TIFF with an absurd header, decompression bomb, HEIC without a HEIF plugin)
that must fail with an `Error:` naming the file and the reason.

Running the CLI (`run_cli`, `invoke_cli`, `assert_clean_error`) lives in conftest.py.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

# A real 64x48 HEIC (HEVC in a HEIF container, major brand "heic"), 529 bytes, made once with
# pillow-heif's encoder: Pillow itself has no HEIC decoder, so none can be made at test time.
TINY_HEIC = base64.b64decode(
    "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAX1tZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAA"
    "AAAAACJpbG9jAAAAAERAAAEAAQAAAAABoQABAAAAAAAAAHAAAAAjaWluZgAAAAAAAQAAABVpbmZlAgAAAAABAABodmMxAAAA"
    "AA5waXRtAAAAAAABAAAA/WlwcnAAAADdaXBjbwAAAHZodmNDAQNwAAAAkAAAAAAAHvAA/P34+AAADwNgAAEAGEABDAH//wNw"
    "AAADAJAAAAMAAAMAHroCQGEAAQAqQgEBA3AAAAMAkAAAAwAAAwAeoCCBBZbq5Ka5uAhoMCAAAAMDIAAAAwAhYgABAAZEAcFz"
    "wIkAAAATY29scm5jbHgAAQANAAaAAAAAFGlzcGUAAAAAAAAAQAAAAEAAAAAoY2xhcAAAAEAAAAABAAAAMAAAAAEAAAAAAAAA"
    "Av////AAAAACAAAAEHBpeGkAAAAAAwgICAAAABhpcG1hAAAAAAAAAAEAAQWBAgMFhAAAAHhtZGF0AAAAbCgBrxOA9UU941XB"
    "s/sF0d+nYIrAATa5H37rfOZsSIFsIYPw8uPwNdP/knXIXjewbNVdwL6Q5Z0GR316Aw5neEsr/NnVps+5WGiq5xJiOnIw58ne"
    "7ULDjGRiDZQjI4Edv1ci5/0de2kgFE93gA=="
)

UNICODE_NAME = "ph\u00f6to \u00e9t\u00e9 \u5199\u771f \U0001f600.png"  # spaces, accents, CJK, an emoji


@dataclass
class InputCase:
    path: Path
    ok: bool  # must be captioned (True) or fail (False)
    reason: str = ""  # for a bad input: a lower-case phrase the error must contain
    note: str = ""  # what the case is, for the report


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit grayscale PNG of width x height zero pixels: ~110 KB on disk for 900 M pixels
    (the IDAT is the zlib stream of the all-zero scanlines, compressed piece by piece)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 256
    parts = [comp.compress(block) for _ in range(height // 256)]
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _corrupt_exif_jpeg(path: Path) -> Path:
    """A JPEG with an APP1 EXIF block whose IFD claims 3 entries but holds 1."""
    buf = io.BytesIO()
    Image.fromarray(_noise(24, 32, seed=8)).save(buf, "JPEG", quality=85)
    jpeg = buf.getvalue()
    tiff = b"II*\x00" + struct.pack("<IH", 8, 3) + struct.pack("<HHII", 0x0112, 3, 1, 1)
    app1 = b"Exif\x00\x00" + tiff
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])
    return path


def make_good_inputs(folder: Path) -> dict[str, InputCase]:
    """The odd images that must be captioned."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, InputCase] = {}

    def good(name: str, path: Path, note: str) -> None:
        cases[name] = InputCase(path, True, note=note)

    good("tiny_1x1", _save(Image.new("RGB", (1, 1), (200, 30, 30)), folder / "one_pixel.png"), "a 1x1 image")
    good(
        "panorama",
        _save(Image.fromarray(_noise(50, 20000, seed=1)), folder / "panorama.jpg", quality=60),
        "a 20000x50 panorama",
    )
    good(
        "cmyk_jpeg",
        _save(Image.fromarray(_noise(40, 60, 4, seed=2), "CMYK"), folder / "cmyk.jpg", quality=85),
        "a CMYK JPEG",
    )
    wide = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    sixteen = Image.fromarray(wide)
    assert sixteen.mode.startswith("I;16")
    good("png_16bit", _save(sixteen, folder / "sixteen_bit.png"), "a 16-bit grayscale PNG")
    palette = Image.fromarray(_noise(32, 48, seed=3)).quantize(16)
    palette.info["transparency"] = 0
    good(
        "palette_transparent",
        _save(palette, folder / "palette_alpha.png", transparency=0),
        "a palette PNG with a transparent index",
    )
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    good(
        "animated_gif",
        _save(frames[0], folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "a 3-frame animated GIF (the first frame is used)",
    )
    good("webp", _save(Image.fromarray(_noise(30, 40, seed=4)), folder / "photo.webp", quality=80), "a WebP")
    if features.check("avif"):
        good(
            "avif",
            _save(Image.fromarray(_noise(30, 40, seed=5)), folder / "photo.avif", quality=60),
            "an AVIF (Pillow >= 11.2 decodes it natively)",
        )
    good(
        "corrupt_exif",
        _corrupt_exif_jpeg(folder / "corrupt_exif.jpg"),
        "a JPEG whose EXIF block is cut short (Pillow warns, the pixels are fine)",
    )
    good(
        "unicode_name",
        _save(Image.new("RGB", (30, 20), "navy"), folder / UNICODE_NAME),
        "a name with spaces, accents, CJK and an emoji",
    )
    latin1 = Path(os.fsdecode(os.fsencode(folder) + b"/latin-1 caf\xe9.png"))
    good("latin1_name", _save(Image.new("RGB", (30, 20), "gold"), latin1), "a name that is not UTF-8 (Latin-1 bytes)")
    return cases


def make_bad_inputs(folder: Path, *, heic_supported: bool) -> dict[str, InputCase]:
    """The inputs that must fail with a clear error (paths inside `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, InputCase] = {}

    def bad(name: str, path: Path, reason: str, note: str) -> None:
        cases[name] = InputCase(path, False, reason, note)

    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    bad("zero_bytes", empty, "empty", "a zero-byte file")

    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64, seed=6)).save(buf, "JPEG", quality=90)
    cut_jpeg = folder / "truncated.jpg"
    cut_jpeg.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad("truncated_jpeg", cut_jpeg, "truncated", "a JPEG cut in half")

    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64, seed=7)).save(buf, "PNG")
    cut_png = folder / "truncated \u00fcn\u00efcode \u7834\u640d.png"  # a bad file with a non-ASCII name
    cut_png.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad("truncated_png", cut_png, "truncated", "a PNG cut in half (inside its IDAT)")

    text = folder / "notes.jpg"
    text.write_text("this is not a picture\n")
    bad("text_as_jpg", text, "not an image", "a text file named .jpg")

    unreadable = folder / "locked.png"
    Image.new("RGB", (8, 8)).save(unreadable)
    unreadable.chmod(0)
    bad(
        "unreadable",
        unreadable,
        "permission denied",
        "a chmod-000 file (the run drops root's file-permission override)",
    )

    dangling = folder / "dangling.png"
    dangling.symlink_to(folder / "gone" / "nowhere.png")
    bad("broken_symlink", dangling, "broken symbolic link", "a symlink to a missing file")

    buf = io.BytesIO()
    Image.fromarray(_noise(6, 8, seed=9)).save(buf, "TIFF")
    entry = struct.pack("<HHI", 277, 3, 1) + struct.pack("<H", 3)  # SamplesPerPixel = 3
    assert buf.getvalue().count(entry) == 1
    tiff = folder / "scan.tif"
    tiff.write_bytes(buf.getvalue().replace(entry, entry[:8] + struct.pack("<H", 142)))
    bad(
        "tiff_bad_header",
        tiff,
        "not an image",
        "a TIFF claiming 142 samples per pixel (Pillow logs an error before refusing it)",
    )

    bomb = folder / "bomb.png"
    bomb.write_bytes(bomb_png())
    bad("decompression_bomb", bomb, "decompression bomb", "a ~110 KB PNG whose header claims 30000x30000")

    heic = folder / "iphone.heic"
    heic.write_bytes(TINY_HEIC)
    if heic_supported:
        cases["heic"] = InputCase(heic, True, note="a real HEIC (a HEIF plugin is installed)")
    else:
        bad("heic", heic, "heic", "a real HEIC while Pillow has no HEIF plugin")
    return cases


def heic_supported() -> bool:
    """Whether load_image can decode HEIC here (pillow-heif installed)."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def make_directory_case(folder: Path) -> InputCase:
    """A directory given where an image is expected (named like an image, to be nasty)."""
    path = folder / "album.jpg"
    path.mkdir(parents=True, exist_ok=True)
    return InputCase(path, False, "directory", "a directory given as an image")
