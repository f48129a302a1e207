"""Video sampling, frames, pixels, prompt text and input_ids against transformers 5.24.

The reference is transformers' own code wherever it runs without torchvision:
- `SmolVLMVideoProcessor.sample_frames` (the SmolVLM sampler, called as the processor's chat
  template path calls it: `num_frames` and `fps` from `video_sampling`, `skip_secs` default 1)
  inside `video_utils.read_video_pyav` (its PyAV reader: metadata, frame numbering, RGB frames);
- `SmolVLMProcessor.__call__` (template text in, `replace_video_token`, the tokenizer) with the
  torchvision-only video processor replaced by a stub returning that reader's metadata;
- `SmolVLMProcessor.apply_chat_template` for the video template text.

Its video processor's resize needs torchvision, so pixels are held to the resampling it runs on
CPU with torchvision >= 0.27, written in torch: `F.interpolate(mode="lanczos", antialias=True)`
on uint8 frames, twice (longest edge to 2048, even short side; then 512 x 512), then
(x / 255 - 0.5) / 0.5. Ours is PIL's LANCZOS: tolerance 2 uint8 levels (0.0157 after
normalization) at any pixel, mean absolute difference below 0.002.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache, partial

import numpy as np
import pytest

import transformers

from conftest import fixture_dir
from smolvlm_cli.processor import Processor
from smolvlm_cli.video.clip import frame_size, open_video
from video_clips import make_clip

pytest.importorskip("av")
pytest.importorskip("num2words")  # transformers' SmolVLMProcessor needs it (pure Python)

TRANSFORMERS_VERSION = "5.24.0"
MODEL = "SmolVLM2-256M-Video-Instruct"
PIXEL_TOLERANCE = 2 * 2 / 255 + 1e-6
MEAN_TOLERANCE = 0.002

# (seconds, fps, (width, height), extra make_clip options)
CLIPS = {
    "1s-24fps": (1, 24, (32, 24), {}),
    "3s-25fps": (3, 25, (32, 24), {}),
    "10s-30fps-portrait": (10, 30, (24, 32), {}),
    "70s-24fps-skip": (70, 24, (32, 24), {"gop": 12}),
    "70s-30fps-skip": (70, 30, (32, 24), {}),
    "4s-25fps-vfr": (4, 25, (32, 24), {"vfr": True}),
    "short-than-interval": (0.12, 25, (32, 24), {}),
    "2s-25fps-odd-33x17": (2, 25, (33, 17), {"codec": "mpeg4"}),  # x264 takes even sizes only
}


def test_pinned_transformers_version():
    """The rules were read from, and are held to, transformers 5.24.0. Another version still
    runs every test here (they fail if its sampler or prompt changed); this one says so."""
    if transformers.__version__ != TRANSFORMERS_VERSION:
        pytest.skip(
            f"video parity pinned to transformers {TRANSFORMERS_VERSION}, running against {transformers.__version__}"
        )


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    cache = {}

    def get(name):
        if name not in cache:
            seconds, fps, size, extra = CLIPS[name]
            cache[name] = make_clip(root / f"{name}.mp4", seconds, fps, size, **extra)
        return cache[name]

    return get


@lru_cache(maxsize=None)
def processor() -> Processor:
    return Processor.from_pretrained(fixture_dir(MODEL))


def reference_read(path, num_frames=64, fps=1):
    """transformers' PyAV reader with the SmolVLM sampler: (frames, metadata)."""
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    from transformers.video_utils import read_video_pyav

    sampler = partial(SmolVLMVideoProcessor.sample_frames, None, num_frames=num_frames, fps=fps)
    return read_video_pyav(str(path), lambda metadata, **_: sampler(metadata))


