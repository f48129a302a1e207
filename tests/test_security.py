"""Security: model directories are data, never code or pointers elsewhere.

- No `trust_remote_code`: a model directory whose config.json has an `auto_map` to its own
  Python module never runs it, on either backend.
- Model files are read only from the resolved model directory: path-like keys in the config
  files (`tokenizer_file`, `auto_map`, `_name_or_path`, ...) are ignored, an ONNX graph whose
  external data points outside its folder is refused, `--dtype` cannot name a path.
- (Output containment under `--output-dir` is in test_robustness_outputs.py, with batch.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_clean_error, clone, edit_json, replace, run_cli, stderr_of

pytestmark = pytest.mark.slow  # real CLI subprocesses, audit hooks, permissions

NAME = "SmolVLM2-256M-Video-Instruct"
SRC = Path(__file__).resolve().parents[1] / "src" / "smolvlm_cli"

EVIL_MODULE = """\
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "smolvlm"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""

AUDIT = """\
import os, sys
opened = []
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
from smolvlm_cli.cli.main import main
try:
    main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        fh.write("\\n".join(opened))
"""


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("security") / "photo.png"
    Image.new("RGB", (40, 30), "olive").save(path)
    return path


def hostile_model(model_dir: Path, root: Path) -> tuple[Path, Path, Path]:
    """(model dir, outside dir, marker): a model whose config files point outside and to code."""
    outside = root / "outside"
    outside.mkdir()
    marker = root / "PWNED"
    for name in ("evil.py", "outside_evil.py"):
        (outside / name).write_text(EVIL_MODULE.format(marker=str(marker)))
    (outside / "tokenizer.json").write_text("{}")  # would break loading if it were read
    (outside / "config.json").write_text("{}")
    hostile = clone(model_dir, root / "model")
    (hostile / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    edit_json(
        hostile / "config.json",
        lambda c: c.update(
            _name_or_path=str(outside),
            auto_map={
                "AutoConfig": "evil.EvilConfig",
                "AutoModel": "evil.EvilModel",
                "AutoModelForImageTextToText": "evil.EvilModel",
                "AutoProcessor": "../outside/outside_evil.EvilModel",
            },
        ),
    )
    edit_json(
        hostile / "tokenizer_config.json",
        lambda c: c.update(
            tokenizer_file=str(outside / "tokenizer.json"),
            vocab_file="../outside/vocab.json",
            merges_file=str(outside / "merges.txt"),
            name_or_path=str(outside),
            auto_map={"AutoTokenizer": ["../outside/outside_evil.EvilModel", None]},
        ),
    )
    edit_json(
        hostile / "preprocessor_config.json",
        lambda c: c.update(auto_map={"AutoImageProcessor": "../outside/outside_evil.EvilModel"}),
    )
    return hostile, outside, marker


def test_source_never_enables_remote_code():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text.replace(" ", ""), path
        assert "register_for_auto_class" not in text, path


def test_auto_map_code_never_runs_and_nothing_outside_is_read(model_dir, image, tmp_path, tmp_path_factory):
    """The ONNX path through the CLI, every Python-level `open` audited: nothing outside the
    model directory (and the image) is opened from the test's folders, the model's code never
    runs. (onnxruntime and tokenizers open only the paths we give them: the fixed file names
    joined to the model directory.)"""
    hostile, outside, marker = hostile_model(model_dir, tmp_path)
    log = tmp_path / "opened.txt"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("SMOLVLM_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", AUDIT, str(log), "describe", str(image), "-m", str(hostile), "-n", "3", "--no-split"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, stderr_of(result)
    assert not marker.exists()
    opened = [Path(p) for p in log.read_text().splitlines()]
    root = tmp_path_factory.getbasetemp()  # the image, the original model, the hostile copy
    mine = [p for p in opened if p.is_relative_to(root) and p != log]
    assert any(p.name == "config.json" for p in mine) and image in mine
    for path in mine:
        assert path == image or path.is_relative_to(hostile), f"read outside the model: {path}"


def test_auto_map_code_never_runs_on_the_torch_backend(model_dir, tmp_path):
    from smolvlm_cli import SmolVLM

    hostile, _, marker = hostile_model(model_dir, tmp_path)
    vlm = SmolVLM.from_pretrained(hostile, backend="torch")
    assert vlm.backend.name == "torch"
    assert vlm.generate(Image.new("RGB", (20, 20)), max_new_tokens=2, tiling="low")
    assert not marker.exists()
    assert "evil" not in sys.modules and "outside_evil" not in sys.modules


def test_a_custom_model_type_is_refused_before_any_code(model_dir, image, tmp_path):
    hostile, _, marker = hostile_model(model_dir, tmp_path)
    edit_json(hostile / "config.json", lambda c: c.update(model_type="evil"))
    for backend in ("onnx", "torch"):
        result = run_cli("describe", image, "-m", hostile, "--backend", backend)
        assert_clean_error(result, reason="model_type 'evil' is not supported")
    assert not marker.exists()


def _graph_with_external_data(location: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("pixel_values", "y")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["pixel_values", "w"], ["y"])], "g", [io_[0]], [io_[1]], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(
    "location",
    ["../../secret.bin", "{root}/secret.bin", "sub/../../../secret.bin"],
    ids=["dotdot", "absolute", "nested"],
)
def test_onnx_external_data_cannot_point_outside(model_dir, image, tmp_path, location):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"TOP-SECRET-0123456789")
    broken = clone(model_dir, tmp_path / "m")
    graph = broken / "onnx" / "vision_encoder.onnx"
    replace(graph, _graph_with_external_data(location.format(root=tmp_path)))
    result = run_cli("describe", image, "-m", broken)
    line = assert_clean_error(result, names=[graph], reason="cannot load")
    assert "escapes model directory" in line or "Absolute path not allowed" in line
    assert "TOP-SECRET" not in stderr_of(result)


