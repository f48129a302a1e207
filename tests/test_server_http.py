"""`smolvlm serve` at the HTTP level: time limits, routes, auth and encoding headers, the log of a
client that leaves, the stream's chunks, the answers while the model loads, and error messages
that never show a server path."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx2 = pytest.importorskip("httpx2")

from server_helpers import NAME, live_server, user  # noqa: E402
from smolvlm_cli import SmolVLM  # noqa: E402
from smolvlm_cli.server.settings import ServerSettings  # noqa: E402

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def vlm(model_dir):
    return SmolVLM.from_pretrained(model_dir, dtype="fp32")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def server(vlm, root):
    settings = ServerSettings(model_id=NAME, api_keys=(KEY,), max_batch=2, max_queue=2, local_root=root)
    with live_server(vlm, settings) as live:
        yield live


@pytest.fixture(scope="module")
def http(server):
    with httpx2.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
        yield client


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def _head_only(url: str, length: int = 1000) -> socket.socket:
    """A client that sends the headers of a chat request and 1 byte of its `length`-byte body."""
    host, port = url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n{" % length
    )
    return sock


def _read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_body_that_never_arrives_gets_408_and_frees_its_slot(vlm):
    """Clients that sent their headers and never finished the body held every intake slot:
    everyone else got 503 for as long as they stayed connected."""
    settings = ServerSettings(model_id=NAME, max_batch=1, max_queue=1, body_timeout_s=0.5)
    with live_server(vlm, settings) as live, httpx2.Client(base_url=live.url, timeout=30) as client:
        stalled = [_head_only(live.url) for _ in range(2)]  # as many as max_batch + max_queue
        try:
            _until(lambda: live.app.state.server._intake == 2)
            busy = client.post("/v1/chat/completions", json={"messages": user("Hi"), "max_tokens": 1})
            assert busy.status_code == 503  # they hold every slot ...
            for sock in stalled:  # ... until their time is up
                head, _, body = _read_all(sock).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), head
                error = json.loads(body)["error"]
                assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        finally:
            for sock in stalled:
                sock.close()
        assert live.app.state.server._intake == 0
        reply = client.post("/v1/chat/completions", json={"messages": user("Hi"), "max_tokens": 1})
        assert reply.status_code == 200, reply.text


def test_a_tiny_temperature_is_answered_as_greedy(http):
    """A temperature of 1e-40 was a 500 ("Probabilities contain NaN"), or an error event."""
    body = {"messages": user("Say something."), "max_tokens": 6}
    greedy = http.post("/v1/chat/completions", json={**body, "temperature": 0})
    for temperature in (1e-40, 1e-39):
        tiny = http.post("/v1/chat/completions", json={**body, "temperature": temperature, "seed": 1})
        assert tiny.status_code == 200, tiny.text
        assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "temperature": 1e-40, "stream": True}) as r:
        events = _events(r)
    assert not [e for e in events if "error" in e]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == greedy.json()["choices"][0]["message"]["content"]


def test_video_errors_name_the_part_not_a_server_path(http, vlm, root, monkeypatch):
    """A video's errors showed the server's temporary file (`cannot read video
    /tmp/smolvlm-serve-xxxx/video1.mp4: ...`) or its --allow-local-files root."""
    (root / "bad.mp4").write_bytes(b"not a video at all")

    def ask(url: str, text: str = "") -> dict:
        parts = [{"type": "text", "text": "What happens?"}, {"type": "video_url", "video_url": {"url": url}}]
        response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_video" and error["param"] == "messages[0].content[1]", error
        assert "messages[0].content[1]" in error["message"] and text in error["message"], error
        for secret in ("/tmp", "smolvlm-serve", "video1", str(root), "bad.mp4"):
            assert secret not in error["message"], error
        return error

    for url in ("data:video/mp4;base64,AAAA", "bad.mp4"):
        ask(url)
    # a model without video support says so before reading the file
    monkeypatch.setattr(vlm.processor, "config", replace(vlm.processor.config, video_fps=None))
    for url in ("data:video/mp4;base64,AAAA", "bad.mp4"):
        ask(url, "cannot take video messages[0].content[1]")


def test_a_streamed_client_that_hangs_up_is_logged_as_499(server, caplog):
    """It was logged as 200 with no note (a non-streamed one is logged 499); its reply still
    stops at once."""
    cancelled = server.scheduler.stats.cancelled
    body = {"messages": user("Talk."), "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with caplog.at_level(logging.INFO, logger="smolvlm.server"):
        with httpx2.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                _until(lambda: server.scheduler.running == 1)
        _until(lambda: server.scheduler.stats.cancelled == cancelled + 1 and server.scheduler.running == 0)
        _until(lambda: any("POST /v1/chat/completions" in r.getMessage() for r in caplog.records))
    logged = [r.getMessage() for r in caplog.records if "POST /v1/chat/completions" in r.getMessage()]
    assert " 499 " in logged[-1] and "hung up" in logged[-1], logged


def test_include_usage_puts_usage_null_on_every_other_chunk(http):
    """As OpenAI: with include_usage every chunk carries `"usage": null` but the last, which has
    the counts; without it no chunk has the key."""
    body = {"messages": user("Hi"), "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}) as r:
        events = _events(r)
    assert len(events) > 2
    assert all("usage" in e and e["usage"] is None for e in events[:-1]), events
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert not [e for e in _events(r) if "usage" in e]


def test_every_route_is_served_with_or_without_a_trailing_slash_and_v1(http):
    """`/v1/models/` was "the model '' does not exist", `/v1/models/ID/` a 404, a POST to
    `/v1/chat/completions/` a 307 (clients do not re-POST it), and `/models` a 404."""
    chat = {"messages": user("Hi"), "max_tokens": 1}
    for path in ("/v1/chat/completions/", "/chat/completions", "/chat/completions/"):
        response = http.post(path, json=chat)
        assert response.status_code == 200 and response.json()["object"] == "chat.completion", path
    for path in ("/v1/models/", "/models", "/models/"):
        response = http.get(path)
        assert response.status_code == 200 and [m["id"] for m in response.json()["data"]] == [NAME], path
    for path in (f"/v1/models/{NAME}/", f"/models/{NAME}", f"/models/{NAME}/"):
        response = http.get(path)
        assert response.status_code == 200 and response.json()["id"] == NAME, path
    for path in ("/health/", "/v1/health/", "/stats/"):
        assert http.get(path).status_code == 200, path
    assert http.get("/models/gpt-9").status_code == 404
    assert http.get("/v1/nothing-here/").status_code == 404  # not a redirect either


def test_a_401_names_its_scheme(server):
    """A 401 had no `WWW-Authenticate` header (RFC 7235), and `Authorization: Basic ...` was told
    "no API key given"."""
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
            response = client.get("/v1/models", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", headers
        error = client.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}).json()["error"]
        assert "'Basic'" in error["message"] and "Authorization: Bearer <key>" in error["message"]
        empty = client.get("/v1/models", headers={"Authorization": "Bearer"})
        assert empty.json()["error"]["code"] == "missing_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Basic x", "X-Api-Key": KEY}).status_code == 200


def test_a_compressed_body_is_415(http):
    """A gzip body was "invalid JSON ('utf-8' codec can't decode byte 0x8b ...)"."""
    import gzip

    raw = json.dumps({"messages": user("Hi"), "max_tokens": 1}).encode()
    for encoding in ("gzip", "br", "identity, deflate"):
        response = http.post(
            "/v1/chat/completions",
            content=gzip.compress(raw),
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        )
        assert response.status_code == 415, response.text
        error = response.json()["error"]
        assert error["code"] == "unsupported_content_encoding" and "uncompressed" in error["message"]
    plain = http.post("/v1/chat/completions", content=raw, headers={"Content-Encoding": "identity"})
    assert plain.status_code == 200


@contextlib.contextmanager
def _serving(app, sock: socket.socket, lifespan: str = "on"):
    """`app` under uvicorn in a thread on `sock` (a copy of it: uvicorn closes its own at the end)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock.dup()]}, daemon=True)
    thread.start()
    try:
        _until(lambda: server.started, 30)
        yield
    finally:
        server.should_exit = True
        thread.join(30)


def test_requests_get_503_loading_model_until_the_model_is_loaded(vlm):
    """The socket was open while the model loaded (minutes when its graphs are built first) and
    every request hung meanwhile; now each gets llama-server's 503 "Loading model", then its
    answer from the server that runs once the model is in (as `smolvlm serve` does)."""
    from smolvlm_cli.server.app import ChatServer, create_loading_app

    settings = ServerSettings(model_id=NAME)
    app = create_loading_app(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with httpx2.Client(base_url=url, timeout=30) as client:
            with _serving(app, sock, lifespan="off"):
                for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                    response = client.request(method, path, json={"messages": user("Hi")} if method == "POST" else None)
                    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0, path
                    error = response.json()["error"]
                    assert error["message"] == "Loading model" and error["type"] == "unavailable_error", error
                    assert error["code"] == "model_loading"
            app.state.server = ChatServer(vlm, settings)
            with _serving(app, sock):
                assert client.get("/health").json()["status"] == "ok"
                reply = client.post("/v1/chat/completions", json={"messages": user("Hi"), "max_tokens": 2})
                assert reply.status_code == 200, reply.text
