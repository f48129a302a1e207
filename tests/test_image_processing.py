"""smolvlm_cli.image_processing against transformers' PIL image processors, bit for bit.

The reference is `SmolVLMImageProcessorPil` / `Idefics3ImageProcessorPil` (not the torchvision
processor) loaded from each fixture directory and fed `Image.open` + `ImageOps.exif_transpose`
(first frame). Everything is compared with `np.array_equal`, never allclose.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from conftest import MODEL_NAMES, fast_first, fixture_dir
from smolvlm_cli import image_loading
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ImageError
from smolvlm_cli.image_processing import ImageProcessor, image_size, load_image, num_tiles, tile_grid

import transformers.image_processing_backends as tf_backends  # noqa: E402
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil  # noqa: E402
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil  # noqa: E402

DEFAULT_MODEL = MODEL_NAMES[0]


def _preprocessing_file(name: str) -> bytes:
    """What both processors are built from: the reference reads preprocessor_config.json, ours
    its values through ModelConfig (`test_a_shared_preprocessing_file_means_the_same_processors`)."""
    return (fixture_dir(name) / "preprocessor_config.json").read_bytes()


def _distinct_preprocessing(names) -> dict[str, str]:
    """{model: the first model with a byte-identical preprocessor_config.json}."""
    first: dict[bytes, str] = {}
    return {name: first.setdefault(_preprocessing_file(name), name) for name in names}


# The reference comparisons run once per distinct preprocessing file: SmolVLM2-500M's is
# byte-for-byte SmolVLM2-256M's, so its runs repeated the same comparisons on the same inputs.
KEPT_FOR = _distinct_preprocessing(MODEL_NAMES)
PREPROCESSING_MODELS = tuple(dict.fromkeys(KEPT_FOR.values()))


@pytest.fixture(params=fast_first(PREPROCESSING_MODELS))
def model_files(request) -> Path:
    """A fixture model directory, one per distinct preprocessing file (conftest's, narrowed)."""
    return fixture_dir(request.param)


# -- helpers ---------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Deterministic photo-like RGB content: smooth colour fields, shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 48 + 3, width // 48 + 3, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, x1 = sorted(rng.integers(0, width + 1, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height + 1, 2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 6)))
    noise = rng.integers(-10, 11, (height, width, 3), dtype=np.int8)
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def alpha_mask(width: int, height: int, seed: int = 1) -> Image.Image:
    """Gradient alpha with fully transparent and fully opaque regions."""
    grad = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    alpha = Image.fromarray(grad.astype(np.uint8))
    draw = ImageDraw.Draw(alpha)
    draw.rectangle((0, 0, width // 4, height // 3), fill=0)
    draw.ellipse((width // 2, height // 2, width - 1, height - 1), fill=255)
    return alpha


@functools.lru_cache(maxsize=None)
def reference(model_dir: str):
    kind = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())["image_processor_type"]
    cls = Idefics3ImageProcessorPil if kind.startswith("Idefics3") else SmolVLMImageProcessorPil
    return cls.from_pretrained(model_dir)


@functools.lru_cache(maxsize=None)
def ours(model_dir: str) -> ImageProcessor:
    return ImageProcessor.from_dir(model_dir)


def ref_open(path) -> Image.Image:
    """How the reference gets a file: Image.open (first frame) + exif_transpose."""
    return ImageOps.exif_transpose(Image.open(path))


def assert_same(model_dir, images, ref_images=None, longest_edge=None, split=None):
    """Ours on `images` == the reference on `ref_images` (default: the same objects)."""
    model_dir = str(model_dir)
    kwargs = {}
    if longest_edge is not None:
        kwargs["size"] = {"longest_edge": longest_edge}
    if split is not None:
        kwargs["do_image_splitting"] = split
    expected = reference(model_dir)(
        images=images if ref_images is None else ref_images, return_tensors="np", return_row_col_info=True, **kwargs
    )
    processor = ours(model_dir)
    got = processor.preprocess(images, longest_edge=longest_edge, split=split)
    assert got["pixel_values"].dtype == np.float32
    assert got["pixel_attention_mask"].dtype == expected["pixel_attention_mask"].dtype
    assert got["pixel_values"].shape == expected["pixel_values"].shape
    assert got["pixel_attention_mask"].shape == expected["pixel_attention_mask"].shape
    assert np.array_equal(got["pixel_values"], expected["pixel_values"])
    assert np.array_equal(got["pixel_attention_mask"], expected["pixel_attention_mask"])
    assert got["rows"] == [list(r) for r in expected["rows"]]
    assert got["cols"] == [list(c) for c in expected["cols"]]
    # tile_grid (header-only sizes) agrees with the pixels actually produced
    nested = images if images and isinstance(images[0], (list, tuple)) else [images]
    for b, prompt in enumerate(nested):
        grids = [processor.tile_grid(*image_size(src), longest_edge=longest_edge, split=split) for src in prompt]
        assert grids == list(zip(got["rows"][b], got["cols"][b]))
        real_tiles = int(got["pixel_attention_mask"][b].any(axis=(-1, -2)).sum())
        assert real_tiles == sum(num_tiles(r, c) for r, c in grids)
    return got


# -- the zoo ---------------------------------------------------------------------------------

SIZES = [(1, 1), (511, 512), (513, 512), (4000, 300), (300, 4000), (1024, 768), (768, 1024), (640, 640)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_sizes_match_reference(model_files, size):
    assert_same(model_files, [photo(*size, seed=size[0] * 7 + size[1])])


def _modes() -> dict[str, Image.Image]:
    base = photo(360, 270, seed=5)
    alpha = alpha_mask(*base.size)
    rgba = base.copy()
    rgba.putalpha(alpha)
    la = base.convert("L")
    la.putalpha(alpha)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    p_trans = palette.copy()
    p_trans.info["transparency"] = int(np.asarray(palette)[0, 0])
    pa = palette.convert("PA")
    pa.putalpha(alpha)
    l_trans = base.convert("L")
    l_trans.info["transparency"] = int(np.asarray(l_trans)[5, 5])
    return {
        "RGB": base,
        "RGBA": rgba,
        "LA": la,
        "L": base.convert("L"),
        "1": base.convert("1"),
        "P": palette,
        "P-transparency": p_trans,
        "PA": pa,
        "L-transparency": l_trans,
        "CMYK": base.convert("CMYK"),
        "YCbCr": base.convert("YCbCr"),
        "LAB": base.convert("LAB"),
        "HSV": base.convert("HSV"),
        "RGBX": base.convert("RGBX"),
        "RGBa": base.convert("RGBa"),
        # 32-bit int / float holding 8-bit values: same as the reference (no rescaling needed)
        "I-8bit": base.convert("L").convert("I"),
        "F-8bit": base.convert("L").convert("F"),
    }


MODES = _modes()

# The mode and file cases check how each source becomes RGB pixels, which happens before any
# resize: they run at a 1024-px edge (a 2x2 grid + the global tile: 5 tiles where the 2048-px
# default makes 13, a quarter of the pixels). The size, override and batch cases keep 2048 px.
SOURCE_EDGE = 1024


def _every_model_for(core: list[str], extra: list[str]) -> list:
    """The brief's core cases on every distinct preprocessing file, extra ones on the default
    model only (the fixtures differ only in the reference class; this keeps the file fast). The
    fast loop runs the core cases on the default model."""
    cases = [
        pytest.param(
            model, name, id=f"{model}-{name}", marks=() if model == DEFAULT_MODEL else pytest.mark.slow
        )  # see fast_first
        for model in PREPROCESSING_MODELS
        for name in core
    ]
    return cases + [
        pytest.param(DEFAULT_MODEL, name, id=f"{DEFAULT_MODEL}-{name}", marks=pytest.mark.slow) for name in extra
    ]


CORE_MODES = ["RGB", "RGBA", "LA", "L", "1", "P", "P-transparency", "CMYK"]


@pytest.mark.parametrize("model,mode", _every_model_for(CORE_MODES, [m for m in MODES if m not in CORE_MODES]))
def test_modes_match_reference(model, mode):
    image = MODES[mode]
    assert_same(fixture_dir(model), [image], longest_edge=SOURCE_EDGE)
    assert load_image(image).mode == "RGB"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Encoded images on disk, one per format / mode / orientation case."""
    root = tmp_path_factory.mktemp("images")
    base = photo(480, 320, seed=11)
    alpha = alpha_mask(*base.size)
    rgba = base.copy()
    rgba.putalpha(alpha)
    out: dict[str, Path] = {}

    def save(name, image, **kwargs):
        out[name] = root / name
        image.save(out[name], **kwargs)

    for tag in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = tag
        save(f"exif{tag}.jpg", base, quality=90, exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif6.png", base, exif=exif.tobytes())
    frames = [photo(200, 150, seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in (1, 2, 3)]
    save("anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0, transparency=0)
    save("anim.webp", photo(200, 150, seed=4), save_all=True, append_images=[photo(200, 150, seed=5)], duration=100)
    save("alpha.png", rgba)
    save("photo.webp", base, quality=80)
    save("alpha.webp", rgba, lossless=True)
    save("ptrans.png", base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), transparency=3)
    la = base.convert("L")
    la.putalpha(alpha)
    save("la.png", la)
    save("cmyk.jpg", base.convert("CMYK"), quality=90)
    save("cmyk.tif", base.convert("CMYK"))
    save("gray.jpg", base.convert("L"))
    save("bilevel.png", base.convert("1"))
    save("photo.bmp", base)
    save("tall.jpg", photo(300, 1100, seed=12), quality=85)
    return out


CORE_FILES = ["exif3.jpg", "exif6.jpg", "anim.gif", "alpha.png", "photo.webp"]
EXTRA_FILES = [
    "exif8.jpg",
    "exif6.png",
    "anim.webp",
    "alpha.webp",
    "ptrans.png",
    "la.png",
    "cmyk.jpg",
    "cmyk.tif",
    "gray.jpg",
    "bilevel.png",
    "photo.bmp",
    "tall.jpg",
]


@pytest.mark.parametrize("model,name", _every_model_for(CORE_FILES, EXTRA_FILES))
def test_files_match_reference(model, files, name):
    path = files[name]
    assert_same(fixture_dir(model), [path], [ref_open(path)], longest_edge=SOURCE_EDGE)


def test_exif_orientation_and_first_frame(files):
    assert load_image(files["exif6.jpg"]).size == (320, 480)
    assert load_image(files["exif3.jpg"]).size == (480, 320)
    assert image_size(files["exif6.jpg"]) == (320, 480)
    for name in ("exif6.jpg", "exif8.jpg", "exif6.png"):  # the CLI loads, then preprocesses: no double turn
        once = load_image(files[name])
        assert np.array_equal(np.asarray(load_image(once)), np.asarray(once))
        assert image_size(once) == once.size
    upright = load_image(files["exif3.jpg"])
    raw = Image.open(files["exif3.jpg"]).convert("RGB")
    assert np.array_equal(np.asarray(upright), np.asarray(raw.transpose(Image.Transpose.ROTATE_180)))
    gif = Image.open(files["anim.gif"])
    assert gif.n_frames == 3
    first = load_image(files["anim.gif"])
    assert np.array_equal(np.asarray(first), np.asarray(image_loading._to_rgb(Image.open(files["anim.gif"]), "x")))
    gif.seek(1)
    assert not np.array_equal(np.asarray(first), np.asarray(gif.convert("RGB")))


def test_sources_are_equivalent(files):
    path = files["exif6.jpg"]
    expected = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(str(path))), expected)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), expected)
    assert np.array_equal(np.asarray(load_image(Image.open(path))), expected)  # EXIF applied too
    processor = ours(str(fixture_dir(DEFAULT_MODEL)))
    a = processor.preprocess(path)  # a single image, not in a list
    b = processor.preprocess([path.read_bytes()])
    assert np.array_equal(a["pixel_values"], b["pixel_values"]) and a["rows"] == b["rows"]


# -- overrides, batches, geometry ------------------------------------------------------------


@pytest.mark.parametrize(
    "longest_edge", [512, 768, 1000, 1536, 300, pytest.param(5000, marks=pytest.mark.slow)]
)  # 10x10 tiles
def test_longest_edge_override(longest_edge):
    model = fixture_dir(DEFAULT_MODEL)
    for size in [(1024, 768), (4000, 300)]:
        assert_same(model, [photo(*size, seed=3)], longest_edge=longest_edge)


@pytest.mark.parametrize("longest_edge", [None, 1024])
def test_split_off(model_files, longest_edge):
    images = [photo(1024, 768, seed=8), photo(300, 4000, seed=9), photo(1, 1)]
    got = assert_same(model_files, images, split=False, longest_edge=longest_edge)
    assert got["pixel_values"].shape[1] == 3 and got["rows"] == [[0, 0, 0]]


def test_batch_padding(model_files):
    panorama, square = photo(4000, 300, seed=21), photo(640, 640, seed=22)
    got = assert_same(model_files, [[panorama], [square, panorama]])
    assert got["rows"] == [[1], [4, 1]] and got["cols"] == [[4], [4, 4]]
    assert got["pixel_values"].shape[:2] == (2, 22)
    assert not got["pixel_attention_mask"][0, 5:].any() and not got["pixel_values"][0, 5:].any()
    assert got["pixel_attention_mask"][0, :5].all() and got["pixel_attention_mask"][1].all()


def test_several_images_in_one_prompt(model_files):
    images = [photo(1024, 768, seed=31), photo(1, 1, seed=32), photo(300, 4000, seed=33)]
    got = assert_same(model_files, images)
    assert got["pixel_values"].shape[:2] == (1, 13 + 17 + 5)


def test_split_off_batch_mixed_counts():
    model = fixture_dir(DEFAULT_MODEL)
    assert_same(model, [[photo(800, 600, seed=41)], [photo(600, 800, seed=42), photo(5, 9, seed=43)]], split=False)


@pytest.fixture(scope="module")
def model_22b_like(tmp_path_factory) -> Path:
    """A fixture copy with the 2.2B geometry: 384-px tiles, longest edge 1536, 81 tokens."""
    dst = tmp_path_factory.mktemp("smolvlm22b") / "SmolVLM2-2.2B-like"
    shutil.copytree(fixture_dir(DEFAULT_MODEL), dst)
    pre = json.loads((dst / "preprocessor_config.json").read_text())
    pre["max_image_size"] = {"longest_edge": 384}
    pre["size"] = {"longest_edge": 1536}
    (dst / "preprocessor_config.json").write_text(json.dumps(pre))
    cfg = json.loads((dst / "config.json").read_text())
    cfg.setdefault("vision_config", {}).update(image_size=384, patch_size=14)
    cfg["scale_factor"] = 3
    (dst / "config.json").write_text(json.dumps(cfg))
    proc_path = dst / "processor_config.json"
    proc = json.loads(proc_path.read_text()) if proc_path.is_file() else {}
    proc["image_seq_len"] = 81
    proc_path.write_text(json.dumps(proc))
    return dst


def test_22b_geometry_matches_reference(model_22b_like):
    config = ModelConfig.from_dir(model_22b_like)
    assert (config.tile_size, config.longest_edge, config.image_seq_len) == (384, 1536, 81)
    for size in [(1024, 768), (4000, 300), (513, 512), (1, 1)]:
        got = assert_same(model_22b_like, [photo(*size, seed=size[1])])
        assert got["pixel_values"].shape[-2:] == (384, 384)
    assert_same(model_22b_like, [photo(1024, 768, seed=1)], split=False)
    assert_same(model_22b_like, [photo(1024, 768, seed=1)], longest_edge=1000)
    assert tile_grid(1024, 768, config) == (3, 4)


def _fake_np_resize(image, size, **kwargs):
    return np.zeros((image.shape[0], *size), dtype=image.dtype)


def _geometry_sizes() -> list[tuple[int, int]]:
    rng = np.random.default_rng(1234)
    sizes = [
        (1, 1),
        (1, 4096),
        (4096, 1),
        (2, 3),
        (512, 512),
        (2048, 1025),
        (1025, 2048),
        (2049, 1024),
        (1536, 1537),
        (5000, 37),
        (37, 5000),
        (999, 1001),
        (10000, 2),
    ]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(60)]
    return sizes


@pytest.mark.parametrize("longest_edge,split", [(None, None), (1000, None), (6000, None), (700, False)])
def test_tile_grid_matches_reference_geometry(monkeypatch, model_22b_like, longest_edge, split):
    """Reference rows/cols for many sizes, with its pixel resampling stubbed out (geometry only)."""
    monkeypatch.setattr(tf_backends, "np_resize", _fake_np_resize)
    for model_dir in (fixture_dir(DEFAULT_MODEL), model_22b_like):
        ref, config = reference(str(model_dir)), ModelConfig.from_dir(model_dir)
        kwargs = {"do_rescale": False, "do_normalize": False, "do_pad": False, "input_data_format": "channels_last"}
        if longest_edge is not None:
            kwargs["size"] = {"longest_edge": longest_edge}
        if split is not None:
            kwargs["do_image_splitting"] = split
        for width, height in _geometry_sizes():
            out = ref(images=[np.zeros((height, width, 3), np.uint8)], return_row_col_info=True, **kwargs)
            expected = (out["rows"][0][0], out["cols"][0][0])
            assert tile_grid(width, height, config, longest_edge, split) == expected, (width, height)
            assert len(out["pixel_values"][0]) == num_tiles(*expected)


PREPROCESSING_FIELDS = (
    "tile_size",
    "longest_edge",
    "do_image_splitting",
    "do_convert_rgb",
    "do_resize",
    "do_rescale",
    "do_normalize",
    "do_pad",
    "resample",
    "rescale_factor",
    "image_mean",
    "image_std",
)


def test_a_shared_preprocessing_file_means_the_same_processors():
    """Why a model with another's preprocessor_config.json is left out of the comparisons: both
    processors built from it equal those of the model kept, whatever its other files say."""
    left_out = {name: kept for name, kept in KEPT_FOR.items() if name != kept}
    for name, kept in left_out.items():
        mine, theirs = ModelConfig.from_dir(fixture_dir(name)), ModelConfig.from_dir(fixture_dir(kept))
        assert [getattr(mine, f) for f in PREPROCESSING_FIELDS] == [getattr(theirs, f) for f in PREPROCESSING_FIELDS]
        ref, ref_kept = reference(str(fixture_dir(name))), reference(str(fixture_dir(kept)))
        assert type(ref) is type(ref_kept) and ref.to_dict() == ref_kept.to_dict()


def test_tile_grid_known_values():
    config = ModelConfig.from_dir(fixture_dir(DEFAULT_MODEL))
    assert tile_grid(1024, 768, config) == (3, 4)
    assert tile_grid(768, 1024, config) == (4, 3)
    assert tile_grid(640, 640, config) == (4, 4)
    assert tile_grid(1024, 768, config, split=False) == (0, 0)
    assert tile_grid(1024, 768, config, longest_edge=512) == (0, 0)
    assert num_tiles(3, 4) == 13 and num_tiles(0, 0) == 1
    with pytest.raises(ValueError):
        tile_grid(0, 10, config)
    with pytest.raises(ValueError):
        tile_grid(10, 10, config, longest_edge=0)


# -- 16-bit / float: scaled, not clipped (deliberately unlike the reference) -------------------


def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)


@pytest.mark.parametrize("via", ["memory", "png", "tiff"])
def test_16bit_is_scaled_not_clipped(tmp_path, via):
    values = _gradient16()
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9  # what plain Pillow does
    if via != "memory":
        path = tmp_path / f"g16.{via}"
        image.save(path)
        image = path
    rgb = np.asarray(load_image(image))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 256, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()


def test_32bit_and_float_are_scaled():
    row = np.linspace(0, 65535, 200)[None, :].repeat(3, axis=0)
    as_int = np.asarray(load_image(Image.fromarray(row.round().astype(np.int32))))[..., 0]
    assert as_int.min() == 0 and as_int.max() == 255 and (np.diff(as_int[0].astype(int)) >= 0).all()
    unit = np.asarray(load_image(Image.fromarray((row / 65535).astype(np.float32))))[..., 0]
    assert np.array_equal(unit, np.rint((row / 65535).astype(np.float32) * 255.0).astype(np.uint8))
    signed = np.asarray(load_image(Image.fromarray((row / 6553.5 - 5).astype(np.float32))))[..., 0]
    assert signed.min() == 0 and signed.max() == 255 and (np.diff(signed[0].astype(int)) >= 0).all()
    nan = np.asarray(load_image(Image.fromarray(np.full((2, 2), np.nan, np.float32))))
    assert nan.shape == (2, 2, 3)
    # and the scaled image goes through the processor like any other
    got = ours(str(fixture_dir(DEFAULT_MODEL))).preprocess([Image.fromarray(_gradient16())], split=False)
    assert got["pixel_values"].min() == -1.0 and got["pixel_values"].max() == 1.0


# -- errors ----------------------------------------------------------------------------------


def _error(source, name=None) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, name=name)
    err = info.value
    assert "\n" not in err.message
    return err


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    err = _error(path)
    assert str(path) in err.message and "no such file" in err.message
    with pytest.raises(ImageError, match="nope.jpg"):
        ours(str(fixture_dir(DEFAULT_MODEL))).preprocess([photo(20, 20), str(path)])


def test_directory(tmp_path):
    err = _error(tmp_path)
    assert str(tmp_path) in err.message and "directory" in err.message


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    photo(8, 8).save(path)
    if os.geteuid() == 0:  # root reads anything: simulate the OS refusing

        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(file))

        monkeypatch.setattr(image_loading, "open", refuse, raising=False)
    else:
        path.chmod(0)
    err = _error(path)
    assert str(path) in err.message and "permission denied" in err.message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = _error(path)
    assert str(path) in err.message and "0 bytes" in err.message
    assert "<stdin>" in _error(b"").message


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am text\n")
    err = _error(path)
    assert str(path) in err.message and "not an image" in err.message
    zero_width_gif = b"GIF89a\x00\x00\x04\x00\x00\x00\x00;"  # Pillow refuses to identify it
    assert "upload.gif" in _error(zero_width_gif, name="upload.gif").message
    assert "<stdin>" in _error(b"junk bytes").message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    photo(300, 200, seed=2).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    err = _error(path)
    assert str(path) in err.message
    if fmt != "WEBP":  # libwebp refuses a cut file at open time ("corrupt image header")
        assert "truncated" in err.message


def test_decompression_bomb(tmp_path, monkeypatch):
    import smolvlm_cli.image_loading as image_loading

    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(image_loading, "MAX_PIXELS", 6000)  # our limit, not Pillow's
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's would raise: ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        err = _error(path)
    assert str(path) in err.message and "decompression bomb" in err.message
    monkeypatch.setattr(image_loading, "MAX_PIXELS", 10000)  # exactly at the limit is fine
    assert load_image(path).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's global setting is left as it was


def test_zero_side():
    err = _error(Image.new("RGB", (0, 5)), name="blank.png")
    assert "blank.png" in err.message and "zero side" in err.message


def test_bad_source_type():
    with pytest.raises(TypeError):
        load_image(12345)


# -- import hygiene --------------------------------------------------------------------------


@pytest.mark.slow
def test_import_does_not_pull_torch_or_transformers():
    code = (
        "import sys, smolvlm_cli.image_processing; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
