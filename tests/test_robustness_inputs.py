"""Bad and odd inputs through the real `smolvlm` command: `describe` (and `batch`, in
test_robustness_batch.py) as subprocesses on a tiny exported model.

Every bad input must give exit 1, one `Error: ...` line naming the file and the reason, no
traceback, nothing on stdout. Every odd-but-valid image (1x1, a 20000x50 panorama, CMYK,
16-bit, palette + transparency, animated GIF, WebP, AVIF, corrupt EXIF, a non-ASCII name) must be captioned.
The runs drop root's file-permission override, so a chmod-000 file is really unreadable here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bad_files import InputCase, bomb_png, heic_supported, make_bad_inputs, make_directory_case, make_good_inputs
from conftest import assert_clean_error, permissions_enforced, run_cli, stderr_of, stdout_of
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.image_processing import num_tiles, tile_grid

pytestmark = pytest.mark.slow  # real CLI subprocesses: exit codes and error lines per bad input

NAME = "SmolVLM2-256M-Video-Instruct"
BAD_CASES = (
    "zero_bytes",
    "truncated_jpeg",
    "truncated_png",
    "text_as_jpg",
    "unreadable",
    "broken_symlink",
    "decompression_bomb",
    "heic",
    "directory",
    "tiff_bad_header",
)


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, InputCase]:
    root = tmp_path_factory.mktemp("robust-inputs")
    cases = {**make_good_inputs(root / "good"), **make_bad_inputs(root / "bad", heic_supported=heic_supported())}
    cases["directory"] = make_directory_case(root / "bad")
    return cases


@pytest.mark.parametrize("case", BAD_CASES)
def test_describe_bad_input_is_one_clear_error(model_dir, inputs, case):
    item = inputs[case]
    if case == "unreadable" and not permissions_enforced():
        pytest.skip("root without CAP_SETPCAP: a chmod-000 file cannot be made unreadable here")
    if item.ok:  # only HEIC, and only where pillow-heif is installed: then it must work
        result = run_cli("describe", item.path, "-m", model_dir, "-n", "2", "--no-split")
        assert result.returncode == 0, stderr_of(result)
        return
    result = run_cli("describe", item.path, "-m", model_dir, "-n", "2")
    line = assert_clean_error(result, names=[item.path], reason=item.reason)
    # nothing else on stderr: no Pillow warning or log line, just the error and its hint
    assert all(l.startswith(("Error: ", "Hint: ")) for l in stderr_of(result).splitlines())
    if case == "decompression_bomb":  # refused from the header: the size is named, no decoding
        assert "30000x30000" in line
    if case == "heic":
        assert "Hint: pip install pillow-heif" in stderr_of(result)


def test_describe_a_missing_file_and_a_device(model_dir, tmp_path):
    missing = tmp_path / "no such photo.jpg"
    assert_clean_error(run_cli("describe", missing, "-m", model_dir), names=[missing], reason="no such file")
    # /dev/zero would otherwise be read until memory runs out.
    assert_clean_error(
        run_cli("describe", "/dev/zero", "-m", model_dir, timeout=60), names=["/dev/zero"], reason="not a regular file"
    )


def test_describe_reads_a_fifo(model_dir, inputs, tmp_path):
    """Devices are refused, but a FIFO (bash's `<(curl ...)`) is read like a file."""
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    data = inputs["palette_transparent"].path.read_bytes()

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result = run_cli("describe", fifo, "-m", model_dir, "-n", "2", "--no-split")
    writer.join(timeout=10)
    assert result.returncode == 0, stderr_of(result)


def test_describe_every_odd_image_in_one_prompt(model_dir, inputs):
    """All the odd-but-valid images in one `describe` (one prompt, one tile each)."""
    good = [c.path for c in inputs.values() if c.ok]
    assert len(good) >= 9
    result = run_cli("describe", *good, "Describe.", "-m", model_dir, "-n", "3", "--no-split", "--json")
    assert result.returncode == 0, stderr_of(result)
    assert stderr_of(result) == ""  # not even Pillow's "Corrupt EXIF data" warning
    data = json.loads(stdout_of(result))
    assert data["images"] == [str(p) for p in good]  # the non-ASCII name comes back intact
    assert data["image_tiles"] == len(good) and data["generated_tokens"] == 3


def test_describe_extreme_geometries_split_into_the_planned_tiles(model_dir, inputs):
    """The 1x1 image (upscaled to the tiny model's 1024 px: 2x2 tiles + global) and the
    20000x50 panorama (1024x3: one row of 2 tiles + global) with splitting on."""
    config = ModelConfig.from_dir(model_dir)
    expected = num_tiles(*tile_grid(1, 1, config)) + num_tiles(*tile_grid(20000, 50, config))
    assert expected == 5 + 3
    result = run_cli("describe", inputs["tiny_1x1"].path, inputs["panorama"].path, "-m", model_dir, "-n", "2", "--json")
    assert result.returncode == 0, stderr_of(result)
    data = json.loads(stdout_of(result))
    assert data["image_tiles"] == expected and data["image_tokens"] == expected * 64


def test_describe_stops_at_the_first_bad_image_before_loading_the_model(model_dir, inputs):
    """A good image then a bad one: the bad one is named, nothing is generated."""
    result = run_cli("describe", inputs["webp"].path, inputs["truncated_jpeg"].path, "Compare.", "-m", model_dir)
    assert_clean_error(result, names=[inputs["truncated_jpeg"].path], reason="truncated")


def test_describe_name_that_is_not_utf8(model_dir, inputs, tmp_path):
    """A Latin-1 file name (bytes Python can only hold as lone surrogates): captioned, and the
    --json line is valid JSON that gives the same name back (not a UnicodeEncodeError)."""
    raw = os.fsencode(tmp_path) + b"/caf\xe9 photo.webp"
    shutil.copyfile(inputs["webp"].path, raw)
    result = run_cli("describe", raw, "-m", model_dir, "-n", "2", "--no-split", "--json")
    assert result.returncode == 0, stderr_of(result)
    data = json.loads(result.stdout.decode("utf-8"))  # strict: the output is valid UTF-8
    assert os.fsencode(data["images"][0]) == raw
    broken = os.fsencode(tmp_path) + b"/bad\xff.jpg"
    Path(os.fsdecode(broken)).write_bytes(b"")
    line = assert_clean_error(run_cli("describe", broken, "-m", model_dir), reason="empty")
    assert "bad\\udcff.jpg" in line  # readable, escaped, never a crash on printing


def test_describe_prompt_with_invalid_utf8(model_dir, inputs):
    """Undecodable bytes in the prompt (argv or piped) become U+FFFD, as any UTF-8 decoder
    would do, instead of failing in the tokenizer."""
    image = inputs["webp"].path
    argv = run_cli("describe", image, b"Is it \xff?", "-m", model_dir, "-n", "3", "--no-split")
    piped = run_cli("describe", image, "-p", "-", "-m", model_dir, "-n", "3", "--no-split", input=b"Is it \xff?\n")
    clean = run_cli("describe", image, "Is it \ufffd?", "-m", model_dir, "-n", "3", "--no-split")
    for result in (argv, piped, clean):
        assert result.returncode == 0, stderr_of(result)
    assert argv.stdout == piped.stdout == clean.stdout


# -- stdin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "no image data"),
        (b"certainly not an image\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n", "not an image"),  # a PNG signature and nothing else
        (bomb_png(), "decompression bomb"),
    ],
    ids=["empty", "text", "png-signature-only", "bomb"],
)
def test_describe_stdin_that_is_not_an_image(model_dir, data, reason):
    result = run_cli("describe", "-", "-m", model_dir, input=data)
    assert_clean_error(result, names=["<stdin>"], reason=reason)


