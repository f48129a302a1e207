"""Conversations and `ask`: kept KV cache equals a fresh run, images are encoded once."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import fast_first, invoke_cli
from smolvlm_cli import SmolVLM, TextStream
from smolvlm_cli.options import Tiling

NAME = "SmolVLM2-256M-Video-Instruct"
OPTS = dict(max_new_tokens=12)


@pytest.fixture(scope="module", params=fast_first(["onnx", "torch"]))
def vlm(request, tiny_onnx_dir):
    return SmolVLM.from_pretrained(tiny_onnx_dir(NAME), backend=request.param)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("conv") / "scene.png"
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
    return path


class Spy:
    """Counts vision calls and the number of ids each forward call feeds."""

    def __init__(self, vlm, monkeypatch):
        self.vision, self.fed = 0, []
        encode, forward = vlm.backend.encode_images, vlm.backend.forward

        def counting_encode(*args, **kwargs):
            self.vision += 1
            return encode(*args, **kwargs)

        def counting_forward(state, ids, features=None):
            self.fed.append(len(ids))
            return forward(state, ids, features)

        monkeypatch.setattr(vlm.backend, "encode_images", counting_encode)
        monkeypatch.setattr(vlm.backend, "forward", counting_forward)


def test_second_turn_with_kept_cache_equals_a_fresh_run(vlm, image, monkeypatch):
    chat = vlm.chat(**OPTS)
    first = chat.send("What is in this picture?", images=[str(image)])
    assert isinstance(first, TextStream)
    first.text()
    spy = Spy(vlm, monkeypatch)
    second = chat.send("Tell me more about the colours.")
    second_text = second.text()
    assert spy.vision == 0  # the image of turn 1 is not encoded again
    prompt_tokens = second.stats.prompt_tokens
    assert spy.fed[0] < prompt_tokens / 2  # only the new turn (and reply) is prefilled
    assert len(chat.messages) == 4 and chat.messages[-1]["role"] == "assistant"

    fresh = vlm.stream(messages=chat.messages[:3], images=[str(image)], **OPTS)
    assert fresh.text() == second_text
    assert fresh.token_ids == second.token_ids
    assert fresh.stats.prompt_tokens == prompt_tokens


def test_a_new_image_in_a_later_turn(vlm, image, tmp_path, monkeypatch):
    other = tmp_path / "other.png"
    Image.new("RGB", (320, 200), "blue").save(other)
    chat = vlm.chat(**OPTS)
    chat.send("Hello!").text()
    spy = Spy(vlm, monkeypatch)
    reply = chat.send("And this?", images=[str(other)])
    text = reply.text()
    assert spy.vision == 1
    fresh = vlm.stream(messages=chat.messages[:3], images=[str(other)], **OPTS)
    assert fresh.text() == text and fresh.token_ids == reply.token_ids


def test_ask_encodes_once_and_answers_each_question_independently(vlm, image, monkeypatch):
    questions = ["What is this?", "What colour dominates?", "Is it day or night?"]
    spy = Spy(vlm, monkeypatch)
    answers = vlm.ask(str(image), questions, **OPTS)
    assert spy.vision == 1
    assert len(answers) == 3
    monkeypatch.undo()
    for question, answer in zip(questions, answers):
        assert answer == vlm.generate(str(image), question, **OPTS)


def test_time_to_first_token_counts_the_image_work(vlm, image, tmp_path, monkeypatch):
    """ask and chat encode images before their stream starts; stats and TTFT must include it."""
    import time

    encode = vlm.backend.encode_images

    def slow_encode(*args, **kwargs):
        time.sleep(0.3)
        return encode(*args, **kwargs)

    monkeypatch.setattr(vlm.backend, "encode_images", slow_encode)
    first, second = list(vlm.ask_stream(str(image), ["What is this?", "And the colours?"], **OPTS))
    first.text()
    assert first.stats.vision_s >= 0.3 and first.stats.ttft_s >= first.stats.vision_s
    assert first.stats.image_tiles > 0 and first.stats.preprocess_s > 0
    second.text()
    assert second.stats.vision_s == 0 and second.stats.image_tiles == 0  # encoded once

    other = tmp_path / "fresh.png"
    Image.new("RGB", (320, 200), "green").save(other)
    reply = vlm.chat(**OPTS).send("What is this?", images=[str(other)])
    reply.text()
    assert reply.stats.vision_s >= 0.3 and reply.stats.ttft_s >= reply.stats.vision_s
    assert reply.stats.image_tiles > 0


def test_save_round_trips(vlm, image, tmp_path, monkeypatch):
    chat = vlm.chat(**OPTS)
    chat.send("Describe it.", images=[str(image)]).text()
    chat.send("Shorter, please.").text()
    path = tmp_path / "chat.json"
    chat.save(path)
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"][0] == {"type": "image", "path": str(image)}
    assert saved[1]["content"][0]["text"] == chat.messages[1]["content"][0]["text"]
    # The saved messages, images inline, give the same prompt as the live conversation.
    live = vlm.processor.prepare_inputs(chat.messages, [str(image)])
    loaded = vlm.processor.prepare_inputs(saved)
    assert np.array_equal(live["input_ids"], loaded["input_ids"])
    assert np.array_equal(live["pixel_values"], loaded["pixel_values"])

    # A later save that fails half-way (a full disk) leaves the previous transcript whole.
    import errno

    from smolvlm_cli.batch import files

    before = path.read_bytes()
    chat.send("One more.").text()

    def full_disk(fd, data, *args):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_all", full_disk)
    with pytest.raises(OSError, match="No space left"):
        chat.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["chat.json"]


def test_full_context_drops_the_oldest_turn_with_a_notice(vlm, image):
    chat = vlm.chat(**OPTS)
    chat.max_context = 150  # tiny, to force it: each exchange here is ~45 tokens
    for i in range(6):
        chat.send(f"Question number {i}: " + "tell me everything " * 6).text()
    assert chat.notices and "dropped the oldest turn" in chat.notices[0]
    assert len(chat.messages) < 12
    assert chat.messages[0]["role"] == "user"


def test_scripted_chat_on_stdin(tiny_onnx_dir, image, tmp_path):
    model_dir = tiny_onnx_dir(NAME)
    transcript = tmp_path / "t.json"
    script = f"What is this?\n/save {transcript}\nAnd the colours?\n/exit\nnever sent\n"
    result = invoke_cli("chat", str(image), "-m", str(model_dir), "-n", "8", input=script.encode())
    assert result.returncode == 0, result.stderr.decode()
    answers = result.stdout.decode().splitlines()
    vlm = SmolVLM.from_pretrained(model_dir)
    chat = vlm.chat(max_new_tokens=8)
    expected = [chat.send("What is this?", images=[str(image)]).text(), chat.send("And the colours?").text()]
    assert answers == expected
    assert json.loads(transcript.read_text())[1]["content"][0]["text"] == expected[0]


@pytest.mark.slow  # three model loads
def test_ask_cli_prints_answers_in_order_and_jsonl(tiny_onnx_dir, image):
    model_dir = tiny_onnx_dir(NAME)
    questions = ["What is this?", "Where is it?"]
    args = ["ask", str(image), "-m", str(model_dir), "-n", "8"]
    for q in questions:
        args += ["-q", q]
    text = invoke_cli(*args)
    assert text.returncode == 0, text.stderr.decode()
    vlm = SmolVLM.from_pretrained(model_dir)
    expected = [vlm.generate(str(image), q, max_new_tokens=8) for q in questions]
    # several questions: each answer labeled (tests/test_user_trust.py covers multi-line replies)
    assert text.stdout.decode() == "\n".join(
        f"Q: {q}\nA: " + a.lstrip(" ").replace("\n", "\n   ") + "\n" for q, a in zip(questions, expected)
    )
    as_json = invoke_cli(*args, "--json")
    records = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
    assert [r["question"] for r in records] == questions
    assert [r["text"] for r in records] == expected
    assert records[0]["timings"]["vision_s"] > 0 and records[1]["timings"]["vision_s"] == 0  # encoded once
    # the fields of describe --json, beside the question
    described = invoke_cli("describe", str(image), questions[0], "-m", str(model_dir), "-n", "8", "--json")
    described = json.loads(described.stdout)
    assert set(records[0]) - {"question"} == set(described) - {"prompt", "images"}
    assert set(records[0]["timings"]) == set(described["timings"]) - {"startup_s", "load_s"}


# -- too long an edge: the vocabulary has <row_r_col_c> markers up to 6x6 ---------------------------


def test_ask_and_chat_refuse_too_long_an_edge_as_describe_does(vlm, image, monkeypatch):
    def no_resizing(*args, **kwargs):
        raise AssertionError("the image was resized before its grid was refused")

    monkeypatch.setattr(vlm.processor.image_processor, "tiles", no_resizing)  # refused from its size
    with pytest.raises(ValueError, match="cuts the image into 6x8 tiles") as describe:
        vlm.generate(str(image), "hi", tiling=Tiling(longest_edge=4096), **OPTS)
    spy = Spy(vlm, monkeypatch)
    with pytest.raises(ValueError) as ask:
        vlm.ask(str(image), ["hi"], tiling=Tiling(longest_edge=4096), **OPTS)
    chat = vlm.chat(tiling=Tiling(longest_edge=4096), **OPTS)
    with pytest.raises(ValueError) as send:
        chat.send("hi", images=[str(image)]).text()
    assert str(ask.value) == str(send.value) == str(describe.value)
    assert spy.vision == 0 and spy.fed == []  # refused before any model work


def test_cli_ask_and_chat_refuse_too_long_an_edge_as_describe_does(tiny_onnx_dir, image):
    common = ["-m", str(tiny_onnx_dir(NAME)), "-n", "4", "--longest-edge", "4096"]
    results = [
        invoke_cli("describe", str(image), "hi", *common),
        invoke_cli("ask", str(image), "-q", "hi", *common),
        invoke_cli("chat", str(image), *common, input="hi\n"),
    ]
    for result in results:
        assert result.returncode == 1 and result.stdout == b"", result.stderr
    errors = [result.stderr.decode().splitlines()[0] for result in results]
    assert errors[0].startswith("Error: a longest edge of 4096 px cuts the image into 6x8 tiles")
    assert errors[1] == errors[2] == errors[0]


# -- the library's edges (an audit's findings) ---------------------------------------------------


def test_a_turn_that_cannot_be_sent_leaves_the_chat_as_it_was(vlm, image, tmp_path):
    """A failed `send` (an unreadable image, a turn too long for the context) used to leave its
    user turn in the history: every later turn failed the same way, until /reset."""
    from smolvlm_cli.errors import ImageError

    chat = vlm.chat(**OPTS)
    answer = chat.send("What is in this picture?", images=str(image)).text()  # one path, not a list
    before = json.loads(chat.to_json())
    with pytest.raises(ImageError):
        chat.send("And this one?", images=[str(tmp_path / "missing.png")])
    chat.max_context = 40
    with pytest.raises(ValueError, match="context"):
        chat.send("tell me everything " * 20)
    assert json.loads(chat.to_json()) == before and not chat.notices
    chat.max_context = vlm.config.max_position_embeddings
    second = chat.send("Tell me more.")
    fresh = vlm.generate(messages=list(chat.messages), images=[str(image)], **OPTS)
    assert second.text() == fresh and answer


def test_a_reply_left_unread_goes_with_its_question(vlm, image):
    chat = vlm.chat(**OPTS)
    chat.send("What is in this picture?", images=[str(image)]).text()
    dropped = chat.send("And the colours?")
    next(iter(dropped))  # read one piece, then abandoned
    third = chat.send("Anything else?")
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user"]  # not two user turns in a row
    fresh = vlm.generate(messages=list(chat.messages), images=[str(image)], **OPTS)
    assert third.text() == fresh
    dropped.close()  # the abandoned reply closed after a later one: it records nothing
    fourth = chat.send("Last question?")
    fresh = vlm.generate(messages=list(chat.messages), images=[str(image)], **OPTS)
    assert fourth.text() == fresh


def test_media_given_inline_as_objects_and_single_values(vlm, image):
    """`{"type": "image", "image": x}` takes what the `images` argument takes (a PIL image,
    bytes, a Path), as transformers' processor does; a single string is one question or one
    image, never its letters."""
    from pathlib import Path

    expected = vlm.generate([str(image)], "Describe.", tiling="low", **OPTS)
    for source in (Image.open(image), image.read_bytes(), Path(image)):
        messages = [
            {"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": "Describe."}]}
        ]
        assert vlm.generate(messages=messages, tiling="low", **OPTS) == expected
    assert vlm.generate(bytearray(image.read_bytes()), "Describe.", tiling="low", **OPTS) == expected
    assert vlm.ask(str(image), "Describe.", tiling="low", **OPTS) == [expected]
    with pytest.raises(TypeError, match="tiling must be"):
        vlm.generate([str(image)], "Describe.", tiling=512)


def test_threads_sharing_one_model_get_their_own_answers(vlm, image):
    """Decode steps of several threads on one model: each answer is the one it gets alone (the
    step buffers were shared by every state, and threads overwrote each other's tokens)."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Question {i}: what colour is it?" for i in range(4)]
    alone = [vlm.generate([str(image)], p, tiling="low", **OPTS) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: vlm.generate([str(image)], p, tiling="low", **OPTS), prompts))
    assert together == alone


