"""Property-based tests (hypothesis) of the parts that see arbitrary data.

- Image processor: any size and any Pillow mode is processed without crashing, into tiles that
  agree with the prompt: the prompt's image-token count is tiles x image_seq_len, the tile count
  is what `tile_grid` plans from the header alone, and the pixels are finite and in range.
- Image loading: any bytes (random, or a valid image with bytes flipped) give an RGB image or an
  `ImageError`, never another exception.
- Incremental detokenizer: any id sequence streams to exactly the one-shot decode, and no delta
  carries a replacement character the full text does not have.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import fixture_dir, special_ids
from smolvlm_cli.errors import ImageError
from smolvlm_cli.image_processing import image_size, load_image, num_tiles
from smolvlm_cli.options import Tiling
from smolvlm_cli.processor import Processor
from smolvlm_cli.prompt import build_messages
from smolvlm_cli.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # hypothesis-heavy

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "F",
)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_pretrained(fixture_dir("SmolVLM2-256M-Video-Instruct"))


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        dtype = {"I": np.int32, "F": np.float32}.get(mode, np.uint16)
        top = {"I": 2**31 - 1, "F": 1e6}.get(mode, 65535)
        values = rng.integers(0, top, (height, width)).astype(dtype)
        if mode == "F":
            values[rng.random((height, width)) < 0.05] = np.nan  # NaNs must not poison the tile
        image = Image.fromarray(values) if mode in ("I", "F") else Image.fromarray(values).convert(mode)
        return image
    if mode == "P":
        # fast octree: median cut (the default) took ~1 s on a 2000x2000 example
        image = base.convert("RGB").quantize(int(rng.integers(2, 256)), method=Image.Quantize.FASTOCTREE)
        if seed % 2:
            image.info["transparency"] = int(rng.integers(0, 2))
        return image
    if mode == "PA":
        return base.convert("PA")
    if mode == "La":
        return base.convert("LA").convert("La")
    return base.convert(mode) if mode != "RGBa" else base.convert("RGBa")


@settings(max_examples=40, **SETTINGS)
@given(
    mode=st.sampled_from(MODES),
    width=st.one_of(st.integers(1, 64), st.integers(1, 2000)),
    height=st.one_of(st.integers(1, 64), st.integers(1, 2000)),
    longest_edge=st.sampled_from([None, 512, 768, 1000, 1536]),
    split=st.sampled_from([None, True, False]),
    seed=st.integers(0, 2**16),
)
@example(mode="RGB", width=1, height=1, longest_edge=None, split=None, seed=0)
@example(mode="L", width=20000, height=2, longest_edge=None, split=True, seed=0)
@example(mode="RGB", width=3, height=4000, longest_edge=None, split=True, seed=0)
def test_any_image_tiles_agree_with_the_prompt(processor, mode, width, height, longest_edge, split, seed):
    image = random_image(mode, width, height, seed)
    config = processor.config
    rows, cols = processor.image_processor.tile_grid(width, height, longest_edge, split)
    inputs = processor.prepare_inputs(build_messages("Describe.", 1), [image], Tiling(longest_edge, split))
    pixels, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
    tiles = num_tiles(rows, cols)
    tile = config.tile_size
    assert pixels.shape == (1, tiles, 3, tile, tile) and mask.shape == (1, tiles, tile, tile)
    assert mask.all()  # one image: no padding tiles
    image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    assert image_tokens == tiles * config.image_seq_len
    assert np.isfinite(pixels).all()
    lo = (0 - max(config.image_mean)) / min(config.image_std)
    hi = (1 - min(config.image_mean)) / min(config.image_std)
    assert pixels.min() >= lo - 1e-6 and pixels.max() <= hi + 1e-6
    if split is False or (split is None and not config.do_image_splitting):
        assert (rows, cols) == (0, 0)


# -- loading arbitrary bytes ----------------------------------------------------------------


def _encoded(fmt: str, mode: str, size: tuple[int, int], orientation: int = 1) -> bytes:
    image = random_image(mode, *size, seed=size[0] * 31 + size[1])
    buf = io.BytesIO()
    kwargs = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    if fmt == "GIF":
        frames = [image.convert("P"), image.convert("P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    else:
        image.save(buf, fmt, **kwargs)
    return buf.getvalue()


VALID = {
    "png-rgba": _encoded("PNG", "RGBA", (23, 17)),
    "png-16": _encoded("PNG", "I;16", (9, 13)),
    "png-p": _encoded("PNG", "P", (16, 5)),
    "jpeg-rgb": _encoded("JPEG", "RGB", (33, 21)),
    "jpeg-cmyk": _encoded("JPEG", "CMYK", (12, 12)),
    "jpeg-exif6": _encoded("JPEG", "RGB", (30, 10), orientation=6),
    "gif-anim": _encoded("GIF", "RGB", (10, 10)),
    "webp": _encoded("WEBP", "RGBA", (20, 14)),
    "bmp": _encoded("BMP", "RGB", (7, 9)),
    "tiff": _encoded("TIFF", "RGB", (11, 6)),
}


def _check_load(data: bytes) -> None:
    try:
        image = load_image(data, name="fuzz.bin")
    except ImageError as exc:
        assert "fuzz.bin" in exc.message
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    try:
        assert image_size(data, name="fuzz.bin") == image.size  # the header agrees with the pixels
    except ImageError:
        pass  # a header readable while the pixels were not is fine; the reverse is checked above


@settings(max_examples=150, **SETTINGS)
@given(data=st.binary(max_size=256))
def test_random_bytes_load_or_raise_image_error(data):
    _check_load(data)


@settings(max_examples=250, **SETTINGS)
@given(
    name=st.sampled_from(sorted(VALID)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_corrupted_images_load_or_raise_image_error(name, flips, cut):
    data = bytearray(VALID[name])
    for position, xor in flips:
        data[position % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check_load(bytes(data))


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_samples_load(name):
    image = load_image(VALID[name])
    assert image.mode == "RGB" and image.size == image_size(VALID[name])
    if name == "jpeg-exif6":
        assert image.size == (10, 30)  # rotated by its EXIF orientation


# -- the streaming detokenizer --------------------------------------------------------------


@pytest.fixture(scope="module", params=["SmolVLM2-256M-Video-Instruct", "SmolVLM-256M-Instruct"])
def tokenizer(request) -> Tokenizer:
    return Tokenizer.from_dir(fixture_dir(request.param))


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_ID_STRATEGIES: dict[int, st.SearchStrategy] = {}


def _ids(tokenizer: Tokenizer) -> st.SearchStrategy:
    """Id sequences: any id, low ids (byte-level tokens, which split multibyte characters),
    special ids, and runs of ids of real text (emoji, CJK, accents)."""
    if id(tokenizer) not in _ID_STRATEGIES:
        special = sorted(special_ids(tokenizer))
        text_ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).map(tokenizer.encode)
        single = st.one_of(st.integers(0, tokenizer.vocab_size - 1), st.integers(0, 300), st.sampled_from(special)).map(
            lambda i: [i]
        )
        _ID_STRATEGIES[id(tokenizer)] = st.lists(st.one_of(text_ids, single), max_size=12).map(
            lambda parts: sum(parts, [])
        )
    return _ID_STRATEGIES[id(tokenizer)]


def _stream(tokenizer: Tokenizer, ids: list[int], skip: bool) -> tuple[list[str], str]:
    decoder = tokenizer.stream(skip_special_tokens=skip)
    deltas = [decoder.put(i) for i in ids]
    return deltas, decoder.flush()


@settings(max_examples=300, **SETTINGS)
@given(data=st.data(), skip=st.booleans())
def test_streaming_equals_one_shot_decode(tokenizer, data, skip):
    ids = data.draw(_ids(tokenizer))
    deltas, tail = _stream(tokenizer, ids, skip)
    full = tokenizer.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) + tail == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in d for d in deltas)


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_streaming_segments_and_text_round_trip(tokenizer, data):
    """flush() starts a new segment: segments stream to their own decodes; and encoded text
    (any Unicode) streams back to itself."""
    decoder = tokenizer.stream()
    for _ in range(data.draw(st.integers(1, 3))):
        ids = data.draw(_ids(tokenizer))
        text = "".join(decoder.put(i) for i in ids) + decoder.flush()
        assert text == tokenizer.decode(ids)
    text = data.draw(TEXT)
    ids = tokenizer.encode(text)
    streamed = "".join(decoder.put(i) for i in ids) + decoder.flush()
    assert streamed == tokenizer.decode(ids)
    # Text comes back unchanged, except characters whose UTF-8 bytes this byte-level vocabulary
    # lacks (some C0 controls, lead bytes F1-F3), dropped by the tokenizer itself, as in
    # transformers: those pieces decode to U+FFFD or nothing.
    if "<" not in text and all(0x20 <= ord(c) < 0x40000 for c in text):
        assert streamed == text


@settings(max_examples=100, **SETTINGS)
@given(text=st.text(st.characters(exclude_categories=()), max_size=30))
def test_any_python_string_encodes(tokenizer, text):
    """Prompts may hold lone surrogates (undecodable argv / stdin bytes, kept by Python's
    surrogateescape): they encode (as U+FFFD or the bytes they stand for), never raise."""
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert ids == tokenizer.backend.encode(text).ids  # nothing changes for valid text