@pytest.mark.parametrize("name", list(CLIPS))
def test_indices_timestamps_and_frames_match_transformers(clips, name):
    path = clips(name)
    ref_frames, meta = reference_read(path)
    video = open_video(path, processor().config)
    assert video.numbers == [int(i) for i in meta.frames_indices]
    assert video.times == meta.timestamps
    assert video.info.total_frames == meta.total_num_frames and video.duration == meta.duration
    ours = np.stack(list(video.frames()))
    assert ours.shape == ref_frames.shape and np.array_equal(ours, ref_frames)


@pytest.mark.parametrize("num_frames,fps", [(8, 1), (64, 2), (3, 0.5), (100, 30)])
def test_other_sampling_options_match_transformers(clips, num_frames, fps):
    path = clips("70s-24fps-skip")
    _, meta = reference_read(path, num_frames, fps)
    video = open_video(path, processor().config, fps=fps, max_frames=num_frames)
    assert video.numbers == [int(i) for i in meta.frames_indices]
    assert video.times == meta.timestamps


def test_sparse_frames_are_reached_by_seeking_not_by_decoding_everything(clips, monkeypatch):
    """8 frames of a 70 s clip with a keyframe every 12 frames: the decoder starts at the
    keyframe before each sampled frame, so it decodes a few frames per sample, not 1680."""
    from smolvlm_cli.video import decode

    decoded = []
    original = decode._decoded

    def counting(*args):
        for item in original(*args):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(decode, "_decoded", counting)
    video = open_video(clips("70s-24fps-skip"), processor().config, max_frames=8)
    assert len(list(video.frames())) == 8
    assert len(decoded) <= 8 * 13 + 8, len(decoded)  # at most a GOP (+ decoder delay) per frame


@pytest.mark.parametrize("suffix,codec", [(".ts", "libx264"), (".mpg", "mpeg2video")], ids=["mpeg-ts", "mpeg-ps"])
def test_containers_that_seek_by_bytes_give_the_frames_of_a_straight_decode(tmp_path, suffix, codec):
    """MPEG-TS and MPEG-PS seek by byte position: a seek lands past the wanted frame, or on
    frame times the packet index does not hold, and the frames were silently wrong (2 of 3 in
    a 3 s .ts clip, 26 of 48 in a 48 s one). Each sampled frame must be the one a straight decode numbers so.
    (transformers' reader takes these files for one frame long, having no frame count in
    their header, so the reference here is PyAV decoding every frame.)"""
    import av

    for seconds, fps, gop in ((3, 25, None), (48, 5, 10)):
        path = make_clip(tmp_path / f"{seconds}s{suffix}", seconds, fps, codec=codec, gop=gop)
        with av.open(str(path)) as container:
            straight = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        video = open_video(path, processor().config)
        assert video.info.total_frames == len(straight) == seconds * fps
        frames = list(video.frames())
        assert len(frames) == len(video.numbers) > 1
        wrong = [n for n, frame in zip(video.numbers, frames) if not np.array_equal(frame, straight[n])]
        assert wrong == [], f"{len(wrong)} of {len(frames)} frames wrong in {path.name}"


def test_b_frames_in_avi_are_the_frames_of_a_straight_decode(tmp_path):
    """AVI has no presentation times: FFmpeg gives its packets decode-order times, which the
    decoder hands to the frames it reorders, so frames were taken by the wrong number (the
    previous one repeated for a "lost" one). They are numbered in output order, as transformers
    counts them."""
    import av

    if "libx264" not in av.codecs_available:
        pytest.skip("this PyAV has no libx264 encoder")
    options = {"bf": "3", "x264-params": "b-adapt=0"}  # B-frames everywhere
    path = make_clip(tmp_path / "bframes.avi", frames=60, fps=25, gop=12, options=options)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert sorted(f.pts for f in decoded) != [f.pts for f in decoded]  # the times are reordered
    straight = [f.to_ndarray(format="rgb24") for f in decoded]
    video = open_video(path, processor().config, fps=10)
    frames = list(video.frames())
    assert len(frames) == len(video.numbers) == 24
    wrong = [n for n, frame in zip(video.numbers, frames) if not np.array_equal(frame, straight[n])]
    assert wrong == [], f"{len(wrong)} of {len(frames)} frames wrong"


