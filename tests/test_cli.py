"""The `smolvlm` command as a user runs it: real subprocesses on a tiny exported checkpoint.

Exit codes, stdout/stderr separation, stdin images and prompts, `--json`, every error path, and
that what the CLI streams is exactly what the library generates.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli, run_cli
from smolvlm_cli import SmolVLM
from smolvlm_cli.image_processing import tile_grid
from smolvlm_cli.config import ModelConfig

NAME = "SmolVLM2-256M-Video-Instruct"
NO_TORCH_CHECK = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY', sorted({m.split('.')[0] for m in sys.modules}"
    " & {'torch', 'transformers', 'starlette', 'uvicorn', 'pydantic'}), file=sys.stderr))\n"
    "from smolvlm_cli.cli.main import main\n"
    "sys.argv[0] = 'smolvlm'\n"
    "main()\n"
)


def run(
    *args, input: bytes | str | None = None, env: dict | None = None, timeout: float = 120, check_no_torch: bool = False
) -> subprocess.CompletedProcess:
    """The CLI in this process (`invoke_cli`), or in a real one (`run_cli`) where the test needs
    it: to see which modules a fresh process imports, or with Hub settings (huggingface_hub
    reads them at import)."""
    if check_no_torch or set(env or ()) - {"SMOLVLM_DEBUG"}:
        return run_cli(
            *args,
            input=b"" if input is None else input,
            env=env,
            timeout=timeout,
            python_code=NO_TORCH_CHECK if check_no_torch else None,
        )
    return invoke_cli(*args, input=input, env=env)


def out(result) -> str:
    return result.stdout.decode("utf-8")


def err(result) -> str:
    return result.stderr.decode("utf-8")


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def vlm(model_dir):
    return SmolVLM.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "photo one.jpg"  # a space in the name on purpose
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.mark.slow
def test_help_and_version_do_not_load_torch():
    result = run("--help", check_no_torch=True)
    assert result.returncode == 0
    assert "describe" in out(result) and "inspect" in out(result)
    assert "HEAVY []" in err(result)
    version = run("--version")
    assert version.returncode == 0 and out(version).startswith("smolvlm-cli ")


def test_command_help_paragraphs_are_not_broken_mid_sentence():
    """Typer's rich help keeps a docstring's line breaks, so a paragraph wrapped in the source
    prints broken lines (in `smolvlm --help` too): each paragraph is one source line, rich wraps."""
    import inspect

    from smolvlm_cli.cli.main import app

    for command in app.registered_commands:
        for paragraph in inspect.cleandoc(command.callback.__doc__).split("\n\n"):
            assert "\n" not in paragraph, f"{command.callback.__name__}: {paragraph!r}"


@pytest.mark.slow
def test_describe_streams_exactly_what_generate_returns(model_dir, vlm, image_path):
    result = run("describe", image_path, "What is this?", "-m", model_dir, "-n", "12", check_no_torch=True)
    assert result.returncode == 0, err(result)
    expected = vlm.generate(str(image_path), "What is this?", max_new_tokens=12)
    assert out(result) == expected + "\n"
    assert "HEAVY []" in err(result)  # the ONNX path never imports torch or transformers
    assert "Traceback" not in err(result)


def test_no_stream_and_prompt_option_give_the_same_text(model_dir, vlm, image_path):
    result = run("describe", image_path, "-p", "Describe.", "-m", model_dir, "-n", "8", "--no-stream")
    assert result.returncode == 0, err(result)
    assert out(result) == vlm.generate(str(image_path), "Describe.", max_new_tokens=8) + "\n"


def test_json_output(model_dir, vlm, image_path):
    result = run("describe", image_path, "-m", model_dir, "-n", "6", "--json", "--no-split")
    assert result.returncode == 0, err(result)
    lines = out(result).splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["text"] == vlm.generate(str(image_path), max_new_tokens=6, tiling="low")
    assert data["backend"] == "onnx" and data["dtype"] == "fp32" and data["model"] == str(model_dir)
    assert data["generated_tokens"] == 6 and data["image_tiles"] == 1 and data["image_tokens"] == 64
    assert data["prompt_tokens"] > 64 and data["stop_reason"] in ("stop", "length")
    assert data["images"] == [str(image_path)]
    for key in ("load_s", "preprocess_s", "vision_s", "prefill_s", "ttft_s", "decode_s", "decode_tokens_per_s"):
        assert isinstance(data["timings"][key], (int, float)) and data["timings"][key] >= 0


def test_image_from_stdin_and_prompt_from_pipe(model_dir, vlm, image_path):
    data = image_path.read_bytes()
    result = run("describe", "-", "Describe.", "-m", model_dir, "-n", "6", input=data)
    assert result.returncode == 0, err(result)
    assert out(result) == vlm.generate(data, "Describe.", max_new_tokens=6) + "\n"

    piped = run("describe", image_path, "-p", "-", "-m", model_dir, "-n", "6", input="Is there a cat?\n")
    assert piped.returncode == 0, err(piped)
    assert out(piped) == vlm.generate(str(image_path), "Is there a cat?", max_new_tokens=6) + "\n"


def test_two_images_make_one_prompt(model_dir, vlm, image_path, tmp_path):
    other = tmp_path / "b.png"
    Image.new("RGB", (200, 100), "red").save(other)
    result = run("describe", image_path, other, "Compare.", "-m", model_dir, "-n", "5", "--json")
    assert result.returncode == 0, err(result)
    data = json.loads(out(result))
    assert data["images"] == [str(image_path), str(other)]
    assert data["text"] == vlm.generate([str(image_path), str(other)], "Compare.", max_new_tokens=5)


def test_verbose_timings_go_to_stderr(model_dir, image_path):
    result = run("describe", image_path, "-m", model_dir, "-n", "4", "--verbose")
    assert result.returncode == 0
    assert "tokens/s" in err(result) and "tokens/s" not in out(result)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p / "missing.jpg", "no such file"),
        (lambda p: (p / "text.jpg").write_text("hello") and p / "text.jpg", "not an image"),
        (lambda p: (p / "empty.png").write_bytes(b"") or p / "empty.png", "empty"),
        (lambda p: p, "directory"),
    ],
)
def test_bad_images_are_one_line_errors(model_dir, tmp_path, make, reason):
    path = make(tmp_path)
    result = run("describe", path, "-m", model_dir)
    assert result.returncode == 1
    lines = err(result).strip().splitlines()
    assert lines[0].startswith("Error: ") and path.name in lines[0]
    assert reason in err(result).lower()
    assert "Traceback" not in err(result) and out(result) == ""


@pytest.mark.slow
def test_model_errors(model_dir, image_path, tmp_path):
    unknown = run("describe", image_path, "-m", tmp_path / "no-such-model")
    assert unknown.returncode == 1 and "Error: " in err(unknown) and "neither a local directory" in err(unknown)

    no_onnx = tmp_path / "no-onnx"
    no_onnx.mkdir()
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt"):
            (no_onnx / f.name).write_bytes(f.read_bytes())
    missing = run("describe", image_path, "-m", no_onnx)
    assert missing.returncode == 1 and "no ONNX files" in err(missing)
    assert "Hint: " in err(missing) and "Traceback" not in err(missing)

    offline = run(
        "describe",
        image_path,
        "-m",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert offline.returncode == 1 and "not in the local cache" in err(offline)

    missing_dtype = run("describe", image_path, "-m", model_dir, "--dtype", "q4f16", "--backend", "onnx")
    assert missing_dtype.returncode == 1
    assert re.search(r"^Error: .* has no ONNX files for dtype q4f16", err(missing_dtype))
    # q4f16 cannot be built, and --backend onnx rules torch out: the hint offers neither
    assert "Hint: choose another --dtype\n" in err(missing_dtype)


@pytest.mark.parametrize(
    "args",
    [
        ["--top-p", "2"],
        ["--dtype", "int9"],
        ["--backend", "tpu"],
        ["-n", "0"],
        ["--temperature", "-1"],
        ["--repetition-penalty", "0"],
        ["--bogus"],
    ],
)
def test_bad_option_values_are_usage_errors(model_dir, image_path, args):
    result = run("describe", image_path, "-m", model_dir, *args)
    assert result.returncode == 2, err(result)
    assert "Traceback" not in err(result) and out(result) == ""


def test_stdin_conflicts(model_dir, image_path):
    twice = run("describe", "-", "-", "-m", model_dir, input=image_path.read_bytes())
    assert twice.returncode == 2 and "stdin" in err(twice)
    empty = run("describe", "-", "-m", model_dir, input=b"")
    assert empty.returncode == 1 and "Error: <stdin>" in err(empty)
    garbage = run("describe", "-", "-m", model_dir, input=b"not an image at all")
    assert garbage.returncode == 1 and "<stdin>" in err(garbage) and "Traceback" not in err(garbage)


def test_debug_shows_the_traceback(model_dir, tmp_path):
    result = run("describe", tmp_path / "missing.jpg", "-m", model_dir, env={"SMOLVLM_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in err(result)


def _describe_command(model_dir, image_path, max_new_tokens: int) -> list[str]:
    """`smolvlm describe` as a real process (signals, pipes, a closed stdout)."""
    command = ["describe", str(image_path), "-m", str(model_dir), "-n", str(max_new_tokens), "--no-split"]
    return [sys.executable, "-m", "smolvlm_cli", *command]


@pytest.mark.slow
def test_ctrl_c_keeps_the_output_and_exits_130(model_dir, image_path):
    # a shell starts background jobs with SIGINT ignored, and Python then keeps ignoring it: give
    # the child the disposition of a command typed at a terminal, wherever the tests run
    proc = subprocess.Popen(
        _describe_command(model_dir, image_path, 8000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = proc.stdout.read(1)  # the answer has started streaming
    assert first
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert len(first + rest) > 0


@pytest.mark.slow
def test_closed_pipe_exits_quietly(model_dir, image_path):
    proc = subprocess.Popen(
        _describe_command(model_dir, image_path, 8000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert len(proc.stdout.read(10)) == 10  # like `| head -c 10`
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 0, stderr
    assert stderr.strip() == ""


@pytest.mark.slow
def test_a_closed_stdout_is_one_clear_error(model_dir, image_path):
    """`smolvlm describe img >&-`: the answer has nowhere to go (was `Error: AttributeError`)."""
    result = subprocess.run(
        _describe_command(model_dir, image_path, 2),
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(1),
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: standard output is closed")


def test_model_output_is_written_raw(monkeypatch, model_dir, image_path):
    """Rich markup in the answer stays text: nothing between the model and stdout interprets it."""
    from typer.testing import CliRunner

    from smolvlm_cli.cli.main import app
    from smolvlm_cli.model import SmolVLM as Model

    original = Model.stream_prepared

    def stream(self, *args, **kwargs):
        real = original(self, *args, **kwargs)
        real._deltas = iter(["[bold]red[/bold] ", "\x1b[31mx"])
        return real

    monkeypatch.setattr(Model, "stream_prepared", stream)
    result = CliRunner().invoke(app, ["describe", str(image_path), "-m", str(model_dir), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "[bold]red[/bold] \x1b[31mx\n"


def test_inspect(model_dir, image_path, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1024, 768)).save(big)
    result = run("inspect", big, "-m", model_dir, "--json")
    assert result.returncode == 0, err(result)
    info = json.loads(out(result))
    rows, cols = tile_grid(1024, 768, ModelConfig.from_dir(model_dir))
    assert (info["rows"], info["cols"], info["tiles"]) == (rows, cols, rows * cols + 1) == (2, 2, 5)  # 1024 px
    assert info["image_tokens"] == 5 * 64
    single = json.loads(out(run("inspect", big, "-m", model_dir, "--json", "--no-split")))
    assert (single["tiles"], single["image_tokens"]) == (1, 64)
    text = run("inspect", big, "-m", model_dir)
    assert "5 tiles" in out(text) and "320 image tokens" in out(text)
    larger = json.loads(out(run("inspect", big, "-m", model_dir, "--json", "--longest-edge", "2048")))
    rows, cols = tile_grid(1024, 768, ModelConfig.from_dir(model_dir), longest_edge=2048)
    assert (larger["rows"], larger["cols"], larger["tiles"]) == (rows, cols, rows * cols + 1) == (3, 4, 13)


@pytest.mark.slow
def test_download_and_models_use_the_hub_cache(model_dir, tmp_path):
    # a graph cache of its own: `models` lists every graph built in the run's shared one (from
    # local folders too), so a build by an earlier test on this worker made the list non-empty
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "SMOLVLM_CACHE": str(tmp_path / "graphs")}
    empty = run("models", env=env)
    assert empty.returncode == 0 and out(empty) == "" and "No SmolVLM models" in err(empty)
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-smolvlm"
    commit = "a" * 40
    snapshot = repo / "snapshots" / commit
    (snapshot / "onnx").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix == ".json":
            (snapshot / f.name).write_bytes(f.read_bytes())
    for graph in ("vision_encoder", "embed_tokens", "decoder_model_merged"):  # the repo's own graphs
        (snapshot / "onnx" / f"{graph}_int8.onnx").write_bytes(b"x" * 1000)
    listed = json.loads(out(run("models", "--json", env=env)))
    assert [m["model"] for m in listed] == ["someone/tiny-smolvlm"]
    assert listed[0]["onnx"]["decoder_model_merged_int8.onnx"] == 1000 and listed[0]["built"] == []
    assert "someone/tiny-smolvlm" in out(run("models", env=env))
    fetched = run("download", "someone/tiny-smolvlm", "--dtype", "int8", env=env)
    assert fetched.returncode == 0, err(fetched)
    assert out(fetched).strip() == str(snapshot)
    missing = run("download", "someone/other-model", env=env)
    assert missing.returncode == 1 and "not in the local cache" in err(missing)


def test_models_lists_local_folders_of_the_same_name_apart(tmp_path):
    """Graphs built from two folders both called `tiny` were one row with no path."""
    graphs = tmp_path / "cache" / "graphs"
    for key, folder in (("a1", "/data/one/tiny"), ("b2", "/data/two/tiny")):
        (graphs / "tiny" / key).mkdir(parents=True)
        (graphs / "tiny" / key / "source.json").write_text(json.dumps({"model": "tiny", "source": folder}))
    result = invoke_cli("models", "--json", env={"SMOLVLM_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    rows = [row for row in json.loads(result.stdout) if row["model"] == "tiny"]
    assert sorted(row["path"] for row in rows) == ["/data/one/tiny", "/data/two/tiny"]
    assert all(len(row["built"]) == 1 for row in rows)
    (graphs / "tiny" / "a1" / "source.json").write_text("null")  # valid JSON, not a record
    damaged = invoke_cli("models", "--json", env={"SMOLVLM_CACHE": str(tmp_path / "cache")})
    assert damaged.returncode == 0, damaged.stderr  # was AttributeError, for every later `models`
    assert len([row for row in json.loads(damaged.stdout) if row["model"] == "tiny"]) == 2
