"""Videos end to end on the tiny checkpoint: ONNX greedy tokens equal transformers' generate,
the library and every command (describe, ask, chat, batch, inspect), and each kind of bad file.

transformers 5.24 is the reference model: its `generate` on the inputs our processor makes
(input_ids equal to its processor's, test_video_parity.py; pixels within its stated tolerance).
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import assert_clean_error, invoke_cli, stderr_of, stdout_of
from video_clips import make_audio_only, make_clip

pytest.importorskip("av")

NAME = "SmolVLM2-256M-Video-Instruct"
STEPS = 12


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("e2e") / "clip.mp4", seconds=3, fps=25, size=(48, 32))


@pytest.fixture(scope="module")
def vlm(model_dir):
    from smolvlm_cli import SmolVLM

    return SmolVLM.from_pretrained(model_dir, backend="onnx", dtype="fp32")


@pytest.mark.slow  # ~7 s: loads transformers' model and runs its vision tower on 3 frames
def test_onnx_greedy_tokens_equal_transformers_generate(model_dir, vlm, clip):
    import torch
    from transformers import AutoModelForImageTextToText

    from smolvlm_cli.options import GenerationOptions

    messages = [
        {"role": "user", "content": [{"type": "video", "path": str(clip)}, {"type": "text", "text": "What happens?"}]}
    ]
    inputs = vlm.processor.prepare_inputs(messages)
    assert inputs["pixel_values"].shape[:2] == (1, 3)
    reference = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = reference.generate(
            **{k: torch.from_numpy(v) for k, v in inputs.items()},
            max_new_tokens=STEPS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    expected = out[0, inputs["input_ids"].shape[1] :].tolist()
    stream = vlm.stream(messages=messages, options=GenerationOptions(max_new_tokens=STEPS, ignore_eos=True))
    stream.text()
    assert stream.token_ids == expected
    assert stream.stats.video_frames == 3 and stream.stats.image_tokens == 3 * 64


def test_library_video_paths_images_and_video_cache(vlm, clip):
    text = vlm.generate(str(clip), "What happens?", max_new_tokens=4)
    assert isinstance(text, str)
    image = Image.fromarray(np.full((40, 60, 3), 120, np.uint8))
    stream = vlm.stream([image, str(clip)], "Same?", max_new_tokens=2, tiling="low")
    stream.text()
    assert stream.stats.image_tiles == 1 + 3 and stream.stats.video_frames == 3
    chat = vlm.chat(max_new_tokens=2)
    first = chat.send("What is this?", [str(clip)])
    first.text()
    second = chat.send("And then?")
    second.text()
    assert chat.images.vision_calls == 1 and second.stats.video_frames == 0  # encoded once
    assert '"type": "video"' in chat.to_json()


def test_a_video_said_to_be_one_is_one_whatever_its_name(vlm, clip, tmp_path):
    """`videos=` and `{"type": "video"}` parts are videos even without a video extension (they
    were opened as images); unknown video options are named, not a raw TypeError."""
    import shutil

    unnamed = shutil.copy(clip, tmp_path / "clip-without-extension")
    expected = vlm.generate(str(clip), "What happens?", max_new_tokens=4)
    assert vlm.generate(videos=[unnamed], prompt="What happens?", max_new_tokens=4) == expected
    assert vlm.generate(videos=str(unnamed), prompt="What happens?", max_new_tokens=4) == expected  # one, not letters
    messages = [
        {"role": "user", "content": [{"type": "video", "path": unnamed}, {"type": "text", "text": "What happens?"}]}
    ]
    assert vlm.generate(messages=messages, max_new_tokens=4) == expected
    with pytest.raises(ValueError, match="unknown video option.*frames"):
        vlm.generate(str(clip), "What happens?", video_options={"frames": 3})
    with pytest.raises(TypeError, match="prepare"):
        vlm.generate_batch([str(clip)])
    with pytest.raises(TypeError, match="images are paths"):
        vlm.generate(None, "What happens?")
    with pytest.raises(TypeError, match="a video is a file path"):
        vlm.generate(videos=[clip.read_bytes()], prompt="What happens?")


def test_still_frames_are_encoded_once(vlm, tmp_path):
    """A clip whose sampled frames are identical: one vision call for all of them."""
    import av

    path = tmp_path / "still.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 90, np.uint8))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    calls = []
    encode = vlm.backend.encode_images
    vlm.backend.encode_images = lambda *a: calls.append(1) or encode(*a)
    try:
        vlm.generate(str(path), max_new_tokens=1)
    finally:
        del vlm.backend.encode_images
    assert len(calls) == 1


def test_describe_json_has_frames_timestamps_and_timings(model_dir, clip):
    result = invoke_cli(
        "describe", clip, "What happens?", "-m", model_dir, "-n", "4", "--json", "--max-frames", "2", "--start", "0.5"
    )
    assert result.returncode == 0, stderr_of(result)
    record = json.loads(stdout_of(result))
    video = record["videos"][0]
    assert video["frames"] == [13, 74] and video["timestamps"] == [0.0, 2.44]
    assert video["duration"] == "0:00:02" and video["start"] == 0.5
    assert record["video_frames"] == 2 and record["image_tiles"] == 2
    assert {"preprocess_s", "vision_s", "prefill_s", "ttft_s"} <= set(record["timings"])


@pytest.mark.parametrize(
    "name,codec", [("c.mkv", "libx264"), ("c.webm", "libvpx-vp9"), ("c.avi", "mpeg4"), ("c.mov", "libx264"),
                   ("c.ts", "mpeg2video"), ("c.mpg", "mpeg2video"), ("c.flv", "flv")]
)  # fmt: skip
def test_a_container_is_told_by_its_first_bytes(tmp_path, name, codec):
    from smolvlm_cli.video import video_extension_of

    path = make_clip(tmp_path / name, seconds=0.5, fps=10, codec=codec)
    assert video_extension_of(path.read_bytes()) == path.suffix[1:]
    still = Image.new("RGB", (8, 8))
    for fmt in ("JPEG", "PNG", "GIF", "WEBP"):
        buffer = io.BytesIO()
        still.save(buffer, fmt)
        assert video_extension_of(buffer.getvalue()) is None
    assert video_extension_of(b"\0\0\0\x18ftypheic" + bytes(16)) is None  # an iPhone photo's box


def test_a_video_piped_to_describe_is_the_same_as_its_file(model_dir, clip, tmp_path, monkeypatch):
    """`describe -` tells a video from an image by its bytes: the same answer as the file,
    "<stdin>" where a path would be named, and the spooled copy gone afterwards."""
    import atexit
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the spooled copy goes
    at_exit = []  # what the end of the process would run
    monkeypatch.setattr(atexit, "register", lambda func, *args: at_exit.append((func, args)))
    args = ["What happens?", "-m", model_dir, "-n", "4", "--json", "--max-frames", "2"]
    from_file = invoke_cli("describe", clip, *args)
    piped = invoke_cli("describe", "-", *args, input=clip.read_bytes())
    assert piped.returncode == from_file.returncode == 0, stderr_of(piped)
    got, want = json.loads(stdout_of(piped)), json.loads(stdout_of(from_file))
    assert got["text"] == want["text"] and got["videos"][0]["path"] == "<stdin>"
    assert got["videos"][0]["frames"] == want["videos"][0]["frames"]
    cut = invoke_cli("describe", "-", "-m", model_dir, input=clip.read_bytes()[:3000])
    assert_clean_error(cut, names=["<stdin>"], reason="not a video")
    assert len(at_exit) == 2 and len(list(tmp_path.iterdir())) == 2
    for func, args in at_exit:
        func(*args)
    assert list(tmp_path.iterdir()) == []


def test_ask_encodes_the_video_once(model_dir, clip):
    result = invoke_cli("ask", clip, "-q", "What?", "-q", "Why?", "-m", model_dir, "-n", "2", "--json")
    assert result.returncode == 0, stderr_of(result)
    first, second = (json.loads(line) for line in stdout_of(result).splitlines())
    assert first["video_frames"] == 3 and "video_frames" not in second


def test_chat_takes_a_video_command(model_dir, clip):
    result = invoke_cli("chat", "-m", model_dir, "-n", "3", input=f"/video {clip}\nWhat is it?\nAnd then?\n")
    assert result.returncode == 0, stderr_of(result)
    assert len(stdout_of(result).splitlines()) == 2
    assert "added to your next message" in stderr_of(result)


def test_inspect_a_video(model_dir, clip):
    result = invoke_cli("inspect", clip, "-m", model_dir, "--json")
    assert result.returncode == 0, stderr_of(result)
    info = json.loads(stdout_of(result))
    assert info["frames"] == [0, 37, 74] and info["timestamps"] == [0.0, 1.48, 2.96]
    assert info["image_tokens"] == 3 * 64 and info["duration"] == "0:00:03"
    text = invoke_cli("inspect", clip, "-m", model_dir)
    assert "3 frames of 512 px: " in stdout_of(text) and "at: 00:00 00:01 00:02" in stdout_of(text)
    # the exact prompt `describe` sends (it counted only the video's part, 15 tokens short)
    described = invoke_cli("describe", clip, "-m", model_dir, "-n", "1", "--json")
    assert info["prompt_tokens"] == json.loads(stdout_of(described))["prompt_tokens"]


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import av

    root = tmp_path_factory.mktemp("bad-videos")
    good = make_clip(root / "good.mp4", seconds=1, fps=25)
    data = good.read_bytes()
    files = {}
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"] = root / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["audio-only"] = make_audio_only(root / "audio.mp4")
    files["audio-with-cover"] = make_audio_only(root / "song.mp4", cover=True)  # album art: not a video
    files["text"] = root / "notes.mp4"
    files["text"].write_text("not a video\n" * 20)
    files["codec"] = root / "codec.mp4"
    files["codec"].write_bytes(data.replace(b"avc1", b"zzzz"))
    files["zero-seconds"] = root / "zero.mp4"
    with av.open(str(files["zero-seconds"]), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        container.start_encoding()
    return good, files


REASONS = {
    "truncated": "damaged",
    "empty": "empty (0 bytes)",
    "audio-only": "no video stream",
    "audio-with-cover": "no video stream (only audio)",
    "text": "not a video",
    "codec": "cannot be decoded",
    "zero-seconds": "0-second",
}


@pytest.mark.parametrize("kind", list(REASONS))
def test_a_bad_video_is_one_clean_error(model_dir, bad_files, kind):
    path = bad_files[1][kind]
    assert_clean_error(invoke_cli("describe", path, "-m", model_dir), names=[path], reason=REASONS[kind])


def test_a_huge_frame_size_is_refused(model_dir, bad_files, monkeypatch):
    from smolvlm_cli.video import decode

    monkeypatch.setattr(decode, "MAX_FRAME_PIXELS", 100)  # a real 40 MP clip is too slow to make here
    good = bad_files[0]
    assert_clean_error(invoke_cli("describe", good, "-m", model_dir), names=[good], reason="too large")


def test_without_pyav_a_video_says_how_to_install_it(model_dir, bad_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    result = invoke_cli("describe", bad_files[0], "-m", model_dir)
    assert_clean_error(result, names=[], reason="needs PyAV")
    assert "Hint: install video support: pip install 'smolvlm-cli[video]'" in stderr_of(result)


def test_batch_goes_on_past_bad_videos(model_dir, bad_files, tmp_path):
    good, files = bad_files
    out = tmp_path / "out.jsonl"
    result = invoke_cli("batch", good.parent, "-m", model_dir, "-n", "2", "-o", out)
    assert result.returncode == 1, stderr_of(result)
    records = {json.loads(line)["path"]: json.loads(line) for line in out.read_text().splitlines()}
    assert stderr_of(result).startswith(f"{len(records)} video(s): {len(records)} to caption")
    assert records[str(good)]["caption"] is not None and records[str(good)]["error"] is None
    assert records[str(good)]["prompt"] == "Describe this video in detail."
    for kind, path in files.items():
        assert records[str(path)]["error"] and REASONS[kind] in records[str(path)]["error"], kind


def test_video_options_need_a_video_and_sane_values(model_dir, clip, tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert invoke_cli("describe", image, "--fps", "2", "-m", model_dir).returncode == 2
    assert invoke_cli("describe", clip, "--fps", "0", "-m", model_dir).returncode == 2
    assert invoke_cli("describe", clip, "--start", "2", "--end", "1", "-m", model_dir).returncode == 2
    assert_clean_error(
        invoke_cli("describe", clip, "--start", "9", "-m", model_dir), names=[clip], reason="past the last frame"
    )
    # inside the 3 s, after the last frame (2.96 s): the message says where that frame is
    line = assert_clean_error(invoke_cli("describe", clip, "--start", "2.99", "-m", model_dir), names=[clip])
    assert "past the last frame" in line and "at 2.96 s" in line and "3.00 s long" in line


@pytest.mark.parametrize("option,value", [("--fps", "inf"), ("--start", "inf"), ("--start", "nan"), ("--end", "inf")])
def test_non_finite_video_options_are_usage_errors(clip, option, value):
    """Like --fps nan or --start -1: exit 2 before any work (they were exit 1 with a debugging
    hint, and in `batch` an error for every file)."""
    for command in ("describe", "batch"):
        result = invoke_cli(command, clip, option, value, "-m", "no-such-model-is-loaded")
        assert result.returncode == 2, (command, stderr_of(result))
        assert f"{value} is not a finite number" in stderr_of(result)


def test_a_rotated_clip_reports_its_upright_size(model_dir, tmp_path):
    """A phone's portrait clip (landscape coded frames, display matrix -90): the model sees it
    upright, and `inspect` and `--json` say so (they said 32x24, the coded size)."""
    path = make_clip(tmp_path / "phone.mp4", seconds=0.5, fps=10, size=(32, 24), rotation=-90)
    info = json.loads(stdout_of(invoke_cli("inspect", path, "-m", model_dir, "--json")))
    assert (info["width"], info["height"]) == (24, 32)
    assert stdout_of(invoke_cli("inspect", path, "-m", model_dir)).startswith(f"{path}: 24x32, 10 fps")


def test_a_video_too_long_for_the_context_is_refused_with_advice(model_dir, tmp_path):
    long = make_clip(tmp_path / "long.mp4", frames=130, fps=1)
    line = assert_clean_error(
        invoke_cli("describe", long, "-m", model_dir, "--max-frames", "130"), reason="context holds 8192"
    )
    assert "--max-frames 1" in line


def test_ask_refuses_a_video_too_long_for_the_context_before_decoding(vlm, tmp_path):
    from smolvlm_cli import open_video

    long = make_clip(tmp_path / "long.mp4", frames=130, fps=1)
    video = open_video(long, vlm.config, max_frames=130)
    calls = []
    encode = vlm.backend.encode_images
    vlm.backend.encode_images = lambda *a: calls.append(1) or encode(*a)
    try:
        with pytest.raises(ValueError, match="context holds 8192"):
            vlm.ask(video, ["What?"])
    finally:
        del vlm.backend.encode_images
    assert calls == []


def test_batch_records_a_video_too_long_for_the_context_and_goes_on(model_dir, clip, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_clip(folder / "long.mp4", frames=130, fps=1)
    (folder / "short.mp4").write_bytes(clip.read_bytes())
    out = tmp_path / "out.jsonl"
    result = invoke_cli("batch", folder, "-m", model_dir, "-n", "2", "-b", "2", "--max-frames", "130", "-o", out)
    assert result.returncode == 1, stderr_of(result)
    records = {json.loads(line)["path"]: json.loads(line) for line in out.read_text().splitlines()}
    assert "context holds 8192" in records[str(folder / "long.mp4")]["error"]
    assert records[str(folder / "short.mp4")]["caption"] is not None


def test_chat_refuses_a_video_too_long_for_the_context_before_decoding(vlm, tmp_path):
    from smolvlm_cli import open_video

    long = open_video(make_clip(tmp_path / "long.mp4", frames=130, fps=1), vlm.config, max_frames=130)
    chat = vlm.chat(max_new_tokens=2)
    with pytest.raises(ValueError, match="context holds 8192"):
        chat.send("What?", [long])
    assert chat.images.vision_calls == 0 and chat.messages == []