# a browser's recording: 12 frames 20 ms apart, a 2 s pause, 12 frames 100 ms apart (3.4 s)
IRREGULAR = [i * 0.02 for i in range(12)] + [2.3 + i * 0.1 for i in range(12)]


@pytest.mark.parametrize(
    "name,codec",
    [("clip.ts", "libx264"), ("clip.mkv", "libx264"), ("clip.webm", "libvpx-vp9"), ("no-rate.webm", "libvpx-vp9")],
)
def test_a_variable_rate_clip_is_timed_by_its_frames_not_a_guessed_rate(tmp_path, name, codec):
    """MPEG-TS and Matroska/WebM hold no average rate: FFmpeg guesses one from the first
    frames (MPEG-TS, WebM without DefaultDuration: 50 fps here) or takes DefaultDuration (25):
    the 3.4 s clip was 0.48 s or 0.96 s long, sampled as one frame. Its rate is its frames /
    their time span, so its duration is its own."""
    path = make_clip(tmp_path / name, codec=codec, times=IRREGULAR)
    if name.startswith("no-rate"):
        from video_clips import without_default_duration

        without_default_duration(path)
    video = open_video(path, processor().config)
    assert video.info.total_frames == 24
    assert video.info.fps == pytest.approx(23 / 3.4, rel=1e-3)
    assert video.duration == pytest.approx(3.4 * 24 / 23, rel=1e-3) and video.num_frames == 4
    assert video.numbers == [0, 7, 15, 23]


def test_a_variable_rate_mp4_keeps_its_average_rate(tmp_path):
    """MP4's average rate is its frames / stream duration already: transformers' reading stands."""
    path = make_clip(tmp_path / "clip.mp4", times=IRREGULAR)
    _, meta = reference_read(path)
    video = open_video(path, processor().config)
    assert video.info.fps == meta.fps and video.numbers == [int(i) for i in meta.frames_indices]


@pytest.mark.parametrize("start,end", [(0.1, 2.5), (1.0, None), (None, 2.45), (2.35, 2.7)])
def test_a_segment_of_a_variable_rate_clip_is_cut_at_its_frames_times(tmp_path, start, end):
    """--start/--end pick the frames whose presentation times lie in [start, end) (they were
    taken as `number / average fps`: 0.1-2.5 s gave frames 1-18, played 0.02-2.9 s), and the
    segment's rate is its own frames' average, as the clip cut there would have."""
    import av

    path = make_clip(tmp_path / "clip.mp4", times=IRREGULAR)
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    times = [t - times[0] for t in times]
    inside = [n for n, t in enumerate(times) if (start or 0) <= t < (end or math.inf)]
    video = open_video(path, processor().config, start=start, end=end)
    first, count = video.info.first_frame, video.info.total_frames
    assert list(range(first, first + count)) == inside
    if count > 1:
        assert video.info.fps == pytest.approx((count - 1) / (times[inside[-1]] - times[first]))


def test_a_segment_is_sampled_as_the_clip_cut_there(clips, tmp_path):
    """--start 2.5 --end 7.5 of a 10 s clip = transformers on those frames written as a clip."""
    path = clips("10s-30fps-portrait")
    video = open_video(path, processor().config, start=2.5, end=7.5)
    first = video.info.first_frame
    assert first == 75 and video.info.total_frames == 150
    cut = make_clip(tmp_path / "cut.mp4", fps=30, size=(24, 32), frames=150)
    _, meta = reference_read(cut)
    assert list(video.indices) == [int(i) for i in meta.frames_indices]
    assert video.times == meta.timestamps and video.duration == meta.duration
    assert video.numbers == [first + int(i) for i in meta.frames_indices]


