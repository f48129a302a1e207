"""Model resolution: local directories, Hub ids through the real huggingface_hub code, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import fixture_dir
from smolvlm_cli.backends.select import Selection
from smolvlm_cli.errors import ModelNotFoundError
from smolvlm_cli.hub import CONFIG_FILES, files_for, resolve_model


def test_local_directory_is_used_as_is():
    d = fixture_dir("SmolVLM2-256M-Video-Instruct")
    assert resolve_model(str(d), list(CONFIG_FILES)) == d


@pytest.mark.parametrize("name", ["not a repo", "../nowhere", "/no/such/dir", "a/b/c"])
def test_neither_directory_nor_hub_id(name, monkeypatch):
    monkeypatch.delenv("SMOLVLM_MODEL", raising=False)
    with pytest.raises(ModelNotFoundError, match=f"model '{name}' is neither a local directory nor a Hub id"):
        resolve_model(name, [])
    monkeypatch.setenv("SMOLVLM_MODEL", name)  # set long ago in a shell profile: say so
    with pytest.raises(ModelNotFoundError, match=r"\(from \$SMOLVLM_MODEL\) is neither"):
        resolve_model(name, [])


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(str(f), [])


def test_a_hugging_face_cache_that_cannot_be_written_is_named(monkeypatch):
    """HOME a file: "cannot download ...: Not a directory" with advice to connect."""
    import huggingface_hub

    def fail(*args, **kwargs):
        raise NotADirectoryError(20, "Not a directory", "/srv/home-file/.cache/huggingface/token")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(ModelNotFoundError, match="cannot use the Hugging Face cache: Not a directory: /srv/home") as e:
        resolve_model("someone/model", files_for("onnx", "int8"))
    assert "HF_HOME" in e.value.hint and "connect" not in e.value.hint


def test_files_for_a_dtype_only():
    files = files_for("onnx", "vision=fp32,decoder=int8")
    assert "onnx/decoder_model_merged_int8.onnx" in files
    assert "onnx/decoder_model_merged.onnx" not in files
    assert "onnx/vision_encoder.onnx" in files and "config.json" in files
    assert not any(f.endswith(".safetensors") for f in files)
    assert "*.safetensors" in files_for("torch", None)


def _resolve_in_subprocess(model: str, hf_home, dtype: str = "fp32", select: bool = False, env: dict | None = None):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", **(env or {})}
    env.pop("HF_HUB_CACHE", None)
    call = (
        f"select_backend({model!r}, 'auto', {dtype!r})"
        if select
        else f"resolve_model({model!r}, files_for('onnx', {dtype!r}))"
    )
    code = (
        "import sys; from smolvlm_cli.hub import resolve_model, files_for\n"
        "from smolvlm_cli.backends.select import select_backend\n"
        "from smolvlm_cli.errors import SmolVLMError\n"
        "try:\n"
        f"    print({call})\n"
        "except SmolVLMError as e:\n"
        "    print('ERR', e.message, '|', e.hint); sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    result = _resolve_in_subprocess("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", tmp_path)
    assert result.returncode == 3, result.stderr
    assert "not in the local cache" in result.stdout and "smolvlm download" in result.stdout


def _cached_snapshot(tmp_path, graphs=("vision_encoder", "embed_tokens", "decoder_model_merged")):
    repo = tmp_path / "hub" / "models--HuggingFaceTB--SmolVLM2-256M-Video-Instruct"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in CONFIG_FILES:
        src = fixture_dir("SmolVLM2-256M-Video-Instruct") / name
        if src.exists():
            shutil.copyfile(src, snapshot / name)
    (snapshot / "onnx").mkdir()
    for graph in graphs:
        (snapshot / "onnx" / f"{graph}.onnx").write_bytes(b"graph")
    return snapshot


@pytest.mark.slow
def test_offline_uses_the_hub_cache(tmp_path):
    """A snapshot in the Hub's cache layout resolves offline to the snapshot folder."""
    snapshot = _cached_snapshot(tmp_path)
    result = _resolve_in_subprocess("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == str(snapshot)
    assert json.loads((snapshot / "config.json").read_text())["model_type"] == "smolvlm"


@pytest.mark.slow
def test_a_malformed_hf_endpoint_still_finds_the_cache_and_is_named(tmp_path):
    """HF_ENDPOINT without http(s):// raised the HTTP client's own error, which huggingface_hub
    lets through: models already in the cache failed too (an unreachable endpoint falls back)."""
    snapshot = _cached_snapshot(tmp_path)
    junk = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "junk"}
    result = _resolve_in_subprocess("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", tmp_path, env=junk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == str(snapshot)
    result = _resolve_in_subprocess("someone/not-cached", tmp_path, env=junk)
    assert result.returncode == 3, result.stderr
    assert "cannot download someone/not-cached" in result.stdout and "HF_ENDPOINT ('junk')" in result.stdout


@pytest.mark.slow
def test_default_dtype_falls_back_to_the_graphs_a_hub_repo_has(tmp_path):
    """A repo without the default (int8) graphs still runs on ONNX with the fp32 ones it has."""
    snapshot = _cached_snapshot(tmp_path)
    result = _resolve_in_subprocess("HuggingFaceTB/SmolVLM2-256M-Video-Instruct", tmp_path, dtype=None, select=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == repr(Selection("onnx", snapshot, snapshot))


def test_missing_graphs_advice_fits_the_case(tmp_path, monkeypatch):
    """--graphs hub: an fp32-only folder asked for int8 was told to install torch (which cannot
    run int8); a Hub id offline whose cached snapshot lacks the graphs was "has no ONNX files"."""
    from smolvlm_cli.backends import select
    from smolvlm_cli.backends import torch as torch_backend
    from smolvlm_cli.errors import BackendUnavailableError

    folder = tmp_path / "fp32-only"
    (folder / "onnx").mkdir(parents=True)
    for name in CONFIG_FILES:
        if (fixture_dir("SmolVLM2-256M-Video-Instruct") / name).exists():
            shutil.copyfile(fixture_dir("SmolVLM2-256M-Video-Instruct") / name, folder / name)
    for graph in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        (folder / "onnx" / f"{graph}.onnx").write_bytes(b"graph")
    monkeypatch.setattr(torch_backend, "torch_available", lambda: False)
    with pytest.raises(BackendUnavailableError) as caught:
        select.select_backend(str(folder), dtype="int8", graphs="hub")
    assert "torch" not in caught.value.message and "torch" not in caught.value.hint
    assert "choose another --dtype" in caught.value.hint

    monkeypatch.setattr(select, "resolve_model", lambda model, files, progress=None: folder)
    monkeypatch.setattr(select, "offline", lambda: True)
    with pytest.raises(BackendUnavailableError, match="in the local cache, and HF_HUB_OFFLINE is set") as caught:
        select.select_backend("someone/model", dtype="int8", graphs="hub")
    assert caught.value.hint.startswith("unset HF_HUB_OFFLINE to fetch them")
