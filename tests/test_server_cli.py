"""`smolvlm serve` as a command: lazy imports, one-line errors, a real process answering."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import assert_clean_error, invoke_cli, run_cli, stderr_of
from test_cli import NO_TORCH_CHECK

NAME = "SmolVLM2-256M-Video-Instruct"


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.mark.slow  # a real process: the fast loop starts none
def test_serve_help_does_not_import_the_server_stack():
    """`smolvlm --help` and `smolvlm serve --help` load neither starlette nor uvicorn (nor torch)."""
    for args in (["--help"], ["serve", "--help"]):
        result = run_cli(*args, python_code=NO_TORCH_CHECK)
        assert result.returncode == 0, stderr_of(result)
        assert "HEAVY []" in stderr_of(result)
    assert "--max-batch" in result.stdout.decode() and "--allow-local-files" in result.stdout.decode()


def test_a_taken_port_is_one_error_line(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke_cli("serve", "-m", model_dir, "--port", str(port), "--quiet")
    assert_clean_error(result, names=[str(port)], reason="cannot listen")


def test_bad_options_are_usage_errors(tmp_path):
    result = invoke_cli("serve", "--allow-local-files", tmp_path / "missing")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    result = invoke_cli("serve", "--max-batch", "0")
    assert result.returncode == 2


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _answer(url: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode() if body else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _serve(*args: str, code: str | None = None) -> tuple[subprocess.Popen, str]:
    """`smolvlm ARGS` (or `python -c CODE ARGS`) serving on a free port: the process and its URL,
    once it answers at all (503 while its model loads)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = ["-c", code] if code else ["-m", "smolvlm_cli"]
    process = subprocess.Popen(
        [sys.executable, *launcher, *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a Ctrl-C typed at a terminal, wherever the tests run (a shell's background jobs
        # start with SIGINT ignored, and Python keeps ignoring it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            _answer(f"{url}/health")
            return process, url
        except OSError:  # not listening yet
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)


def _until_loaded(url: str) -> None:
    deadline = time.monotonic() + 60
    while _answer(f"{url}/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_a_real_serve_process_answers_logs_and_stops_on_ctrl_c(model_dir):
    process, url = _serve("serve", "-m", str(model_dir), "--dtype", "fp32", "--served-name", "smolvlm-tiny")
    try:
        _until_loaded(url)
        body = {"model": "smolvlm-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        reply = _post(f"{url}/v1/chat/completions", body)
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
        assert reply["model"] == "smolvlm-tiny"  # --served-name: the folder's path is not shown
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as listed:
            assert [m["id"] for m in json.load(listed)["data"]] == ["smolvlm-tiny"]
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err.decode()  # Ctrl-C, as every command
    assert out == b""  # stdout carries results only: a server has none
    text = err.decode()
    assert "Serving" in text and "POST /v1/chat/completions 200" in text
    assert "Traceback" not in text


# `smolvlm serve` whose model load waits until the file argv[1] exists (a load of minutes)
SLOW_LOAD = (
    "import os, sys, time\n"
    "from smolvlm_cli.cli.option_groups import ModelChoice\n"
    "load, flag = ModelChoice.load, sys.argv.pop(1)\n"
    "def slow(self, *args, **kwargs):\n"
    "    while not os.path.exists(flag):\n"
    "        time.sleep(0.02)\n"
    "    return load(self, *args, **kwargs)\n"
    "ModelChoice.load = slow\n"
    "from smolvlm_cli.cli.main import main\n"
    "sys.argv[0] = 'smolvlm'\n"
    "main()\n"
)


@pytest.mark.slow  # real processes
def test_a_loading_server_answers_503_and_a_ctrl_c_still_stops_it(model_dir, tmp_path):
    """The port was open while the model loaded, and requests hung for the whole load: they get
    503 "Loading model" now, then their answers; a Ctrl-C while loading exits 130 at once."""
    flag = tmp_path / "loaded"
    for stop_while_loading in (False, True):
        process, url = _serve(str(flag), "serve", "-m", str(model_dir), "--dtype", "fp32", code=SLOW_LOAD)
        try:
            status, body = _answer(f"{url}/health")
            assert status == 503 and body["error"]["message"] == "Loading model", body
            chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            assert _answer(f"{url}/v1/chat/completions", chat)[0] == 503
            if not stop_while_loading:
                flag.touch()
                _until_loaded(url)
                status, reply = _answer(f"{url}/v1/chat/completions", chat)
                assert status == 200 and reply["object"] == "chat.completion"
        finally:
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
            flag.unlink(missing_ok=True)
        assert process.returncode == 130, err.decode()
        assert ("Serving" in err.decode()) is not stop_while_loading and "Traceback" not in err.decode()


@pytest.mark.slow  # real processes
def test_a_model_that_fails_to_load_is_one_error_line_and_stops_the_server(model_dir, tmp_path):
    """The model loads while the server already answers (503 "Loading model"): an error in loading
    is still one `Error:` line and exit 1, the server stopped."""
    result = run_cli(
        *("serve", "-m", model_dir, "--dtype", "fp32", "--port", "0", "--quiet"), "--max-request-tokens", "999999"
    )
    assert_clean_error(result, reason="more than the model's context")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert_clean_error(run_cli("serve", "-m", empty, "--port", "0", "--quiet"), names=[empty.name])


def test_a_local_folder_is_served_under_its_base_name(model_dir, tmp_path, monkeypatch):
    """Without --served-name the model id was the folder's whole path, shown by /health (which
    needs no key), /v1/models and every reply."""
    from smolvlm_cli.cli.serve import public_model_id

    assert public_model_id(str(model_dir)) == model_dir.name
    monkeypatch.chdir(model_dir.parent)
    assert public_model_id(f"./{model_dir.name}/") == model_dir.name
    assert public_model_id("HuggingFaceTB/SmolVLM2-256M-Video-Instruct") == "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