@pytest.mark.parametrize("dtype", ["../../etc/passwd", "vision=../x", "/tmp/x"])
def test_dtype_cannot_name_a_path(model_dir, image, dtype):
    result = run_cli("describe", image, "-m", model_dir, "--dtype", dtype)
    assert result.returncode == 2 and "Invalid value for '--dtype'" in stderr_of(result)


def test_hub_ids_cannot_be_paths(image, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for model in ("../../etc", "org/../../etc", "~/nothing-here"):
        result = run_cli("describe", image, "-m", model, env=env, cwd=tmp_path)
        assert_clean_error(result, reason="neither a local directory nor a Hub id")


# -- batch: output paths stay inside --output-dir ---------------------------------------------

HOSTILE_NAMES = [
    "-rf.jpg",
    "a\nb.jpg",
    "$(touch pwned).jpg",
    "tab\there.jpg",
    "semi;rm -rf.jpg",
    " lead space.jpg",
    "back\\slash.jpg",
    "\u2024\u2024.jpg",
    "nul\x01ctl.jpg",
    "CON.jpg",
    "x.jpg.txt.jpg",
]
EXPLICIT_NAMES = ["..jpg", "...jpg", "..\\..\\escape.jpg", "..\\..\\..\\etc\\passwd.jpg"]  # hidden


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes]:
    files = {}
    for path in root.rglob("*"):
        if any(path == s or path.is_relative_to(s) for s in skip):
            continue
        files[str(path)] = b"<dir>" if path.is_dir() else path.read_bytes() if path.is_file() else b"<link>"
    return files


def test_batch_output_paths_stay_inside_output_dir(model_dir, tmp_path):
    """Names made of dots, backslashes, newlines, control and shell characters, a lookalike
    '..', a symlink to a file outside: every sidecar and the ledger land under --output-dir
    (as plain files, no links), nothing else changes, and every image is either captioned or
    reported by name (a name that could only be written outside is refused, never followed)."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.new("RGB", (20, 16), "maroon")
    outside = tmp_path / "elsewhere" / "real.jpg"
    outside.parent.mkdir()
    photo.save(outside, "JPEG")
    for name in HOSTILE_NAMES + EXPLICIT_NAMES:
        photo.save(folder / name, "JPEG")
    (folder / "link.jpg").symlink_to(outside)
    out = tmp_path / "out"
    before = _tree(tmp_path, skip=(out,))
    result = run_cli(
        "batch",
        folder,
        *[folder / n for n in EXPLICIT_NAMES],
        "-d",
        out,
        "-m",
        model_dir,
        "--no-split",
        "-n",
        "2",
        cwd=tmp_path,
    )
    err = stderr_of(result)
    assert result.returncode in (0, 1) and "Traceback" not in err and "Error: " not in err, err
    assert _tree(tmp_path, skip=(out,)) == before  # nothing outside --output-dir changed
    assert not (tmp_path / "pwned").exists()
    written = list(out.rglob("*"))
    for path in written:
        assert path.resolve().is_relative_to(out.resolve()) and not path.is_symlink(), path
    ledger = [json.loads(l) for l in (out / ".smolvlm-batch.jsonl").read_text().splitlines()]
    captioned = {r["image"] for r in ledger if r["error"] is None}
    for name in HOSTILE_NAMES + EXPLICIT_NAMES + ["link.jpg"]:
        if name not in captioned:
            assert f"refusing to write outside {out}" in err and repr(name) in err, (name, err)
    assert len(captioned) >= len(HOSTILE_NAMES) + 2  # at least the plain names and the link
    assert result.returncode == (0 if len(captioned) == len(HOSTILE_NAMES + EXPLICIT_NAMES) + 1 else 1)
    sidecars = [p for p in written if p.is_file() and p.name != ".smolvlm-batch.jsonl"]
    assert len(sidecars) == len(captioned)
    assert all(p.read_text().strip() for p in sidecars)


def test_batch_very_long_names(model_dir, tmp_path):
    """Names at the file-system limit (255 bytes) and just under it: contained, never a crash,
    and the other images are still captioned."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.new("RGB", (20, 16), "navy")
    names = ["a" * 251 + ".jpg", "b" * 236 + ".jpg", "\u00e9" * 125 + ".jpg", "short.jpg"]
    for name in names:
        photo.save(folder / name, "JPEG")
    out = tmp_path / "out"
    result = run_cli("batch", folder, "-d", out, "-m", model_dir, "--no-split", "-n", "2")
    err = stderr_of(result)
    assert result.returncode in (0, 1) and "Traceback" not in err, err
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
    assert not temp_files_in(out)
    assert "Error: " not in err, err  # no name stops the run (temp names stay under NAME_MAX)
    sidecars = {p.name for p in out.glob("*.txt")}
    assert "short.txt" in sidecars


def temp_files_in(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "smolvlm-tmp" in p.name] if root.exists() else []