def test_rotated_clips_are_turned_upright(tmp_path):
    """A phone's portrait clip: landscape coded frames and a display matrix of -90 degrees.
    Ours are upright, as players show them; transformers' reader ignores the rotation."""
    path = make_clip(tmp_path / "phone.mp4", seconds=2, fps=25, size=(32, 24), rotation=-90)
    ref_frames, meta = reference_read(path)
    video = open_video(path, processor().config)
    ours = np.stack(list(video.frames()))
    assert ref_frames.shape[1:3] == (24, 32) and ours.shape[1:3] == (32, 24)
    assert np.array_equal(ours, np.rot90(ref_frames, k=-1, axes=(1, 2)))


@pytest.mark.parametrize("truncate", [False, True])
def test_a_stream_without_a_frame_count_is_counted(tmp_path, truncate):
    """Matroska keeps no frame count (transformers' reader then sees 0 frames): ours comes from
    the packet index, and a truncated file is the frames it still holds."""
    path = make_clip(tmp_path / "clip.mkv", seconds=3, fps=25, size=(32, 24), gop=10)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    video = open_video(path, processor().config, fps=4)
    assert (video.info.total_frames < 75) if truncate else (video.info.total_frames == 75)
    from transformers.video_utils import read_video_pyav

    ours = np.stack(list(video.frames()))
    ref, _ = read_video_pyav(str(path), lambda metadata, **_: np.array(video.numbers))
    assert ours.shape == ref.shape and np.array_equal(ours, ref)


def test_damaged_packets_still_give_every_sampled_frame(tmp_path):
    path = make_clip(tmp_path / "damaged.mp4", seconds=4, fps=25, size=(64, 48), gop=5)
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat")
    for k in range(start + 200, start + len(data) // 2, 97):  # garbage over half the picture data
        data[k] = (data[k] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    video = open_video(path, processor().config, fps=10)
    frames = list(video.frames())
    assert len(frames) == video.num_frames == 40 and all(f.shape == (48, 64, 3) for f in frames)


# -- prompt text and input ids ------------------------------------------------------------------


@lru_cache(maxsize=None)
def hf_processor():
    """transformers' SmolVLMProcessor; its video processor (torchvision) replaced by a stub that
    reads the clip with transformers' PyAV reader and SmolVLM sampler."""
    from transformers import AutoTokenizer
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    class StubVideoProcessor:
        num_frames, fps = 64, 1

        def __call__(self, videos, **kwargs):
            metas, counts = [], []
            for path in videos:
                frames, meta = reference_read(path, self.num_frames, self.fps)
                metas.append(meta)
                counts.append(len(frames))
            return {"pixel_values": np.zeros((len(videos), max(counts), 1, 1, 1), np.float32), "video_metadata": metas}

    class VideoStubProcessor(processing_smolvlm.SmolVLMProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    path = fixture_dir(MODEL)
    return VideoStubProcessor(
        image_processor=SmolVLMImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=StubVideoProcessor(),
        image_seq_len=64,
    )


def hf_ids(messages, videos, images=None):
    proc = hf_processor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out = proc(text=[text], videos=[str(v) for v in videos] or None, images=images)
    return text, [int(i) for i in np.asarray(out["input_ids"]).reshape(-1)]


@pytest.mark.parametrize("name", list(CLIPS))
def test_prompt_and_input_ids_match_transformers(clips, name):
    path = clips(name)
    messages = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "Describe this video."}],
        }
    ]
    text, ref = hf_ids(messages, [path])
    proc = processor()
    assert proc.render(messages) == text
    prepared = proc.prepare(messages=messages)
    assert prepared.input_ids.tolist() == ref
    assert prepared.num_tiles == len(open_video(path, proc.config).indices)


