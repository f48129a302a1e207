"""Continuous batching in `smolvlm serve`: 16 clients at once get their one-at-a-time replies; a
client that goes away frees its row for a waiting one; a full queue answers 503 at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from server_helpers import NAME, data_uri, live_server, noise_png, user  # noqa: E402
from smolvlm_cli import SmolVLM  # noqa: E402
from smolvlm_cli.server.settings import ServerSettings  # noqa: E402

LONG = 2000  # tokens: a reply that would take seconds, cut short by its client


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


def _vlm(model_dir):
    return SmolVLM.from_pretrained(model_dir, dtype="fp32")


@pytest.fixture(scope="module")
def vlm(model_dir):
    return _vlm(model_dir)


def _until(condition, timeout: float = 5.0) -> float:
    """Seconds until `condition()` held (fails after `timeout`)."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - t0


def test_sixteen_clients_get_their_one_at_a_time_replies(vlm):
    images = [noise_png(size=(40 + 8 * i, 32), seed=i) for i in range(3)]
    asks = []  # 8 prompts, each asked twice (streamed and not)
    for i in range(8):
        prompt = ["Describe it.", "What color?", "Any text?", "Count them."][i % 4] + f" ({i})"
        image = images[i % 3] if i % 4 != 3 else None  # some without an image
        # replies end at different steps; images as one tile (detail low: tiled ones are tested
        # in test_server.py, and take 5x the time here)
        asks.append((prompt, image, 4 + (i * 5) % 17))
    one_at_a_time = [
        vlm.generate([image] if image else [], prompt, max_new_tokens=n, tiling="low") for prompt, image, n in asks
    ]
    cases = [(*ask, stream, "low") for stream in (True, False) for ask in asks]
    expected = one_at_a_time * 2

    settings = ServerSettings(model_id=NAME, max_batch=4, max_queue=16)
    with live_server(vlm, settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)

        def ask(case):
            prompt, image, n, stream, detail = case
            messages = user(prompt, *([data_uri(image)] if image else []), detail=detail)
            if not stream:
                return (
                    client.chat.completions.create(model=NAME, messages=messages, max_tokens=n)
                    .choices[0]
                    .message.content
                )
            chunks = client.chat.completions.create(model=NAME, messages=messages, max_tokens=n, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(ask, cases))
        stats = server.scheduler.stats
    assert replies == expected
    assert stats.completed == 16 and stats.failed == 0 and stats.rejected == 0
    assert stats.batched_steps > 0 and stats.max_rows > 1, stats  # the decoder ran shared steps
    assert stats.tiles_cached > 0  # three distinct images among 12 requests


@pytest.fixture(scope="module")
def one_row(model_dir):
    """A server with one row and a queue of one."""
    with live_server(_vlm(model_dir), ServerSettings(model_id=NAME, max_batch=1, max_queue=1)) as server:
        yield server


def test_disconnect_frees_the_row_for_a_waiting_request_and_a_full_queue_is_503(one_row):
    import httpx2

    scheduler = one_row.scheduler
    client = openai.OpenAI(base_url=one_row.base_url, api_key="none", max_retries=0, timeout=60)
    short = {}

    with httpx2.Client(base_url=one_row.url, timeout=60) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json={"messages": user("Talk."), "max_tokens": LONG, "stream": True}
        ) as long_reply:
            lines = long_reply.iter_lines()
            assert next(lines).startswith("data: ")  # streaming (the role chunk comes before admission)
            _until(lambda: scheduler.running == 1 and scheduler.waiting == 0)  # it holds the only row
            waiter = threading.Thread(
                target=lambda: short.update(
                    reply=client.chat.completions.create(model=NAME, messages=user("Hi."), max_tokens=3)
                )
            )
            waiter.start()
            _until(lambda: scheduler.waiting == 1)  # the queue is full now
            t0 = time.monotonic()
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model=NAME, messages=user("Me too."), max_tokens=3)
            assert time.monotonic() - t0 < 1.0
            assert info.value.status_code == 503 and info.value.body["code"] == "server_overloaded"
            assert info.value.response.headers["retry-after"]
        # the long reply's client hung up: its row goes to the waiting request at once
        waiter.join(10)
    assert short["reply"].choices[0].finish_reason in ("stop", "length")
    assert scheduler.stats.cancelled == 1 and scheduler.running == 0
    assert scheduler.stats.generated_tokens < LONG


