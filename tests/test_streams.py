"""The CLI whatever state its standard streams are in: closed (`<&-`, `2>&-`), a stderr that
stops taking writes, a stdout that is not UTF-8 or is full; and the environment around them
(COLUMNS, SMOLVLM_DEBUG, a HOME that is a file). In this process where Python's own view of the
streams can be set up (a closed stream is None to Python), in a real one where start-up matters."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import invoke_cli
from smolvlm_cli.cli.main import main

NAME = "SmolVLM-256M-Instruct"


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("streams") / "café.png"  # a name that is not ASCII
    Image.new("RGB", (64, 48), (200, 120, 40)).save(path)
    return path


def run_main(monkeypatch, *args, stdin=None, stdout=None, stderr=None) -> int:
    """`main(args)` with the given Python-level streams (None: closed); the exit code."""
    for name, stream in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        monkeypatch.setattr(sys, name, stream)
    monkeypatch.delenv("SMOLVLM_DEBUG", raising=False)
    try:
        main([os.fsdecode(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def text_stream(encoding: str = "utf-8") -> tuple[io.TextIOWrapper, io.BytesIO]:
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding=encoding, write_through=True), raw


def test_a_closed_stderr_keeps_errors_off_stdout(monkeypatch, model_dir, image, tmp_path):
    """`2>&-`: the run works, and an error is the exit code alone (it was an AttributeError on
    stdout, from `None.isatty()`, printed by `print(file=None)`)."""
    stdout, raw = text_stream()
    assert run_main(monkeypatch, "describe", image, "-m", model_dir, "-n", "3", stdout=stdout) == 0
    assert raw.getvalue().strip()
    stdout, raw = text_stream()
    assert run_main(monkeypatch, "describe", tmp_path / "missing.png", "-m", model_dir, stdout=stdout) == 1
    assert raw.getvalue() == b""


def test_a_closed_stdin_reads_as_empty(monkeypatch, model_dir, image):
    """`<&-`: what reads stdin finds nothing there, as with `</dev/null`."""
    for args, code, said in (
        (("describe", image, "-p", "-"), 2, "found no prompt text"),
        (("describe", "-"), 1, "no image data on standard input"),
        (("ask", image, "-q", "-"), 2, "found no questions"),
    ):
        stdout, _ = text_stream()
        stderr, raw = text_stream()
        assert run_main(monkeypatch, *args, "-m", model_dir, stdout=stdout, stderr=stderr) == code, args
        assert said in raw.getvalue().decode() and "Traceback" not in raw.getvalue().decode()


def test_a_stderr_that_stops_taking_writes_never_stops_a_batch(monkeypatch, model_dir, image, tmp_path):
    """`2> >(head -c 1)`: the reader of stderr went away; the run's results are all written."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (i, 2, 3)).save(folder / f"{i}.png")
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stderr now fails with EPIPE
    stderr = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    stdout, _ = text_stream()
    out = tmp_path / "captions.jsonl"
    try:
        code = run_main(
            monkeypatch, "batch", folder, "-m", model_dir, "-n", "2", "-o", out, stdout=stdout, stderr=stderr
        )
    finally:
        stderr.close()
    assert code == 0
    assert sorted(Path(json.loads(line)["path"]).name for line in out.read_text().splitlines()) == [
        "0.png",
        "1.png",
        "2.png",
    ]


def test_results_are_utf8_whatever_the_encoding_of_stdout(monkeypatch, model_dir, image):
    """An ASCII stdout (PYTHONIOENCODING=ascii, an old locale) failed on the first non-ASCII
    character: JSON is UTF-8, so results are written as UTF-8."""
    stdout, raw = text_stream("ascii")
    stderr, _ = text_stream()
    assert (
        run_main(monkeypatch, "describe", image, "-m", model_dir, "-n", "2", "--json", stdout=stdout, stderr=stderr)
        == 0
    )
    assert json.loads(raw.getvalue().decode("utf-8"))["images"] == [str(image)]


def test_a_stdout_that_is_full_is_one_clear_error(monkeypatch, model_dir, image):
    """`> /dev/full`: said to be standard output (the hint talked of resuming a batch run)."""
    stdout = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    stderr, raw = text_stream()
    try:
        code = run_main(monkeypatch, "describe", image, "-m", model_dir, "-n", "2", stdout=stdout, stderr=stderr)
    finally:
        stdout.close()
    said = raw.getvalue().decode()
    assert code == 1 and "Error: cannot write the results to standard output: No space left" in said
    assert "batch" not in said and "Traceback" not in said


def test_the_last_argument_is_the_prompt_however_long_or_named_like_a_folder(model_dir, image, tmp_path, monkeypatch):
    """A prompt over 255 bytes failed with "File name too long"; a one-word prompt that names a
    folder here was read as an image."""
    long_prompt = "Please describe this image in great detail, " * 7
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cats").mkdir()
    for prompt in (long_prompt, "cats"):
        result = invoke_cli("describe", image, prompt, "-m", model_dir, "-n", "2", "--json")
        assert result.returncode == 0, result.stderr.decode()
        assert json.loads(result.stdout)["prompt"] == prompt


def test_settings_around_the_streams(model_dir, image, tmp_path):
    """COLUMNS=0 printed help as one empty line (and usage errors as nothing); SMOLVLM_DEBUG=false
    turned tracebacks on."""
    result = invoke_cli("describe", "--help", env={"COLUMNS": "0"})
    assert result.returncode == 0 and b"--prompt" in result.stdout
    result = invoke_cli("describe", image, "--detail", "xx", env={"COLUMNS": "1"})
    assert result.returncode == 2 and b"--detail" in result.stderr
    result = invoke_cli("describe", tmp_path / "missing.png", "-m", model_dir, env={"SMOLVLM_DEBUG": "false"})
    assert result.returncode == 1 and result.stderr.startswith(b"Error: ") and b"Traceback" not in result.stderr


@pytest.mark.slow
def test_a_home_that_is_a_file_adds_nothing_to_stderr(model_dir, image, tmp_path):
    """ONNX Runtime's telemetry wrote a device id under HOME at import (a coloured warning where
    it cannot); smolvlm-cli turns that telemetry off."""
    home = tmp_path / "home"
    home.write_text("a file")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}  # as a user's shell has it
    env.update(HOME=str(home), SMOLVLM_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "smolvlm_cli", "describe", str(image), "-m", str(model_dir), "-n", "2", "-q"]
    result = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip()
    assert result.stderr == b""


def test_a_deleted_current_folder_is_named(monkeypatch, model_dir, tmp_path):
    """`cd gone && rmdir ../gone && smolvlm batch ../photos`: "No such file or directory", no name."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "photos" / "a.png")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    result = invoke_cli("batch", "../photos", "-o", "-", "-m", model_dir)
    assert result.returncode == 1 and b"Error: the current folder no longer exists" in result.stderr


def test_help_into_a_closed_pipe_exits_0(monkeypatch):
    """`smolvlm --help | head -1` exited 1 (rich's own broken-pipe exit), failing `set -o
    pipefail` scripts, while a command's results into a closed pipe exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    stderr, raw = text_stream()
    try:
        for args in (["--help"], ["describe", "--help"]):
            assert run_main(monkeypatch, *args, stdout=stdout, stderr=stderr) == 0, raw.getvalue()
    finally:
        stdout.close()