def test_a_reply_with_no_room_in_the_context_is_refused_before_generating(tiny_onnx_dir, image):
    """describe and ask used to generate until the context's end, then fail, the text lost
    (`--json` printed nothing); chat refused up front. Now all three refuse first, saying
    which -n fits, as a user error (no traceback hint)."""
    model = str(tiny_onnx_dir(NAME))
    for args in (
        ("describe", str(image), "-n", "100000", "--detail", "low", "--json"),
        ("ask", str(image), "-q", "Why?", "-n", "100000", "--detail", "low"),
    ):
        result = invoke_cli(*args, "-m", model)
        err = result.stderr.decode()
        assert result.returncode == 1 and result.stdout == b"", err
        assert "plus 100000 new ones, but the model's context holds 8192: use -n" in err
        assert "SMOLVLM_DEBUG" not in err and "Traceback" not in err


def test_save_keeps_names_and_text_that_are_not_utf8(vlm, image, tmp_path):
    """An image named with bytes that are not UTF-8, and such bytes typed in a message (both
    reach Python as lone surrogates): /save wrote nothing, with an encoding error."""
    odd = tmp_path / os.fsdecode(b"r\xffd.png")
    odd.write_bytes(image.read_bytes())
    chat = vlm.chat(max_new_tokens=2)
    chat.send(os.fsdecode(b"hi \xff there"), images=[str(odd)]).text()
    chat.save(tmp_path / "chat.json")
    saved = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert saved[0]["content"][0] == {"type": "image", "path": str(odd)}
    assert saved[0]["content"][1]["text"] == os.fsdecode(b"hi \xff there")
