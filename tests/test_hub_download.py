"""A first run against a Hub: what is downloaded, and how the download shows.

A small HTTP server speaks the part of the Hub's API that huggingface_hub's snapshot_download
uses (repo info, the recursive tree listing, `resolve/` with its HEAD metadata), serving a tiny
random checkpoint plus an `onnx/` folder of the Hub's own graphs. The real CLI runs against it in
subprocesses (HF_ENDPOINT), with stderr a terminal where the bar is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_on_terminal
from model_fixtures import TINY_MODEL_NAMES

REPO_ID = "someone/tiny-smolvlm"
COMMIT = "fa11bac" + "0" * 33
pytestmark = pytest.mark.slow  # CLI subprocesses


class FakeHub:
    """The repo's files by path, the requests served, and the bytes sent per second."""

    def __init__(self, files: dict[str, bytes], bytes_per_s: float):
        self.files, self.bytes_per_s = files, bytes_per_s
        self.downloaded: list[str] = []
        self.lock = threading.Lock()

    def tree(self) -> list[dict]:
        entries = []
        for path, data in sorted(self.files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if path.endswith((".safetensors", ".onnx", ".onnx_data")):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
            entries.append(entry)
        return entries

    def etag(self, path: str) -> str:
        data = self.files[path]
        lfs = path.endswith((".safetensors", ".onnx", ".onnx_data"))
        return (hashlib.sha256 if lfs else hashlib.sha1)(data).hexdigest()


def _handler(hub: FakeHub):
    prefix = f"/api/models/{REPO_ID}"
    resolve = re.compile(rf"^/{re.escape(REPO_ID)}/resolve/[^/]+/(.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _json(self, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, send_body: bool) -> None:
            match = resolve.match(self.path.split("?")[0])
            path = match and match.group(1)
            if path not in hub.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = hub.files[path]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hub.etag(path)}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not send_body:
                return
            with hub.lock:
                hub.downloaded.append(path)
            chunk = 64 * 1024
            for start in range(0, len(data), chunk):
                self.wfile.write(data[start : start + chunk])
                time.sleep(chunk / hub.bytes_per_s)

        def do_HEAD(self):
            self._file(send_body=False)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path.startswith(f"{prefix}/revision/"):
                self._json({"id": REPO_ID, "sha": COMMIT, "siblings": [{"rfilename": p} for p in hub.files]})
            elif path.startswith(f"{prefix}/tree/"):
                self._json(hub.tree())
            else:
                self._file(send_body=True)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def checkpoint_files(tiny_checkpoints) -> dict[str, bytes]:
    source = tiny_checkpoints[TINY_MODEL_NAMES[0]]
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    assert "model.safetensors" in files and "config.json" in files
    # The Hub's own graphs sit beside the weights; the default path must not fetch them.
    files["onnx/decoder_model_merged_int8.onnx"] = b"\0" * 200_000
    files["onnx/vision_encoder_int8.onnx"] = b"\0" * 200_000
    return files


@pytest.fixture
def hub(checkpoint_files):
    """A fresh fake Hub per test (its request log starts empty), sending about 10 MB/s."""
    state = FakeHub(checkpoint_files, bytes_per_s=10e6)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state.endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.new("RGB", (64, 48), (30, 160, 90)).save(path)
    return path


def _env(hub: FakeHub, tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": hub.endpoint,
        "SMOLVLM_CACHE": str(tmp_path / "graphs"),
        "COLUMNS": "120",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        env.pop(name, None)
    return env


def _describe_cmd(image: Path) -> list[str]:
    return [sys.executable, "-m", "smolvlm_cli", "describe", str(image), "-m", REPO_ID, "-n", "4", "--no-split"]


def test_first_run_downloads_only_config_and_weights_with_a_bar_on_the_terminal(hub, image, tmp_path):
    code, out, screen = run_on_terminal(_describe_cmd(image), _env(hub, tmp_path))
    assert code == 0, screen
    weights = hub.files["model.safetensors"]
    assert len(weights) > 5_000_000  # long enough (>0.5 s at 10 MB/s) for the bar to draw
    assert "model.safetensors" in hub.downloaded
    assert not [p for p in hub.downloaded if p.startswith("onnx/")]  # the Hub's graphs are not fetched
    assert set(hub.downloaded) <= {p for p in hub.files if not p.startswith("onnx/")}
    assert "Downloading someone/tiny-smolvlm" in screen and "\x1b[" in screen  # a rich bar, drawn
    assert re.search(r"Downloaded \d+\.\d MB in \d+\.\d s", screen)
    assert "Building graphs for" in screen and "Fetching" not in screen  # not huggingface_hub's tqdm
    assert out.strip() and out.count("\n") == 1  # stdout: the answer only

    hub.downloaded.clear()  # a second run: everything is cached, no bar flashes
    code, again, screen = run_on_terminal(_describe_cmd(image), _env(hub, tmp_path))
    assert code == 0, screen
    assert again == out and hub.downloaded == []
    assert "Downloading" not in screen and "Building" not in screen


def test_off_a_terminal_the_download_is_two_plain_lines_and_quiet_is_silent(hub, image, tmp_path):
    hub.bytes_per_s = float("inf")  # no bar to see: full speed
    result = subprocess.run(_describe_cmd(image), env=_env(hub, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"Downloading {REPO_ID}..." and re.fullmatch(r"Downloaded \d+\.\d MB in \d+\.\d s", lines[1])
    assert "\x1b[" not in result.stderr and "Fetching" not in result.stderr and "%|" not in result.stderr

    quiet_env = {**_env(hub, tmp_path), "HF_HOME": str(tmp_path / "hf-quiet")}
    result = subprocess.run(
        [*_describe_cmd(image), "--quiet"], env=quiet_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stderr == ""
    assert (tmp_path / "hf-quiet" / "hub").is_dir()  # it did download, silently