def test_text_first_gets_a_space_and_a_system_turn_and_two_videos(clips):
    # Two videos of the same frame count: for different counts transformers 5.24 writes the
    # batch's padded count (`pixel_values.shape[1]`) in every intro; we write each video's own.
    a, b = clips("3s-25fps"), clips("3s-25fps")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare "},
                {"type": "video", "path": str(a)},
                {"type": "text", "text": " and "},
                {"type": "video", "path": str(b)},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": " Both move."}]},
        {"role": "user", "content": "Which is longer?"},
    ]
    text, ref = hf_ids(messages, [a, b])
    assert "User: Compare <video>" in text
    assert processor().prepare(messages=messages).input_ids.tolist() == ref


def test_two_videos_each_get_their_own_frame_count(clips):
    a, b = clips("3s-25fps"), clips("1s-24fps")
    messages = [{"role": "user", "content": [{"type": "video", "path": str(a)}, {"type": "video", "path": str(b)}]}]
    proc = processor()
    text = proc.tokenizer.decode(proc.prepare(messages=messages).input_ids.tolist())
    assert "series of three frames from a 0:00:03" in text and "series of one frames from a 0:00:01" in text


def test_image_then_video_prompt_matches_transformers(clips):
    from PIL import Image

    path = clips("3s-25fps")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 450, 3), dtype=np.uint8))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "video", "path": str(path)},
                {"type": "text", "text": "Same scene?"},
            ],
        }
    ]
    text, ref = hf_ids(messages, [path], images=[[image]])
    assert text.startswith("<|im_start|>User:<image><video>")
    prepared = processor().prepare([image, str(path)], messages=messages)
    assert prepared.input_ids.tolist() == ref
    assert prepared.media[0] == 13 and prepared.media[1].num_frames == 3


# -- pixels -------------------------------------------------------------------------------------


def torch_reference_pixels(frames: np.ndarray, longest_edge=2048, tile=512) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    w, h = frame_size(video.shape[-1], video.shape[-2], longest_edge)
    video = F.interpolate(video, size=(h, w), mode="lanczos", antialias=True)
    video = F.interpolate(video, size=(tile, tile), mode="lanczos", antialias=True)
    return ((video.float() / 255 - 0.5) / 0.5).numpy()


@pytest.mark.parametrize("name", ["3s-25fps", "10s-30fps-portrait", "2s-25fps-odd-33x17"])
def test_pixels_match_transformers_resampling(clips, name):
    path = clips(name)
    frames, _ = reference_read(path, num_frames=4, fps=1)
    ref = torch_reference_pixels(frames)
    proc = processor()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    video = open_video(path, proc.config, max_frames=4)
    ours = proc.prepare_inputs(messages, videos=[video])
    pixels = ours["pixel_values"][0]
    assert pixels.shape == ref.shape == (len(frames), 3, 512, 512)
    assert ours["pixel_attention_mask"].all()
    diff = np.abs(pixels - ref)
    assert diff.max() <= PIXEL_TOLERANCE and diff.mean() < MEAN_TOLERANCE, (diff.max(), diff.mean())


@pytest.mark.parametrize(
    "size,expected",
    [
        ((1280, 720), (2048, 1152)),
        ((720, 1280), (1152, 2048)),
        ((33, 17), (2048, 1056)),
        ((17, 33), (1056, 2048)),
        ((100, 100), (2048, 2048)),
    ],
)
def test_first_resize_size(size, expected):
    from transformers.models.smolvlm.video_processing_smolvlm import get_resize_output_image_size

    class Shape:
        def size(self):
            return (size[1], size[0])

    h, w = get_resize_output_image_size(Shape(), 2048)
    assert frame_size(*size, 2048) == (w, h) == expected


def test_tiles_path_equals_prepare_inputs(clips):
    """What the encoder gets (tiles normalized one by one) is what prepare_inputs gives."""
    proc = processor()
    video = open_video(clips("1s-24fps"), proc.config)
    tiles = [proc.image_processor.normalize(t) for t in video.tiles(proc.config)]
    messages = [{"role": "user", "content": [{"type": "video"}]}]
    assert np.array_equal(np.stack(tiles), proc.prepare_inputs(messages, videos=[video])["pixel_values"][0])
