"""A live `smolvlm serve` app for tests: uvicorn in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

NAME = "SmolVLM2-256M-Video-Instruct"


@contextlib.contextmanager
def live_server(vlm, settings, defaults=None) -> Iterator[SimpleNamespace]:
    """(url, base_url for the openai client, app, scheduler) of a server running `vlm`."""
    import uvicorn

    from smolvlm_cli.server.app import create_app

    app = create_app(vlm, settings, defaults)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield SimpleNamespace(url=url, base_url=f"{url}/v1", app=app, scheduler=app.state.server.scheduler)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def noise_png(path: Path | None = None, size=(64, 48), seed: int = 0) -> bytes:
    """A small random RGB PNG (written to `path` too when given)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text: str, *images: str, detail: str | None = None) -> list[dict]:
    """One user message: image parts (URLs, with OpenAI's `detail` when given) then the text."""
    extra = {"detail": detail} if detail else {}
    parts = [{"type": "image_url", "image_url": {"url": url, **extra}} for url in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