def test_a_non_streamed_client_that_times_out_frees_its_row(one_row):
    import httpx2

    scheduler = one_row.scheduler
    cancelled = scheduler.stats.cancelled
    with httpx2.Client(base_url=one_row.url, timeout=0.5) as http, pytest.raises(httpx2.TimeoutException):
        http.post("/v1/chat/completions", json={"messages": user("Talk."), "max_tokens": LONG})
    _until(lambda: scheduler.stats.cancelled == cancelled + 1 and scheduler.running == 0)


def test_a_failing_request_fails_alone(vlm):
    """A request whose vision or prefill fails gets its error; the worker goes on with the next."""
    from smolvlm_cli.options import GenerationOptions
    from smolvlm_cli.server.scheduler import Job, Scheduler

    good = vlm.prepare([noise_png()], "Hi.", tiling="low")
    broken = vlm.prepare([noise_png()], "Hi.", tiling="low")
    broken.input_ids = broken.input_ids[:-70]  # fewer image tokens than the tile's features
    events: dict[str, list] = {"broken": [], "good": []}
    scheduler = Scheduler(vlm, max_batch=2, max_queue=2).start()
    try:
        for name, prepared in (("broken", broken), ("good", good)):
            scheduler.submit(
                Job(
                    prepared,
                    GenerationOptions(max_new_tokens=3),
                    lambda kind, value, name=name: events[name].append((kind, value)),
                )
            )
        _until(lambda: events["good"] and events["good"][-1][0] == "done")
    finally:
        scheduler.close()
    assert events["broken"][-1][0] == "error" and "image" in str(events["broken"][-1][1])
    assert scheduler.stats.failed == 1 and scheduler.stats.completed == 1


def test_stop_strings_are_found_across_deltas():
    from smolvlm_cli.server.scheduler import StopText

    stop = StopText(["lo w", "xyz"])
    assert [stop.feed(d) for d in ("Hel", "lo", " wo", "rld")] == ["He", "l", "", ""]
    assert stop.stopped and stop.flush() == ""
    held = StopText(["END"])
    assert held.feed("the E") == "the " and held.feed("N") == "" and held.feed("X") == "ENX"
    assert held.feed("it E") == "it " and held.flush() == "E" and not held.stopped


@pytest.mark.parametrize("media", ["image", "video"])
def test_a_newcomers_vision_runs_between_the_running_replys_steps(vlm, tmp_path, monkeypatch, media):
    """While a reply streams, a newcomer's vision goes one image tile (or one video frame) a
    turn, with a decoder step for the running reply after each: the running stream never waits
    for a whole admission. The newcomer's reply equals the library's."""
    from smolvlm_cli.options import GenerationOptions
    from smolvlm_cli.server.scheduler import Job, Scheduler

    if media == "video":
        pytest.importorskip("av")
        from video_clips import make_clip

        source = str(make_clip(tmp_path / "clip.mp4", seconds=5, fps=2, size=(48, 32)))
    else:
        source = noise_png(size=(300, 200), seed=7)  # 2x2 tiles at the tiny model's 1024 px + the global one
    newcomer = vlm.prepare([source], "What is it?")
    units = newcomer.media[0].num_frames if media == "video" else newcomer.num_tiles
    assert units > 4
    scheduler = None
    steps_at_encode: list[int] = []
    encode = vlm.backend.encode_images

    def spy(pixels, mask):
        steps_at_encode.append(scheduler.stats.steps)
        return encode(pixels, mask)

    monkeypatch.setattr(vlm.backend, "encode_images", spy)
    events: dict[str, list] = {"long": [], "new": []}
    scheduler = Scheduler(vlm, max_batch=2, max_queue=2, feature_cache_tiles=0).start()
    try:
        long = vlm.prepare([], "Talk.")
        scheduler.submit(
            Job(
                long,
                GenerationOptions(max_new_tokens=400, ignore_eos=True),
                lambda kind, value: events["long"].append(kind),
            )
        )
        _until(lambda: "delta" in events["long"])
        scheduler.submit(
            Job(newcomer, GenerationOptions(max_new_tokens=6), lambda kind, value: events["new"].append((kind, value)))
        )
        _until(lambda: events["new"] and events["new"][-1][0] in ("done", "error"), timeout=60)
    finally:
        scheduler.close()
    assert events["new"][-1][0] == "done", events["new"][-1]
    assert len(steps_at_encode) == units  # one vision run per tile or frame
    assert all(b > a for a, b in zip(steps_at_encode, steps_at_encode[1:])), steps_at_encode
    monkeypatch.undo()
    text = "".join(v for k, v in events["new"] if k == "delta")
    assert text == vlm.generate([source], "What is it?", max_new_tokens=6)


