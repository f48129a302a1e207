"""`smolvlm batch` end to end: the real command in a subprocess on a tiny exported model.

Covers a kill -9 in the middle of a run and the re-run (every image captioned exactly once, no
temp file left), SIGTERM (the images in flight finish, exit 143), bad files in the folder, a path
list on stdin with results on stdout, and `--batch-size 2` / `4` giving the `--batch-size 1` captions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from smolvlm_cli.batch.resume import LEDGER_NAME

pytestmark = pytest.mark.slow  # real CLI subprocesses, signals and kill -9

MODEL = "SmolVLM2-256M-Video-Instruct"


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx_dir) -> Path:
    return tiny_onnx_dir(MODEL, ("fp32",))


def make_images(folder: Path, n: int, *, varied: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = (300 + 250 * (i % 3), 200 + 180 * (i % 2)) if varied else (64 + i, 48 + i)
        image = Image.new("RGB", size, (15 * i % 256, 100, 255 - 9 * i % 256))
        image.paste((255 - 20 * i % 256, 30, 60), (0, 0, size[0] // 2, size[1] // 3))
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        image.save(path)
        paths.append(path)
    return paths


def command(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "smolvlm_cli", "batch", "-m", str(model), "--no-split", *args]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SMOLVLM_DEBUG": "0"}


def run(cmd: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, env=env(), timeout=120)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_and_signal(cmd: list[str], cwd: Path, done, sig: int) -> subprocess.Popen:
    """Start `cmd`, send `sig` as soon as `done()` results exist (>= 3), wait for the end."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 60
    while done() < 3:
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=60)
    return proc


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "smolvlm-tmp" in p.name]


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_kill_9_mid_run_then_resume(tiny_model, tmp_path, fmt):
    images = make_images(tmp_path / "photos", 10)
    args = ["photos", "-n", "24"] + (["-o", "out.jsonl"] if fmt == "jsonl" else [])
    out = tmp_path / "out.jsonl"

    def done() -> int:
        if fmt == "jsonl":
            return out.read_bytes().count(b"\n") if out.exists() else 0
        return len(list((tmp_path / "photos").glob("*.txt")))

    killed = start_and_signal(command(tiny_model, *args), tmp_path, done, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    first = done()
    assert 3 <= first < len(images)

    again = run(command(tiny_model, *args), tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{len(images) - first} done, {first} skipped, 0 failed" in again.stderr
    if fmt == "jsonl":
        paths = [r["path"] for r in read_jsonl(out)]
        assert sorted(paths) == sorted(os.path.join("photos", p.name) for p in images)
        assert all(r["caption"] and r["error"] is None for r in read_jsonl(out))
    else:
        for image in images:
            assert image.with_suffix(".txt").read_text().strip()
        ledger = read_jsonl(tmp_path / "photos" / LEDGER_NAME)  # one line per captioning
        assert sorted(e["image"] for e in ledger) == sorted(p.name for p in images)
    assert temp_files(tmp_path) == []


def test_sigterm_finishes_in_flight_and_exits_143(tiny_model, tmp_path):
    images = make_images(tmp_path / "photos", 10)
    out = tmp_path / "out.csv"

    def done() -> int:  # rows after the header
        if not out.exists():
            return 0
        with open(out, newline="") as f:
            return max(0, len(list(csv.reader(f))) - 1)

    proc = start_and_signal(command(tiny_model, "photos", "-n", "24", "-o", "out.csv"), tmp_path, done, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr_text
    assert "Stopped by SIGTERM" in proc.stderr_text and "skipped" in proc.stderr_text
    stopped_at = done()
    assert 3 <= stopped_at < len(images)
    assert out.read_bytes().endswith(b"\r\n")  # whole rows only
    again = run(command(tiny_model, "photos", "-n", "24", "-o", "out.csv"), tmp_path)
    assert again.returncode == 0 and done() == len(images)
    assert temp_files(tmp_path) == []


def test_bad_files_in_the_folder(tiny_model, tmp_path):
    make_images(tmp_path / "photos", 3)
    folder = tmp_path / "photos"
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (9, 99, 199)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:150])
    Image.new("RGB", (4, 4)).save(folder / "zzz.gif")
    result = run(command(tiny_model, "photos", "-n", "6", "-o", "out.jsonl"), tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("Error:") == 3 and "4 done, 0 skipped, 3 failed" in result.stderr
    records = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert {name for name, r in records.items() if r["error"]} == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert all(r["caption"] is None for r in records.values() if r["error"])
    assert records["zzz.gif"]["caption"] and records["zzz.gif"]["generated_tokens"] > 0


def test_stdin_path_list_to_stdout(tiny_model, tmp_path):
    images = make_images(tmp_path / "photos", 4)
    listing = "\n".join(os.path.join("photos", p.name) for p in images[1:]) + "\nphotos/x.txt\n"
    result = run(command(tiny_model, "-", "-n", "6", "-o", "-", "-p", "Name {stem}."), tmp_path, stdin=listing)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]  # stdout: results only
    assert [r["path"] for r in records] == [os.path.join("photos", p.name) for p in images[1:]]
    assert [r["prompt"] for r in records] == [f"Name {p.stem}." for p in images[1:]]
    assert "3 done" in result.stderr


@pytest.mark.parametrize("size", ["2", "4"])
def test_batch_size_n_equals_batch_size_1(tiny_model, tmp_path, size):
    """Rows decoded together give the one-by-one captions, in the same order; the prompts differ
    in length (tiling by aspect ratio, a prompt template with the file name)."""
    images = make_images(tmp_path / "photos", 6, varied=True)
    (tmp_path / "photos" / "x.jpg").write_bytes(b"not an image")  # a failure among the batches
    common = [
        "photos",
        "-n",
        "12",
        "--format",
        "jsonl",
        "--longest-edge",
        "1024",
        "-p",
        "Describe {stem}" + " in detail" * 3,
    ]
    base = [sys.executable, "-m", "smolvlm_cli", "batch", "-m", str(tiny_model)]
    one = run([*base, *common, "-o", "b1.jsonl"], tmp_path)
    many = run([*base, *common, "-o", "bn.jsonl", "--batch-size", size], tmp_path)
    assert one.returncode == many.returncode == 1, many.stderr  # 1: an image failed

    def key(name):
        return [
            (r["path"], r["caption"], r["generated_tokens"], r["prompt_tokens"], r["error"])
            for r in read_jsonl(tmp_path / name)
        ]

    assert key("b1.jsonl") == key("bn.jsonl")
    assert len({r[3] for r in key("b1.jsonl") if r[3]}) >= 2  # prompts of different lengths
    assert sum(r[4] is None for r in key("b1.jsonl")) == len(images)