def test_describe_image_on_stdin_works(model_dir, inputs):
    data = inputs["cmyk_jpeg"].path.read_bytes()
    result = run_cli("describe", "-", "-m", model_dir, "-n", "2", "--no-split", "--json", input=data)
    assert result.returncode == 0, stderr_of(result)
    assert json.loads(stdout_of(result))["images"] == ["<stdin>"]


# -- batch: every bad and odd file in one folder --------------------------------------------

EXTENSIONS = "jpg,png,gif,webp,avif,heic,tif"


@pytest.fixture(scope="module")
def mixed_folder(inputs, tmp_path_factory) -> Path:
    """One folder holding every case (the directory `album.jpg` included): links to the files,
    except the special ones, which are made again in place."""
    folder = tmp_path_factory.mktemp("robust-batch") / "mixed"
    folder.mkdir()
    for case in inputs.values():
        target = folder / case.path.name
        if case.path.is_symlink():  # the broken symlink: a new broken one
            target.symlink_to(os.readlink(case.path))
        elif case.path.is_dir():
            target.mkdir()
        else:
            shutil.copyfile(case.path, target) if os.access(case.path, os.R_OK) else None
            if not target.exists():
                target.write_bytes(b"")
            target.chmod(case.path.stat().st_mode & 0o777)
    return folder


