"""The default path from a Hub cache holding only safetensors: build once, then load; faults.

A temporary HF_HOME holds a snapshot in the Hub's own layout (blobs, symlinks, refs/main) with the
config, tokenizer and processor files and `model.safetensors` of a tiny random checkpoint, and no
ONNX file. Runs are offline (HF_HUB_OFFLINE=1) through the real CLI in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_on_terminal
from default_install import ONLY_DEFAULT_DEPENDENCIES
from model_fixtures import TINY_MODEL_NAMES

REPO_ID = "someone/tiny-smolvlm"
pytestmark = pytest.mark.slow  # CLI subprocesses


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_checkpoints) -> Path:
    home = tmp_path_factory.mktemp("hf")
    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    commit = "c0ffee" + "0" * 34
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for src in tiny_checkpoints[TINY_MODEL_NAMES[0]].iterdir():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    assert not list(snapshot.glob("**/*.onnx"))
    return home


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(path)
    return path


def _env(hf_home: Path, cache: Path) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "SMOLVLM_CACHE": str(cache)}
    env.pop("HF_HUB_CACHE", None)
    return env


def _describe_cmd(image: Path, *extra: str, default_install: bool = False) -> list[str]:
    args = ["describe", str(image), "-m", REPO_ID, "-n", "6", "--no-split", *extra]
    if default_install:
        return [
            sys.executable,
            "-c",
            ONLY_DEFAULT_DEPENDENCIES + f"from smolvlm_cli.cli.main import main\nmain({args!r})",
        ]
    return [sys.executable, "-m", "smolvlm_cli", *args]


def _describe(env, image, *extra, default_install=False) -> subprocess.CompletedProcess:
    return subprocess.run(
        _describe_cmd(image, *extra, default_install=default_install),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _entry(cache: Path) -> Path:
    (entry,) = (cache / "graphs").glob("*/*/source.json")
    return entry.parent


@pytest.fixture(scope="module")
def reference_answer(hf_home, image, tmp_path_factory) -> str:
    """The first run on a fresh cache, without torch or transformers importable: it builds the
    graphs (status on stderr), and stdout holds only the answer."""
    cache = tmp_path_factory.mktemp("first")
    first = _describe(_env(hf_home, cache), image, default_install=True)
    assert first.returncode == 0, first.stderr
    assert "Building fast ONNX graphs" in first.stderr and "Built the graphs" in first.stderr
    assert first.stdout.strip() and "Building" not in first.stdout and first.stdout.count("\n") == 1
    entry = _entry(cache)
    assert json.loads((entry / "source.json").read_text())["model"] == REPO_ID
    assert sorted(p.name for p in (entry / "onnx").glob("*.onnx")) == [
        "decoder_model_merged_int8.onnx",
        "embed_tokens_int8.onnx",
        "vision_encoder_int8.onnx",
    ]
    second = _describe(_env(hf_home, cache), image)
    assert second.returncode == 0, second.stderr
    assert "Building" not in second.stderr and second.stdout == first.stdout
    return first.stdout


def test_first_run_builds_and_later_runs_load(reference_answer):
    assert reference_answer.strip()


def test_every_dtype_builds_with_only_the_default_dependencies(hf_home, image, tmp_path):
    """q4 failed on `pip install .`: onnxruntime's 4-bit quantizer imports onnx_ir, which only
    the test extras brought. fp16, q4's Gather and q4's MatMulNBits in one build (int8: the
    reference answer's first run)."""
    spec = "vision=fp16,embed=q4,decoder=q4"
    run = _describe(_env(hf_home, tmp_path / "cache"), image, "--dtype", spec, default_install=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and "Built the graphs" in run.stderr


def test_a_killed_build_leaves_nothing_that_looks_finished(hf_home, image, reference_answer, tmp_path):
    cache = tmp_path / "cache"
    env = _env(hf_home, cache)
    killer = (
        ONLY_DEFAULT_DEPENDENCIES  # SIGKILL from inside the build, after a few layers were written
        + "import os, signal\n"
        "from smolvlm_cli.backends.select import select_backend\n"
        "from smolvlm_cli.builder.layout import Progress\n"
        "class Kill(Progress):\n"
        "    n = 0\n"
        "    def step(self, d):\n"
        "        self.n += 1\n"
        "        if self.n == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"select_backend({REPO_ID!r}, progress=Kill())\n"
    )
    killed = subprocess.run([sys.executable, "-c", killer], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    onnx_dir = next((cache / "graphs").glob("*/*")) / "onnx"
    assert not list(onnx_dir.glob("*.built"))  # no graph counts as finished
    again = _describe(env, image)
    assert again.returncode == 0, again.stderr
    assert "Building" in again.stderr and again.stdout == reference_answer
    assert not list(_entry(cache).glob(".build-*"))  # the killed build's scratch is gone


def test_a_damaged_graph_is_rebuilt_with_a_notice(hf_home, image, reference_answer, tmp_path):
    cache = tmp_path / "cache"
    env = _env(hf_home, cache)
    assert _describe(env, image).returncode == 0
    graph = _entry(cache) / "onnx" / "decoder_model_merged_int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\0" * 4096  # same size, other bytes
    graph.write_bytes(bytes(data))
    source = _entry(cache) / "source.json"
    source.write_text(source.read_text()[:20])  # torn by a kill: the entry's label in `models`
    damaged = _describe(env, image)
    assert damaged.returncode == 0, damaged.stderr
    assert "decoder_model_merged_int8.onnx" in damaged.stderr and "damaged: rebuilding" in damaged.stderr
    assert damaged.stdout == reference_answer
    assert json.loads(source.read_text())["model"] == REPO_ID  # written again
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated: `download -q` rebuilds it, silently
    quiet = subprocess.run(
        [sys.executable, "-m", "smolvlm_cli", "download", REPO_ID, "-q"], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # its Note: ignored -q
    truncated = _describe(env, image)
    assert truncated.returncode == 0 and "damaged" not in truncated.stderr and "Building" not in truncated.stderr
    assert truncated.stdout == reference_answer


def test_two_first_runs_at_once_both_succeed(hf_home, image, reference_answer, tmp_path):
    env = _env(hf_home, tmp_path / "cache")
    procs = [
        subprocess.Popen(_describe_cmd(image), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert out == reference_answer
    assert sum("Building" in err for _, _, err in results) == 1  # one built, the other waited


def test_download_builds_and_models_lists_it(hf_home, tmp_path, reference_answer):
    env = _env(hf_home, tmp_path / "cache")
    fetched = subprocess.run(
        [sys.executable, "-m", "smolvlm_cli", "download", REPO_ID], env=env, capture_output=True, text=True, timeout=300
    )
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip().endswith("snapshots/c0ffee" + "0" * 34) and "Graphs:" in fetched.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "smolvlm_cli", "models", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    (row,) = json.loads(listed.stdout)
    assert row["model"] == REPO_ID and row["weights_bytes"] > 0 and row["onnx"] == {}
    (built,) = row["built"]
    assert set(built["graphs"]) == {
        "vision_encoder_int8.onnx",
        "embed_tokens_int8.onnx",
        "decoder_model_merged_int8.onnx",
    }


def test_offline_first_run_without_the_files_is_one_clear_error(image, tmp_path):
    env = _env(tmp_path / "empty-hf", tmp_path / "cache")
    result = _describe(env, image)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "not in the local cache" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_graphs_option_keeps_the_repos_own_graphs(hf_home, image, tmp_path):
    """--graphs hub never builds: a repo without onnx/ graphs is then an error naming the way out."""
    result = _describe(_env(hf_home, tmp_path / "cache"), image, "--graphs", "hub", "--backend", "onnx")
    assert result.returncode == 1 and "Building" not in result.stderr
    assert result.stderr.startswith("Error: ") and "no ONNX files" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_on_a_terminal_the_build_shows_a_progress_bar_on_stderr(hf_home, image, reference_answer, tmp_path):
    """stderr a terminal, stdout a pipe: the rich bar draws on the terminal, stdout holds the answer."""
    code, out, text = run_on_terminal(_describe_cmd(image), {**_env(hf_home, tmp_path / "cache"), "COLUMNS": "120"})
    assert code == 0, text
    assert "Building graphs for" in text and "Built the graphs" in text  # the bar, then the summary
    assert "\x1b[" in text  # drawn with terminal control sequences, not plain lines
    assert out == reference_answer
