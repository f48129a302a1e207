"""Issue #19: what a new user tripped over, one test (or a few) per item, through the CLI.

In-process runs go through `main()` (its error mapping included); subprocesses only where a
shell loop, the environment of huggingface_hub, or a terminal matters (terminal tests are in
test_chat_terminal.py).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import bomb_png
from conftest import all_cpus, fixture_dir, run_cli
from smolvlm_cli import SmolVLM
from smolvlm_cli.batch.progress import Reporter, Summary
from smolvlm_cli.batch.records import ImageRecord
from smolvlm_cli.cli.chat import labeled_answer
from smolvlm_cli.cli.main import main
from smolvlm_cli.prompt import build_messages

NAME = "SmolVLM2-256M-Video-Instruct"
CONFIG_ONLY = fixture_dir(NAME)  # real config and tokenizer, no graphs: loads fail after planning


def cli(capsys, monkeypatch, *args, stdin: bytes = b"") -> tuple[int, str, str]:
    """`smolvlm ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


run = run_cli  # a real process: stdin, exit codes and the environment matter here


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def vlm(model_dir):
    return SmolVLM.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def thumb(tmp_path_factory):
    """A 451x300 thumbnail: 5 tiles at the tiny model's default, 1 at --detail low."""
    path = tmp_path_factory.mktemp("thumb") / "thumb.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8)).save(path)
    return path


# -- 1. stdin only when asked for --------------------------------------------------------------


def test_shell_loop_keeps_its_input(model_dir, thumb, tmp_path):
    """`ls | while read f; do smolvlm describe "$f" -p Q; done` answers every file."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(thumb.read_bytes())
    script = (
        f'printf "%s\\n" a.jpg b.jpg c.jpg | while read f; do "{sys.executable}" -m '
        f'smolvlm_cli describe "$f" -p "Is there a cat?" -m "{model_dir}" -n 3 '
        "--detail low --json; done"
    )
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["images"] for r in records] == [["a.jpg"], ["b.jpg"], ["c.jpg"]]
    assert {r["prompt"] for r in records} == {"Is there a cat?"}


def test_prompt_and_questions_from_stdin_only_when_asked(capsys, monkeypatch, model_dir, thumb):
    code, out, err = cli(
        capsys, monkeypatch, "describe", thumb, "-m", model_dir, "-n", "2", "--json", stdin=b"ignored text\n"
    )
    assert code == 0, err
    assert json.loads(out)["prompt"] == "Describe this image in detail."  # stdin left alone
    code, out, err = cli(
        capsys,
        monkeypatch,
        "describe",
        thumb,
        "-p",
        "-",
        "-m",
        model_dir,
        "-n",
        "2",
        "--json",
        stdin=b"What colour is it?\n",
    )
    assert code == 0, err
    assert json.loads(out)["prompt"] == "What colour is it?"
    code, out, err = cli(
        capsys, monkeypatch, "ask", thumb, "-q", "-", "-m", model_dir, "-n", "2", "--json", stdin=b"First?\n\nSecond?\n"
    )
    assert code == 0, err
    assert [json.loads(line)["question"] for line in out.splitlines()] == ["First?", "Second?"]
    code, _, err = cli(capsys, monkeypatch, "describe", "-", "-p", "-", "-m", model_dir, stdin=thumb.read_bytes())
    assert code == 2 and "only once" in err


# -- 2. the detail knob and the slow-default warning ---------------------------------------------


def test_detail_levels_map_to_tiles(capsys, monkeypatch, thumb):
    tiles = {}
    for level in ("low", "auto", "high"):
        code, out, err = cli(capsys, monkeypatch, "inspect", thumb, "-m", CONFIG_ONLY, "--detail", level, "--json")
        assert code == 0, err
        tiles[level] = json.loads(out)["tiles"]
    assert tiles == {"low": 1, "auto": 13, "high": 25}
    code, _, err = cli(capsys, monkeypatch, "inspect", thumb, "-m", CONFIG_ONLY, "--detail", "low", "--no-split")
    assert code == 2 and "--detail" in err
    code, _, err = cli(capsys, monkeypatch, "inspect", thumb, "-m", CONFIG_ONLY, "--detail", "max")
    assert code == 2 and "low, auto, high" in err


def test_describe_detail_low_is_one_tile_and_help_has_numbers(capsys, monkeypatch, model_dir, thumb):
    code, out, err = cli(
        capsys, monkeypatch, "describe", thumb, "-m", model_dir, "-n", "2", "--detail", "low", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["image_tiles"] == 1
    code, out, _ = cli(capsys, monkeypatch, "describe", "--help")
    assert code == 0
    assert re.search(
        r"auto [\d.]+ s to the first token and [\d.]+ images/min in batch, low "
        r"[\d-]+ images/min",
        flat(out),
    )


def test_batch_warns_when_the_default_would_be_slow(capsys, monkeypatch, thumb, tmp_path):
    for i in range(46):
        (tmp_path / f"p{i:02}.jpg").write_bytes(thumb.read_bytes())
    out_file = tmp_path / "c.jsonl"
    code, _, err = cli(capsys, monkeypatch, "batch", tmp_path, "-o", out_file, "-m", CONFIG_ONLY)
    assert code == 1  # no graphs in the config-only folder: the warning comes before the load
    warning = [line for line in err.splitlines() if "tiles an image" in line]
    assert len(warning) == 1 and "~13 tiles" in warning[0] and "--detail low" in warning[0]
    _, _, err = cli(capsys, monkeypatch, "batch", tmp_path, "-o", out_file, "-m", CONFIG_ONLY, "--detail", "low")
    assert "tiles an image" not in err


# -- 3. offline errors name the cause and the way out --------------------------------------------


def test_offline_error_names_cause_and_ways_out(tmp_path):
    env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": ""}
    result = run("download", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", env=env)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    assert "Connection refused" in err and "model folder you have instead of the id" in err and "HF_ENDPOINT" in err
    assert "HF_HUB_OFFLINE" not in err  # not set: not the user's problem
    result = run("download", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", env={**env, "HF_HUB_OFFLINE": "1"})
    err = result.stderr.decode()
    assert (
        result.returncode == 1 and "HF_HUB_OFFLINE is set" in err and "model folder you have instead of the id" in err
    )


# -- 4. speed readouts ---------------------------------------------------------------------------


def test_summary_rate_counts_captions_only(capsys, monkeypatch, model_dir, thumb, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    code, _, err = cli(capsys, monkeypatch, "batch", tmp_path, "-m", model_dir, "-n", "2")
    assert code == 1
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("0 done, 0 skipped, 2 failed") and "images/min" not in summary
    assert Summary(done=1, failed=3, skipped_done=2, work_s=30.0).images_per_min == 2.0


def test_progress_rate_survives_bursts():
    """Ray hands results over in blocks: the bar's rate is the run's average, not a spike."""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    reporter = Reporter(stream=stream)
    reporter.start(26)
    time.sleep(1.0)
    for i in range(4):  # four results within microseconds
        reporter.advance(ImageRecord(f"{i}.jpg", caption="x"))
    reporter._progress.refresh()
    reporter.stop()
    rates = [float(r) for r in re.findall(r"([\d.]+) images/min", stream.getvalue())]
    assert rates and max(rates) < 4 * 60 / 0.9  # 4 in ~1 s: at most ~260/min, never 693812
    etas = re.findall(r"ETA (\d+:\d\d:\d\d)", stream.getvalue())
    assert etas and etas[-1] not in ("0:00:00", "0:00:01")  # 22 left at ~4/s: several seconds


# -- 5. resume compares the prompt and the model -------------------------------------------------


def test_resume_refuses_another_prompt_or_model(capsys, monkeypatch, model_dir, thumb, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(thumb.read_bytes())
    out_file = tmp_path / "c.jsonl"
    base = ["batch", photos, "-m", model_dir, "-n", "2", "--detail", "low"]
    assert cli(capsys, monkeypatch, *base, "-o", out_file)[0] == 0
    code, _, err = cli(capsys, monkeypatch, *base, "-o", out_file, "-p", "Answer in one word.")
    assert code == 1 and "another prompt" in err and "--overwrite" in err and "--resume-any" in err
    code, _, err = cli(capsys, monkeypatch, *base, "-o", out_file, "-p", "Answer in one word.", "--resume-any")
    assert code == 0 and "2 already done" in err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    out_file.write_text("".join(json.dumps({**r, "model": "someone/else"}) + "\n" for r in records))
    code, _, err = cli(capsys, monkeypatch, *base, "-o", out_file)
    assert code == 1 and "another model" in err and "someone/else" in err
    code, _, err = cli(capsys, monkeypatch, *base, "-o", out_file, "--overwrite")
    assert code == 0 and "2 done" in err
    # sidecars: the ledger remembers what made them
    assert cli(capsys, monkeypatch, *base)[0] == 0
    code, _, err = cli(capsys, monkeypatch, *base, "-p", "Other.")
    assert code == 1 and "another prompt" in err


# -- 7. help text --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "describe", "ask", "chat", "batch", "inspect", "models"])
def test_help_speaks_cli_not_python(capsys, monkeypatch, command):
    code, out, _ = cli(capsys, monkeypatch, *([command] if command else []), "--help")
    assert code == 0
    for python_ism in ("<bool>", "<str>", "<int", "<float", "list[", "range]", "[x>=", "{IMAGE", "{PATH", "PROMPT]..."):
        assert python_ism not in out, python_ism
    if command in ("inspect", "models"):  # they print no text, counts or timings
        assert "timings" not in out
    if command == "ask":
        assert "--verbose" in out and "-v" in out


@pytest.mark.parametrize(
    "args, reason",
    [
        (["-n", "abc"], "'--max-new-tokens' / '-n': 'abc' is not a valid integer."),
        (["-n", "0"], "'--max-new-tokens' / '-n': 0 is not in the range x>=1."),  # enforced, not advertised
        (["--temperature", "x"], "'--temperature' / '-t': 'x' is not a valid number."),
        (["--threads", "0"], "'--threads': 0 is not in the range x>=1."),
        (["--threads", "5000"], "'--threads': 5000 is more than"),  # minutes of thread churn
        (["-t", "nan"], "'--temperature' / '-t': nan is not a number in [0, 3.4e+38]"),  # NaN probabilities
        (["--repetition-penalty", "nan"], "'--repetition-penalty': nan is not a number in (0,"),  # was accepted
        (["-t", "1e308"], "'--temperature' / '-t': 1e+308 is not a number in"),  # overflowed float32
    ],
)
def test_usage_errors_name_the_option_and_the_value(capsys, monkeypatch, thumb, args, reason):
    code, out, err = cli(capsys, monkeypatch, "describe", thumb, *args)
    assert (code, out) == (2, "")
    assert f"Invalid value for {reason}" in flat(err)


@pytest.mark.parametrize(
    "args",
    [["describe", "-p", ""], ["describe", "-p", "   "], ["describe", " "], ["ask", "-q", "Why?", "-q", ""]],
    ids=["empty-p", "blank-p", "blank-argument", "empty-question"],
)
def test_an_empty_prompt_is_a_usage_error(capsys, monkeypatch, thumb, args):
    """An empty -p used to mean the default prompt, a blank one was sent as it was, `describe
    img ""` read the folder "." as an image, and an empty question was asked: now, as for an
    empty prompt piped to -p -, a usage error."""
    command, *rest = args
    code, out, err = cli(capsys, monkeypatch, command, thumb, *rest)
    assert (code, out) == (2, "")
    assert "is empty" in flat(err)


def test_batch_output_and_output_dir_together_are_a_usage_error(capsys, monkeypatch, thumb, tmp_path):
    out, folder = tmp_path / "c.jsonl", tmp_path / "caps"
    code, stdout, err = cli(capsys, monkeypatch, "batch", thumb, "-o", out, "-d", folder)
    assert (code, stdout) == (2, "") and "not both" in flat(err)  # -d was silently ignored
    assert not out.exists() and not folder.exists()
    for ext in ("jpg png", "*.png"):  # found nothing, and said so without saying why
        code, _, err = cli(capsys, monkeypatch, "batch", thumb, "--ext", ext, "-o", out)
        assert code == 2 and "comma-separated list" in flat(err)
    tmp_path.joinpath("d.jsonl").mkdir()  # a folder with a file's name
    for args, reason in (
        (["-", "-"], "only once"),  # these three were exit 1, found at run time
        ([thumb, "-o", tmp_path / "d.jsonl"], "is a folder"),
        ([thumb, "-0"], "-0 is for a path list on stdin"),  # was accepted silently
        ([thumb, "--overwrite", "--resume-any"], "--overwrite redoes every image"),
    ):
        code, _, err = cli(capsys, monkeypatch, "batch", *args)
        assert code == 2 and reason in flat(err), (args, err)


def test_export_dtype_is_a_usage_error_as_for_other_commands(capsys, monkeypatch, tmp_path):
    code, out, err = cli(capsys, monkeypatch, "export", "org/model", tmp_path / "out", "--dtype", "int9")
    assert (code, out) == (2, "")  # was 1, while describe and download say 2
    assert "Invalid value for '--dtype': unknown dtype 'int9'" in flat(err)


def test_ask_verbose(capsys, monkeypatch, model_dir, thumb):
    """describe's line, per answer: the backend and the load with the first (ask's lacked them,
    the preprocess time, the image tokens and the stop reason)."""
    common = ("-m", model_dir, "-n", "2", "--detail", "low", "-v")
    code, _, err = cli(capsys, monkeypatch, "ask", thumb, "-q", "Why?", "-q", "How?", *common)
    first, second = err.strip().splitlines()[-2:]
    assert code == 0 and first.startswith("backend onnx (") and ", load " in first
    assert not second.startswith("backend") and " / 64 image tokens in " in second and "(stop: " in second
    code, _, err = cli(capsys, monkeypatch, "describe", thumb, "Why?", *common)
    described = err.strip().splitlines()[-1]
    assert code == 0 and described.startswith("backend onnx (") and ", start-up " in described
    shape = re.compile(r".*preprocess [\d.]+ s, 1 tile\(s\) / 64 image tokens in .* tokens/s \(stop: \w+\)$")
    assert all(shape.match(line) for line in (first, second, described))


# -- 8. phone-sized photos pass, bombs do not ----------------------------------------------------


def test_108_megapixel_photo_is_accepted_and_a_bomb_is_not(capsys, monkeypatch, model_dir, tmp_path):
    big = tmp_path / "phone.jpg"
    Image.new("RGB", (12000, 9000), (90, 140, 200)).save(big, quality=80)
    code, out, err = cli(capsys, monkeypatch, "describe", big, "-m", model_dir, "-n", "2", "--detail", "low", "--json")
    assert code == 0, err
    assert json.loads(out)["image_tiles"] == 1
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())  # a 110 KB file claiming 30000x30000
    code, _, err = cli(capsys, monkeypatch, "describe", bomb, "-m", model_dir)
    assert code == 1 and "decompression bomb" in err and "250 megapixels" in err


# -- 10. smaller ones ----------------------------------------------------------------------------


def test_inspect_says_one_tile(capsys, monkeypatch, thumb):
    code, out, _ = cli(capsys, monkeypatch, "inspect", thumb, "-m", CONFIG_ONLY, "--detail", "low")
    assert code == 0 and "= 1 tile," in out


def test_batch_error_names_the_file_once(capsys, monkeypatch, model_dir, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    _, _, err = cli(capsys, monkeypatch, "batch", tmp_path, "-m", model_dir, "-o", "-")
    [line] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert line.count("broken.jpg") == 1


def test_ask_labels_answers(capsys, monkeypatch, model_dir, thumb):
    code, out, err = cli(
        capsys, monkeypatch, "ask", thumb, "-q", "One?", "-q", "Two?", "-m", model_dir, "-n", "3", "--detail", "low"
    )
    assert code == 0, err
    assert out.startswith("Q: One?\nA:") and "\n\nQ: Two?\nA:" in out
    # a multi-line reply stays under its label
    assert (
        "".join(labeled_answer("Q?", [" Line one", "\nline", " two\n", "three"]))
        == "Q: Q?\nA: Line one\n   line two\n   three"
    )


@pytest.mark.ray
@pytest.mark.slow  # a Ray cluster, as test_batch_ray's
def test_ray_leaves_no_session_folder(model_dir, thumb, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(thumb.read_bytes())
    import tempfile

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="t"))  # short: Ray's socket paths
    args = [
        "batch",
        photos,
        "--engine",
        "ray",
        "-m",
        model_dir,
        "-n",
        "2",
        "--detail",
        "low",
        "--workers",
        "1",  # one actor: its process costs ~1.7 s of CPU, and the test is about the session folder
        "-o",
        tmp_path / "c.jsonl",
    ]
    with all_cpus():
        result = run(*args, env={"TMPDIR": str(scratch), "RAY_ADDRESS": ""})
    leftovers = [p.name for p in scratch.iterdir() if p.is_dir()]  # Ray's session folders
    shutil.rmtree(scratch)
    assert result.returncode == 0, result.stderr.decode()
    assert leftovers == []


# -- issue #15: the prompt after the images ------------------------------------------------------


def test_last_argument_with_spaces_is_the_prompt(capsys, monkeypatch, model_dir, thumb):
    code, out, err = cli(
        capsys, monkeypatch, "describe", thumb, "Read the text in sign.png", "-m", model_dir, "-n", "2", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["prompt"] == "Read the text in sign.png" and data["images"] == [str(thumb)]
    code, out, _ = cli(capsys, monkeypatch, "describe", "--help")
    assert "contains a space" in flat(out)


# -- new: image URLs -----------------------------------------------------------------------------


@pytest.fixture()
def server(thumb):
    body = thumb.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.jpg":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:100])
                self.wfile.flush()
                time.sleep(3)
                return
            if self.path != "/photo.jpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_image_urls(capsys, monkeypatch, model_dir, vlm, thumb, server):
    import smolvlm_cli.image_loading as image_loading

    code, out, err = cli(
        capsys,
        monkeypatch,
        "describe",
        f"{server}/photo.jpg",
        "What is it?",
        "-m",
        model_dir,
        "-n",
        "4",
        "--detail",
        "low",
    )
    assert code == 0, err
    assert out == vlm.generate(str(thumb), "What is it?", max_new_tokens=4, tiling="low") + "\n"
    code, _, err = cli(capsys, monkeypatch, "describe", f"{server}/nothing.jpg", "-m", model_dir)
    assert code == 1 and "HTTP 404" in err and "Traceback" not in err
    monkeypatch.setattr(image_loading, "URL_MAX_BYTES", 1000)
    code, _, err = cli(capsys, monkeypatch, "describe", f"{server}/photo.jpg", "-m", model_dir)
    assert code == 1 and "larger than 0.001 MB" in err
    monkeypatch.setattr(image_loading, "URL_MAX_BYTES", 100_000_000)
    monkeypatch.setattr(image_loading, "URL_TIMEOUT_S", 0.5)
    started = time.monotonic()
    code, _, err = cli(capsys, monkeypatch, "describe", f"{server}/slow.jpg", "-m", model_dir)
    assert code == 1 and "no complete answer within 0.5 s" in err
    assert time.monotonic() - started < 2.5
    for command in (["describe"], ["ask", "-q", "Why?"]):  # a video URL: refused before any download
        code, _, err = cli(capsys, monkeypatch, *command, f"{server}/clip.mp4?x=1", "-m", model_dir)
        assert code == 1 and "videos are read from files, not URLs" in err and "HTTP 404" not in err, err


# -- new: --system -------------------------------------------------------------------------------


def test_system_prompt(capsys, monkeypatch, model_dir, vlm, thumb, tmp_path):
    system = "Answer in French."
    plain = cli(capsys, monkeypatch, "describe", thumb, "-m", model_dir, "-n", "3", "--detail", "low", "--json")
    code, out, err = cli(
        capsys,
        monkeypatch,
        "describe",
        thumb,
        "-m",
        model_dir,
        "-n",
        "3",
        "--detail",
        "low",
        "--json",
        "--system",
        system,
    )
    assert plain[0] == code == 0, err
    with_system = json.loads(out)
    assert with_system["system"] == system
    assert with_system["prompt_tokens"] > json.loads(plain[1])["prompt_tokens"]
    messages = build_messages("Describe this image in detail.", 1, system)
    assert with_system["text"] == vlm.stream(str(thumb), messages=messages, tiling="low", max_new_tokens=3).text()
    code, out, err = cli(
        capsys,
        monkeypatch,
        "ask",
        thumb,
        "-q",
        "Why?",
        "-m",
        model_dir,
        "-n",
        "2",
        "--detail",
        "low",
        "--json",
        "-s",
        system,
    )
    assert code == 0, err
    asked = json.loads(out)
    assert (
        asked["text"]
        == vlm.stream(str(thumb), messages=build_messages("Why?", 1, system), tiling="low", max_new_tokens=2).text()
    )
    transcript = tmp_path / "t.json"
    code, _, err = cli(
        capsys,
        monkeypatch,
        "chat",
        thumb,
        "-m",
        model_dir,
        "-n",
        "2",
        "--detail",
        "low",
        "--system",
        system,
        stdin=f"Hi\n/save {transcript}\n".encode(),
    )
    assert code == 0, err
    saved = json.loads(transcript.read_text())
    assert saved[0] == {"role": "system", "content": [{"type": "text", "text": system}]}
    assert saved[1]["content"][0] == {"type": "image", "path": str(thumb)}  # named in the transcript