def test_batch_folder_of_every_bad_and_odd_file(model_dir, inputs, mixed_folder, tmp_path):
    """Exit 1; every good image captioned; every bad file named with its reason on stderr and
    in its JSONL record's `error`; no traceback; the directory named like an image is walked
    (it is empty), not reported."""
    out = tmp_path / "captions.jsonl"
    result = run_cli("batch", mixed_folder, "-o", out, "-m", model_dir, "--ext", EXTENSIONS, "--no-split", "-n", "2")
    err = stderr_of(result)
    assert result.returncode == 1, err
    assert "Traceback" not in err
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    files = {name: case for name, case in inputs.items() if name != "directory"}
    if not permissions_enforced():  # root without CAP_SETPCAP: the chmod-000 file is readable
        files["unreadable"] = InputCase(files["unreadable"].path, True)
    assert set(records) == {case.path.name for case in files.values()}
    for name, case in files.items():
        record = records[case.path.name]
        if case.ok:
            assert record["error"] is None and record["caption"], (name, record)
        else:
            assert record["caption"] is None, (name, record)
            assert case.path.name in record["error"] and case.reason in record["error"].lower(), (name, record)
            lines = [l for l in err.splitlines() if case.path.name in l and case.reason in l.lower()]
            assert lines, f"{name}: no stderr line naming {case.path.name} and {case.reason!r}:\n{err}"
    good = sum(case.ok for case in files.values())
    assert f"{good} done, 0 skipped, {len(files) - good} failed" in err


def test_batch_path_list_on_stdin_that_is_empty_or_garbage(model_dir, inputs, tmp_path):
    """`batch -` reads paths, not image bytes: empty stdin is 'no images found'; a missing path
    and junk among real ones: the real ones captioned, the missing one reported; a path that is
    not UTF-8 (as `find` prints it) is read like any other."""
    empty = run_cli("batch", "-", "-m", model_dir, input=b"")
    assert_clean_error(empty, reason="no images found in -")
    missing = tmp_path / "gone.jpg"
    listing = b"junk without an extension\n" + os.fsencode(missing) + b"\n" + os.fsencode(inputs["webp"].path) + b"\n"
    result = run_cli("batch", "-", "-o", "-", "-m", model_dir, "--no-split", "-n", "2", input=listing)
    err = stderr_of(result)
    assert result.returncode == 1 and "Traceback" not in err, err
    records = {r["path"]: r for r in map(json.loads, stdout_of(result).splitlines())}
    assert set(records) == {str(missing), str(inputs["webp"].path)}, (stdout_of(result), err)
    assert "no such file" in records[str(missing)]["error"] and records[str(inputs["webp"].path)]["caption"]
    assert any(str(missing) in l and "no such file" in l for l in err.splitlines())

    latin1 = inputs["latin1_name"].path
    result = run_cli(
        "batch", "-", "-o", "-", "-m", model_dir, "--no-split", "-n", "2", input=os.fsencode(latin1) + b"\n"
    )
    assert result.returncode == 0, stderr_of(result)
    assert [json.loads(l)["path"] for l in stdout_of(result).splitlines()] == [str(latin1)]
