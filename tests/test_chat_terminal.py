"""Terminal behaviour (issue #19 items 6 and 10): `smolvlm chat` and `describe -` on a real
pseudo-terminal, as a user at a keyboard sees them."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time

import numpy as np
import pytest
from PIL import Image

NAME = "SmolVLM2-256M-Video-Instruct"


class Terminal:
    """A command on a pseudo-terminal (stdin, stdout and stderr), driven line by line."""

    def __init__(self, *args, stdout=None):
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            if stdout is not None:  # `> file`: the results elsewhere, the user at the terminal
                os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
            os.execvpe(sys.executable, [sys.executable, "-m", "smolvlm_cli", *map(str, args)], env)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Read until `text` appears; everything read since the last match."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while text not in self.seen[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} within {timeout} s; got {self.seen[start:]!r}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"ended before {text!r}; got {self.seen[start:]!r}")
                self.seen += chunk.decode("utf-8", "replace")
        return self.seen[start:]

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"still running after {timeout} s; got {self.seen!r}")


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "cat.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path)
    return path


def test_chat_at_a_terminal(model_dir, image, tmp_path):
    term = Terminal("chat", image, "-m", model_dir, "-n", "3", "--detail", "low")
    intro = term.expect("> ")
    assert "/save" in intro and "/exit" in intro and "/help" in intro  # the whole command list
    term.send("/help")
    assert "/image PATH" in term.expect("> ")
    term.send("/save")
    assert "Error: /save needs a file name" in term.expect("> ")
    term.send(f"/save {tmp_path}")
    assert "is a folder" in term.expect("> ")
    term.send("What is it?")
    reply = term.expect("> ")
    assert "Looking at the image" in reply  # a spinner while the image is encoded
    transcript = tmp_path / "chat.json"
    term.send(f"/save {transcript}")
    assert "saved" in term.expect("> ")
    term.send("quit")
    assert term.wait() == 0
    messages = json.loads(transcript.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant"]  # `quit` was not sent
    assert messages[0]["content"][0] == {"type": "image", "path": str(image)}


def test_chat_with_its_answers_sent_to_a_file_prompts_on_the_terminal(model_dir, image, tmp_path):
    """`smolvlm chat img > answers.txt`: the "> " prompt is for the user, the file gets answers."""
    answers = tmp_path / "answers.txt"
    term = Terminal("chat", image, "-m", model_dir, "-n", "3", "--detail", "low", stdout=answers)
    term.expect("> ")
    term.send("What is it?")
    term.expect("> ")
    term.send("quit")
    assert term.wait() == 0
    text = answers.read_text()
    assert text.strip() and ">" not in text and text.count("\n") == 1  # one answer, one line


def test_a_message_that_cannot_be_sent_is_an_error_and_the_chat_goes_on(model_dir, image):
    """-n 8185 leaves no room for the image's tokens: one Error line (the -n that fits), the image dropped
    with a note, and the chat still takes commands (it ended the chat before)."""
    term = Terminal("chat", image, "-m", model_dir, "-n", "8185")
    term.expect("> ")
    term.send("What is it?")
    shown = term.expect("> ")
    assert "Error: the prompt needs" in shown and "or fewer" in shown and "were dropped" in shown
    assert "Traceback" not in shown
    term.send("/help")
    assert "/image PATH" in term.expect("> ")
    term.send("quit")
    assert term.wait() == 0


def test_describe_dash_at_a_terminal_says_what_it_wants(model_dir):
    term = Terminal("describe", "-", "-m", model_dir)
    assert term.wait(timeout=30) == 2
    assert "terminal" in term.seen and "describe - < photo.jpg" in term.seen
