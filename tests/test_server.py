"""`smolvlm serve` with the real `openai` client against a live server on 127.0.0.1 (tiny fp32 model).

Replies must equal `smolvlm describe` / the library's one-at-a-time replies; every bad request
gets its status and an OpenAI-shaped error, and the server keeps serving.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import invoke_cli, stdout_of  # noqa: E402
from server_helpers import NAME, data_uri, live_server, noise_png, user  # noqa: E402
from smolvlm_cli import SmolVLM  # noqa: E402
from smolvlm_cli.server.settings import ServerSettings  # noqa: E402

KEY = "test-key"
ORIGIN = "https://app.example"
MAX_IMAGE_BYTES = 200_000


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def vlm(model_dir):
    return SmolVLM.from_pretrained(model_dir, dtype="fp32")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    outside = tmp_path_factory.mktemp("outside")
    return {
        "root": root,
        "photo": root / "photo.png",
        "outside": outside / "secret.png",
        "photo_bytes": noise_png(root / "photo.png"),
        "other_bytes": noise_png(outside / "secret.png", seed=1),
    }


@pytest.fixture(scope="module")
def server(vlm, model_dir, files):
    settings = ServerSettings(
        model_id=NAME,
        api_keys=(KEY,),
        max_batch=4,
        max_queue=8,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_images=3,
        local_root=files["root"],
        cors_origins=(ORIGIN,),
    )
    with live_server(vlm, settings) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    import httpx2

    with httpx2.Client(base_url=server.url, timeout=60) as c:
        yield c


def _stream_text(client, **kwargs):
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_replies_equal_describe(client, model_dir, files):
    cli = invoke_cli(
        "describe",
        files["photo"],
        "What is in the picture?",
        "-m",
        model_dir,
        "--dtype",
        "fp32",
        "-n",
        "12",
        "--no-stream",
        "-q",
    )
    assert cli.returncode == 0, cli.stderr
    expected = stdout_of(cli).removesuffix("\n")
    messages = user("What is in the picture?", data_uri(files["photo_bytes"]))
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason in ("stop", "length")
    streamed, chunks = _stream_text(client, model=NAME, messages=messages, max_tokens=12)
    assert streamed == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # the same file by path, under the allowed root: the same reply
    by_path = client.chat.completions.create(
        model=NAME, messages=user("What is in the picture?", "photo.png"), max_tokens=12
    )
    assert by_path.choices[0].message.content == expected


def test_usage_counts_and_timings(client, vlm, files):
    messages = user("Describe it.", data_uri(files["photo_bytes"]))
    prompt_tokens = len(vlm.prepare([files["photo"]], "Describe it.").input_ids)
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=7)
    assert whole.usage.prompt_tokens == prompt_tokens
    assert whole.usage.total_tokens == prompt_tokens + whole.usage.completion_tokens
    timings = whole.model_extra["timings"]
    assert timings["prompt_n"] == prompt_tokens and timings["image_tiles"] > 0
    _, chunks = _stream_text(
        client, model=NAME, messages=messages, max_tokens=7, stream_options={"include_usage": True}
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == {
        **whole.usage.model_dump(),
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    _, plain = _stream_text(client, model=NAME, messages=messages, max_tokens=7)
    assert all(c.usage is None for c in plain)


def test_multi_turn_system_and_several_images(client, vlm, files):
    photo, other = files["photo_bytes"], files["other_bytes"]
    messages = [
        {"role": "system", "content": "Answer briefly."},
        *user("Compare them.", data_uri(photo), data_uri(other)),
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "How?"},
    ]
    hf = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare them."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {"role": "user", "content": [{"type": "text", "text": "How?"}]},
    ]
    expected = vlm.generate([photo, other], messages=hf, max_new_tokens=10)
    reply = client.chat.completions.create(model=NAME, messages=messages, max_completion_tokens=10)
    assert reply.choices[0].message.content == expected


def test_stop_strings_and_seeded_sampling(client):
    messages = user("Say something.")
    full = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12).choices[0].message.content
    words = full.split()
    assert len(words) > 2, full
    cut = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, stop=[words[2]])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(words[2])]
    streamed, _ = _stream_text(client, model=NAME, messages=messages, max_tokens=12, stop=words[2])
    assert streamed == cut.choices[0].message.content
    sampled = [
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_models_health_and_feature_cache(client, http, server, files):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 4
    before = server.scheduler.stats.tiles_cached
    client.chat.completions.create(model=NAME, messages=user("Again?", data_uri(files["photo_bytes"])), max_tokens=2)
    assert server.scheduler.stats.tiles_cached > before  # the photo's tiles were encoded before


def test_api_key_enforced(server, http):
    wrong = openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model=NAME, messages=user("Hi"))
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    missing = http.post("/v1/chat/completions", json={"messages": user("Hi")})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    other_header = http.post(
        "/v1/chat/completions", json={"messages": user("Hi"), "max_tokens": 1}, headers={"X-Api-Key": KEY}
    )
    assert other_header.status_code == 200
    assert http.get("/health").status_code == 200  # public


def _bomb() -> bytes:
    from bad_files import bomb_png

    return bomb_png(20000, 20000)


BAD_REQUESTS = {
    # name: (body or raw bytes, status, code)
    "malformed_json": (b'{"messages": [', 400, "invalid_json"),
    "not_an_object": (b"[1, 2]", 400, "invalid_json"),
    "deeply_nested_json": (b'{"messages":' + b"[" * 1100 + b"]" * 1100 + b"}", 400, "invalid_json"),  # was a 500
    "missing_messages": ({"model": NAME}, 400, "missing_required_parameter"),
    "messages_not_a_list": ({"messages": "hi"}, 400, "invalid_type"),
    "bad_role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value"),
    "role_a_list": ({"messages": [{"role": ["user"], "content": "hi"}]}, 400, "invalid_value"),  # was a 500
    "tool_choice_without_tools": ({"messages": user("hi"), "tool_choice": "required"}, 400, "unsupported_value"),
    "content_wrong_type": ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_type"),
    "max_tokens_wrong_type": ({"messages": user("hi"), "max_tokens": "ten"}, 400, "invalid_type"),
    "temperature_out_of_range": ({"messages": user("hi"), "temperature": 5}, 400, "invalid_value"),
    "stream_wrong_type": ({"messages": user("hi"), "stream": "yes"}, 400, "invalid_type"),
    "n_above_one": ({"messages": user("hi"), "n": 2}, 400, "unsupported_value"),
    "n_a_string": ({"messages": user("hi"), "n": "2"}, 400, "invalid_type"),  # was "only n=1"
    "seed_above_int64": ({"messages": user("hi"), "seed": 2**63}, 400, "invalid_value"),
    "seed_far_above_int64": ({"messages": user("hi"), "seed": 10**30}, 400, "invalid_value"),
    # OpenAI parameters that were silently ignored
    "logit_bias": ({"messages": user("hi"), "logit_bias": {"50256": -100}}, 400, "unsupported_parameter"),
    "top_logprobs": ({"messages": user("hi"), "top_logprobs": 0}, 400, "unsupported_parameter"),
    "modalities_audio": ({"messages": user("hi"), "modalities": ["text", "audio"]}, 400, "unsupported_value"),
    "audio": ({"messages": user("hi"), "audio": {"voice": "alloy", "format": "wav"}}, 400, "unsupported_parameter"),
    "prediction": (
        {"messages": user("hi"), "prediction": {"type": "content", "content": "x"}},
        400,
        "unsupported_parameter",
    ),
    "stream_options_without_stream": (
        {"messages": user("hi"), "stream_options": {"include_usage": True}},
        400,
        "invalid_value",
    ),
    "empty_content_list": ({"messages": [{"role": "user", "content": []}]}, 400, "invalid_value"),  # was the template's
    "bad_base64": ({"messages": user("hi", "data:image/png;base64,***not base64***")}, 400, "invalid_base64"),
    "data_uri_not_an_image_type": ({"messages": user("hi", data_uri(b"hello", "text/plain"))}, 400, "invalid_image"),
    "data_uri_not_image_bytes": ({"messages": user("hi", data_uri(b"just some text"))}, 400, "invalid_image"),
    "image_over_the_byte_limit": (
        {"messages": user("hi", data_uri(b"\x89PNG" + bytes(MAX_IMAGE_BYTES)))},
        413,
        "image_too_large",
    ),
    "decompression_bomb": (lambda: {"messages": user("hi", data_uri(_bomb()))}, 400, "invalid_image"),
    "too_many_images": (lambda: {"messages": user("hi", *[data_uri(noise_png())] * 4)}, 400, "too_many_images"),
    "prompt_over_the_context": ({"messages": user("word " * 9000)}, 400, "context_length_exceeded"),
    "max_tokens_over_the_context": ({"messages": user("hi"), "max_tokens": 100_000}, 400, "context_length_exceeded"),
    "max_completion_tokens_over_the_context": (
        {"messages": user("hi"), "max_completion_tokens": 100_000},
        400,
        "context_length_exceeded",
    ),
    "unknown_model": ({"model": "gpt-9", "messages": user("hi")}, 404, "model_not_found"),
    "remote_url_not_allowed": ({"messages": user("hi", "https://example.com/cat.jpg")}, 403, "remote_images_disabled"),
    "local_path_outside_root": ("outside", 403, "outside_allowed_root"),
    "local_path_escaping_root": ({"messages": user("hi", "file:///etc/passwd")}, 403, "outside_allowed_root"),
    "local_folder": ({"messages": user("hi", ".")}, 400, "invalid_image"),
    "relative_escape": ({"messages": user("hi", "../../etc/passwd")}, 403, "outside_allowed_root"),
    "video_data_uri_not_a_video": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": data_uri(b"not a video at all", "video/mp4")}}
                    ],
                }
            ]
        },
        400,
        "invalid_video",
    ),
    "unknown_detail": ({"messages": user("hi", "photo.png", detail="extreme")}, 400, "invalid_value"),
    "unsupported_scheme": ({"messages": user("hi", "ftp://example.com/a.png")}, 400, "invalid_image_url"),
    "image_in_an_assistant_message": (
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                *user("hi"),
            ]
        },
        400,
        "invalid_value",
    ),
}


# the `param` of the cases that name one
PARAMS = {
    "n_a_string": "n",
    "seed_above_int64": "seed",
    "logit_bias": "logit_bias",
    "top_logprobs": "top_logprobs",
    "modalities_audio": "modalities",
    "audio": "audio",
    "prediction": "prediction",
    "stream_options_without_stream": "stream_options",
    "empty_content_list": "messages[0].content",
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_corpus(case, http, files):
    body, status, code = BAD_REQUESTS[case]
    if body == "outside":
        body = {"messages": user("hi", str(files["outside"]))}
    body = body() if callable(body) else body
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(
        "/v1/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if case.startswith("max_completion_tokens"):  # the field the client sent, not its alias
        assert error["param"] == "max_completion_tokens" and "max_completion_tokens" in error["message"]
    if case in PARAMS:
        assert error["param"] == PARAMS[case], error
    if case == "empty_content_list":
        assert error["message"] == "'messages[0].content' must not be empty"
    assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    "extra",
    [
        {"logit_bias": {}, "top_logprobs": None, "audio": None, "prediction": None, "modalities": ["text"]},
        {"stream_options": None, "n": 1},
        {"seed": -(2**63)},
        {"seed": 2**63 - 1},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},  # as "content": ""
    ],
)
def test_what_the_refusals_leave_alone(http, extra):
    """The neutral values of the refused parameters, the int64 seed range's ends and an empty
    text part are answered."""
    body = {"messages": user("hi"), "max_tokens": 1, **extra}
    response = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text


def test_max_request_tokens_above_the_models_context_is_refused_at_start(vlm):
    """Rows allowed past the model's context would outgrow the KV cache inside a shared decoder
    step and fail every reply of the batch; the setting is refused before serving instead."""
    from smolvlm_cli.errors import SmolVLMError
    from smolvlm_cli.server.app import create_app

    context = vlm.config.max_position_embeddings
    with pytest.raises(SmolVLMError, match=f"more than the model's context \\({context} tokens\\)") as refused:
        create_app(vlm, ServerSettings(max_request_tokens=context + 1))
    assert f"--max-request-tokens {context} or less" in refused.value.hint
    assert create_app(vlm, ServerSettings(max_request_tokens=context)).state.server.context == context


def test_missing_or_wrong_key_and_unknown_route_are_openai_shaped(http):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = http.post("/v1/chat/completions", json={"messages": user("hi")}, headers=headers)
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["message"]
    assert http.get("/health").json()["status"] == "ok"


def test_image_detail_sets_the_tiling(client, vlm, files):
    messages = user("What is it?", data_uri(files["photo_bytes"]), detail="low")
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6)
    assert reply.model_extra["timings"]["image_tiles"] == 1
    assert reply.choices[0].message.content == vlm.generate(
        [files["photo"]], "What is it?", max_new_tokens=6, tiling="low"
    )


def test_a_405_says_allow_and_an_internal_error_is_logged_with_cors(http, server, monkeypatch, caplog):
    """A 405 carried no Allow header; a 500 was answered outside the middleware: no CORS header
    (a browser page could not read it), and its log line had no status."""
    wrong = http.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert "GET" in http.post("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).headers["allow"]

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.app.state.server, "check_model", broken)
    with caplog.at_level("INFO", logger="smolvlm.server"):
        failed = http.post(
            "/v1/chat/completions",
            json={"messages": user("hi")},
            headers={"Authorization": f"Bearer {KEY}", "Origin": ORIGIN},
        )
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert failed.headers["access-control-allow-origin"] == ORIGIN
    lines = [r.getMessage() for r in caplog.records if "POST /v1/chat/completions" in r.getMessage()]
    assert lines and " 500 " in lines[-1] and "internal_error" in lines[-1]


def test_cors_for_the_allowed_origin_only(http):
    preflight = http.options(
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert http.get("/health", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in http.get("/health", headers={"Origin": "https://evil.example"}).headers


@pytest.fixture(scope="module")
def web(files):
    """A plain HTTP server: /photo.png, /big.bin (over the byte limit), /slow.png (answers late)."""
    import http.server
    import threading
    import time

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.png":
                time.sleep(1.5)
            body = bytes(MAX_IMAGE_BYTES + 10) if self.path == "/big.bin" else files["photo_bytes"]
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (too large, too slow): as it should
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_images_when_allowed_are_capped_in_size_and_time(web, files):
    from smolvlm_cli.server.images import image_bytes
    from smolvlm_cli.server.schema import ApiError, ImageRef

    settings = ServerSettings(allow_remote_images=True, max_image_bytes=MAX_IMAGE_BYTES, remote_timeout_s=0.5)
    assert image_bytes(ImageRef(f"{web}/photo.png", "url"), settings) == files["photo_bytes"]
    for path, status, code in (("/big.bin", 413, "image_too_large"), ("/slow.png", 400, "image_download_failed")):
        with pytest.raises(ApiError) as info:
            image_bytes(ImageRef(f"{web}{path}", "url"), settings)
        assert (info.value.status, info.value.code) == (status, code)


def test_a_failure_after_the_stream_began_is_its_last_event(http, client, monkeypatch):
    from smolvlm_cli.row_decoding import RowBatch

    def broken_step(self, return_exceptions=False):
        raise RuntimeError("the decoder broke")

    monkeypatch.setattr(RowBatch, "step", broken_step)
    body = {"messages": user("Talk."), "max_tokens": 20, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "model_error" and "the decoder broke" in error["message"]
    monkeypatch.undo()
    reply = client.chat.completions.create(model=NAME, messages=user("Talk."), max_tokens=3)
    assert reply.choices[0].finish_reason == "length"  # a new batch, serving again


def test_video_parts_equal_the_library(client, vlm, files):
    pytest.importorskip("av")
    from video_clips import make_clip

    clip = make_clip(files["root"] / "clip.mp4", seconds=2, fps=10, size=(48, 32))
    hf = [
        {"role": "user", "content": [{"type": "video", "path": str(clip)}, {"type": "text", "text": "What happens?"}]}
    ]
    expected = vlm.generate(messages=hf, max_new_tokens=8)
    parts = [
        {"type": "video_url", "video_url": {"url": data_uri(clip.read_bytes(), "video/mp4")}},
        {"type": "text", "text": "What happens?"},
    ]
    sent = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=8)
    assert sent.choices[0].message.content == expected
    assert sent.model_extra["timings"]["image_tiles"] > 0
    parts[0]["video_url"]["url"] = "clip.mp4"  # a local file under the allowed root
    streamed, _ = _stream_text(client, model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=8)
    assert streamed == expected


def test_a_video_that_fails_to_decode_in_the_model_thread_is_a_400(http, files, monkeypatch):
    """A truncated clip passes the probe and fails only when its frames decode, on the model
    thread: still the client's 400 (SDKs retry a 5xx), whole or as the stream's last event."""
    pytest.importorskip("av")
    from smolvlm_cli.errors import VideoError
    from smolvlm_cli.reply import Replier
    from video_clips import make_clip

    clip = make_clip(files["root"] / "torn.mp4", seconds=1, fps=10, size=(48, 32))

    def torn(self, prepared, stats, cache=None):
        raise VideoError(f"cannot decode frame 3 of {clip.name}: truncated")
        yield

    monkeypatch.setattr(Replier, "media_features", torn)
    parts = [
        {"type": "video_url", "video_url": {"url": data_uri(clip.read_bytes(), "video/mp4")}},
        {"type": "text", "text": "What happens?"},
    ]
    body = {"model": NAME, "messages": [{"role": "user", "content": parts}], "max_tokens": 3}
    headers = {"Authorization": f"Bearer {KEY}"}
    whole = http.post("/v1/chat/completions", json=body, headers=headers)
    assert whole.status_code == 400, whole.text
    assert whole.json()["error"]["code"] == "invalid_video" and "frame 3" in whole.json()["error"]["message"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "invalid_video"


def test_a_client_that_hangs_up_mid_upload_is_logged_as_499_not_an_error(server, caplog):
    import logging
    import socket
    import time

    host, port = server.url.rsplit("//", 1)[1].split(":")
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b'{"messages": [' + b" " * 500
            )
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not any("/v1/chat/completions" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the request was never logged"
            time.sleep(0.02)
    logged = [r.getMessage() for r in caplog.records if "/v1/chat/completions" in r.getMessage()]
    assert " 499 " in logged[-1], logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
