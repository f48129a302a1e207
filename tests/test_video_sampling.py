"""The pure parts of video input (no clips): sampling rules, number words, durations, rotation,
held to transformers 5.24's SmolVLM sampler and the `num2words` package it uses."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from smolvlm_cli.video import is_video, is_video_path
from smolvlm_cli.video.decode import PacketIndex, upright
from smolvlm_cli.video.sampling import duration_text, frame_header, number_words, sample_indices, timestamps


def test_number_words_match_num2words():
    num2words = pytest.importorskip("num2words").num2words
    for n in [*range(0, 2100), 9999, 10001, 12345, 100000, 100001, 999999, 1000000, 1000001, 2000100, 123456789]:
        assert number_words(n) == num2words(n), n


def test_sampler_matches_transformers_on_a_grid_of_clips():
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    from transformers.video_utils import VideoMetadata

    rng = np.random.default_rng(0)
    cases = [
        (
            int(rng.integers(1, 20000)),
            float(rng.choice([23.976, 24, 25, 29.97, 30, 50, 60, 7.5])),
            float(rng.choice([0.25, 0.5, 1, 2, 3])),
            int(rng.choice([1, 2, 8, 32, 64, 100])),
        )
        for _ in range(400)
    ]
    cases += [(1, 25, 1, 64), (2, 25, 1, 64), (24, 24, 1, 64), (1680, 24, 1, 64), (1728, 24, 1, 64)]
    for total, video_fps, fps, max_frames in cases:
        meta = VideoMetadata(total_num_frames=total, fps=video_fps, duration=total / video_fps)
        ref = SmolVLMVideoProcessor.sample_frames(None, meta, num_frames=max_frames, fps=fps)
        ours = sample_indices(total, video_fps, fps, max_frames)
        assert ours.tolist() == ref.tolist(), (total, video_fps, fps, max_frames)


def test_the_first_and_last_second_are_skipped_only_on_long_clips():
    assert sample_indices(70 * 24, 24, 1, 64)[[0, -1]].tolist() == [24, 1656]  # 70 s > 2 + 64 s
    assert sample_indices(66 * 24, 24, 1, 64)[[0, -1]].tolist() == [0, 66 * 24 - 1]


def test_a_clip_shorter_than_one_interval_gives_one_frame():
    assert sample_indices(3, 25, 1, 64).tolist() == [0]
    assert timestamps([0], 25) == [0.0]


def test_durations_and_frame_headers():
    for seconds in [0, 0.99, 3.5, 59.9, 61, 3599, 3600, 7322.7]:
        assert duration_text(seconds) == str(timedelta(seconds=int(seconds)))
    assert frame_header(0.4) == "\nFrame from 00:00:"
    assert frame_header(61.2) == "\nFrame from 01:01:"
    assert frame_header(3725) == "\nFrame from 62:05:"


def test_rotation_turns_frames_as_players_do():
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)
    # display matrix angle -90 (a phone's "rotate=90" tag): turn clockwise, 2x3 -> 3x2
    turned = upright(SimpleNamespace(rotation=-90), pixels)
    assert turned.shape == (3, 2, 3) and turned[0, :, 0].tolist() == [3, 0]
    assert upright(SimpleNamespace(rotation=90), pixels)[0, :, 0].tolist() == [2, 5]
    assert upright(SimpleNamespace(rotation=180), pixels)[0, :, 0].tolist() == [5, 4, 3]
    assert upright(SimpleNamespace(rotation=0), pixels) is pixels


def test_packet_index_numbers_and_keyframes():
    index = PacketIndex(pts=[0, 40, 80, 120, 160, 200], keyframes=[0, 3])
    assert [index.number_of(p) for p in (0, 120, 200, 50, None)] == [0, 3, 5, None, None]
    assert [index.keyframe_before(n) for n in (0, 2, 3, 5)] == [0, 0, 3, 3]


@pytest.mark.parametrize(
    "name,video",
    [
        ("clip.mp4", True),
        ("CLIP.MOV", True),
        ("a.webm", True),
        ("a.mkv", True),
        ("photo.jpg", False),
        ("anim.gif", False),
        ("https://x.org/a.mp4", False),
        ("mp4", False),
    ],
)
def test_video_paths_are_told_by_extension(name, video):
    assert is_video_path(name) is video and is_video(name) is video


# -- the decode-ahead thread ------------------------------------------------------------------------


def test_prefetched_keeps_order_and_a_bounded_lead():
    import threading
    import time

    from smolvlm_cli.video.encode import prefetched

    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    out = []
    for item in prefetched(items(), ahead=3):
        time.sleep(0.002)
        assert len(produced) - len(out) <= 3 + 2  # queue + the one being put + the one handed out
        out.append(item)
    assert out == list(range(20))
    assert not any(t.name == "smolvlm-video-decode" for t in threading.enumerate())


def test_prefetched_raises_the_producers_error_in_order_and_stops_early():
    import threading

    from smolvlm_cli.video.encode import prefetched

    def failing():
        yield 1
        raise ValueError("frame 2 is damaged")

    got = []
    with pytest.raises(ValueError, match="damaged"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    for item in prefetched(iter(range(1000)), ahead=2):
        break  # leaving early stops the producer
    assert not any(t.name == "smolvlm-video-decode" for t in threading.enumerate())


def test_help_does_not_import_pyav():
    from conftest import run_cli

    code = (
        "import sys\nfrom smolvlm_cli.cli.main import main\n"
        "for command in ([], ['describe'], ['chat'], ['batch'], ['inspect']):\n"
        "    try:\n        main([*command, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'av' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n"
    )
    result = run_cli(python_code=code)
    assert result.returncode == 0, result.stderr.decode()