def test_a_client_that_leaves_during_its_vision_stops_it(vlm, monkeypatch):
    """With no reply running, a newcomer's tiles are encoded in one go: a client that leaves
    meanwhile (a timeout on a many-tile request) stops it at the next tile, not after the last,
    and its queue place is freed."""
    from smolvlm_cli.options import GenerationOptions
    from smolvlm_cli.server.scheduler import Job, Scheduler

    prepared = vlm.prepare([noise_png(size=(300, 200), seed=3)], "What is it?")
    assert prepared.num_tiles == 5
    events: list[str] = []
    job = Job(prepared, GenerationOptions(max_new_tokens=3), lambda kind, value: events.append(kind))
    encode, calls = vlm.backend.encode_images, []

    def client_leaves_at_the_first_tile(pixels, mask):
        calls.append(1)
        job.cancel()
        return encode(pixels, mask)

    monkeypatch.setattr(vlm.backend, "encode_images", client_leaves_at_the_first_tile)
    scheduler = Scheduler(vlm, max_batch=2, max_queue=2, feature_cache_tiles=0).start()
    try:
        scheduler.submit(job)
        _until(lambda: scheduler.stats.cancelled == 1)
        assert scheduler.waiting == 0
    finally:
        scheduler.close()
    assert len(calls) == 1 and "done" not in events


def test_releasing_a_cancelled_job_does_not_hold_the_scheduler_lock(vlm, monkeypatch):
    """Releasing a cancelled job can take a while (closing a video joins its frame decoder):
    it happens outside the lock the event loop takes to submit and wake, so no request waits."""
    from smolvlm_cli.options import GenerationOptions
    from smolvlm_cli.server.scheduler import Job, Scheduler

    releasing, proceed = threading.Event(), threading.Event()
    real_release = Job.release
    events: dict[str, list] = {"long": [], "gone": [], "next": []}

    def job(name: str, prompt: str, n: int) -> Job:
        options = GenerationOptions(max_new_tokens=n, ignore_eos=True)
        return Job(vlm.prepare([], prompt), options, lambda kind, value: events[name].append(kind))

    long, gone, after = job("long", "Talk.", 400), job("gone", "Hi.", 3), job("next", "Hello.", 3)

    def slow_release(self):
        if self is gone:
            releasing.set()
            proceed.wait(10)
        real_release(self)

    monkeypatch.setattr(Job, "release", slow_release)
    scheduler = Scheduler(vlm, max_batch=1, max_queue=4).start()
    try:
        scheduler.submit(long)
        _until(lambda: "delta" in events["long"])
        scheduler.submit(gone)  # waits: the one row is taken
        gone.cancel()
        scheduler.wake()
        assert releasing.wait(10)
        t0 = time.monotonic()
        scheduler.submit(after)
        assert time.monotonic() - t0 < 0.5
    finally:
        proceed.set()
        scheduler.close()


def test_bodies_being_received_are_capped_at_what_the_queue_could_take(one_row):
    """Uploads still arriving count against max_batch + max_queue (2 here): a third gets 503 at
    once instead of a third large body in memory; once they are gone the server takes requests."""
    import socket

    import httpx2

    host, port = one_row.url.rsplit("//", 1)[1].split(":")
    intake = lambda: one_row.app.state.server._intake  # noqa: E731
    parked = []
    for _ in range(2):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b'{"messages": [' + b" " * 1000
        )
        parked.append(sock)
    try:
        _until(lambda: intake() == 2)
        busy = httpx2.post(f"{one_row.base_url}/chat/completions", json={"messages": user("Hi")}, timeout=30)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "server_overloaded"
    finally:
        for sock in parked:
            sock.close()
    _until(lambda: intake() == 0)
    client = openai.OpenAI(base_url=one_row.base_url, api_key="none", max_retries=0, timeout=60)
    assert client.chat.completions.create(model=NAME, messages=user("Hi"), max_tokens=2).choices[0].message.content
