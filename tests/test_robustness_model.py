"""Model-side faults through the real `smolvlm describe`: a damaged model directory, graphs that
do not fit the config, an unknown dtype, a Hub id that cannot be resolved offline.

Each must be exit 1 (exit 2 for a bad option value), an `Error: ...` line saying what is wrong
(naming the file), a `Hint: ...` saying what to do, no traceback, nothing on stdout.
"""

from __future__ import annotations

import re

import pytest
from PIL import Image

from conftest import assert_clean_error, clone, edit_json, invoke_cli, replace, run_cli, stderr_of

pytestmark = pytest.mark.slow  # real CLI subprocesses: exit codes and error lines per broken model

NAME = "SmolVLM2-256M-Video-Instruct"


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("model-faults") / "photo.png"
    Image.new("RGB", (40, 30), "teal").save(path)
    return path


def hint(result) -> str:
    lines = [l for l in stderr_of(result).splitlines() if l.startswith("Hint: ")]
    assert lines, stderr_of(result)
    return lines[0]


def test_missing_tokenizer_json(model_dir, image, tmp_path):
    broken = clone(model_dir, tmp_path / "m")
    replace(broken / "tokenizer.json", None)
    result = run_cli("describe", image, "-m", broken)
    assert_clean_error(result, names=["tokenizer.json", broken], reason="not found")
    assert "tokenizer.json" in hint(result)


def test_corrupt_tokenizer_and_config_files(model_dir, image, tmp_path):
    broken = clone(model_dir, tmp_path / "tok")
    replace(broken / "tokenizer.json", '{"version": "1.0", "model": ')
    assert_clean_error(
        run_cli("describe", image, "-m", broken), names=[broken / "tokenizer.json"], reason="not a valid tokenizer file"
    )
    broken = clone(model_dir, tmp_path / "cfg")
    replace(broken / "config.json", "{not json")
    assert_clean_error(
        run_cli("describe", image, "-m", broken), names=[broken / "config.json"], reason="not valid JSON"
    )


def test_truncated_onnx_graph(model_dir, image, tmp_path):
    broken = clone(model_dir, tmp_path / "m")
    graph = broken / "onnx" / "decoder_model_merged.onnx"
    data = graph.read_bytes()
    replace(graph, data[: len(data) // 3])
    result = run_cli("describe", image, "-m", broken)
    assert_clean_error(result, names=[graph], reason="cannot load")
    assert "truncated or corrupt" in hint(result)


def test_onnx_graph_in_the_wrong_place(model_dir, image, tmp_path):
    """The embeddings graph saved as the vision encoder: its inputs are not the encoder's."""
    broken = clone(model_dir, tmp_path / "m")
    replace(broken / "onnx" / "vision_encoder.onnx", (model_dir / "onnx" / "embed_tokens.onnx").read_bytes())
    assert_clean_error(
        run_cli("describe", image, "-m", broken), names=["vision_encoder.onnx"], reason="no pixel_values input"
    )


def test_onnx_layer_count_does_not_match_config(model_dir, image, tmp_path):
    broken = clone(model_dir, tmp_path / "m")
    edit_json(
        broken / "config.json",
        lambda c: c["text_config"].update(num_hidden_layers=c["text_config"]["num_hidden_layers"] + 1),
    )
    result = run_cli("describe", image, "-m", broken)
    assert_clean_error(result, names=["decoder_model_merged.onnx", "config.json"], reason="does not match")
    assert "different models" in hint(result)


def test_onnx_kv_heads_do_not_match_config(model_dir, image, tmp_path):
    broken = clone(model_dir, tmp_path / "m")
    edit_json(broken / "config.json", lambda c: c["text_config"].update(num_key_value_heads=1))
    result = run_cli("describe", image, "-m", broken, "-n", "2", "--dtype", "fp32")
    # named at load time: the graph, the config and the numbers that disagree
    assert_clean_error(result, names=["decoder_model_merged.onnx", "config.json", "1 key/value heads"])


@pytest.mark.parametrize(
    "file, change, reason",
    [
        ("processor_config.json", lambda c: c.update(image_seq_len=32), "image_seq_len is 32"),
        ("preprocessor_config.json", lambda c: c.update(max_image_size={"longest_edge": 384}), "384-px tile"),
        ("config.json", lambda c: c.update(image_token_id=5), "image_token_id is 5"),
        ("config.json", lambda c: c.update(model_type="llava"), "model_type 'llava' is not supported"),
    ],
    ids=["image-seq-len", "tile-size", "image-token-id", "model-type"],
)
def test_inconsistent_configuration_files(model_dir, image, tmp_path, file, change, reason):
    """Files that disagree with each other fail at load, naming the values, instead of as
    'N image tokens in the prompt but M image feature rows' deep inside generation."""
    broken = clone(model_dir, tmp_path / "m")
    edit_json(broken / file, change)
    result = run_cli("describe", image, "-m", broken, "-n", "2")
    assert_clean_error(result, reason=reason)
    hint(result)


@pytest.mark.parametrize(
    "dtype, message",
    [
        ("int9", "unknown dtype 'int9' (choose from fp32, fp16, int8,"),
        ("brain=int8", "unknown model component 'brain' (choose from vision, embed, decoder)"),
    ],
)
def test_unknown_dtype_is_a_usage_error(model_dir, image, dtype, message):
    result = run_cli("describe", image, "-m", model_dir, "--dtype", dtype)
    err = stderr_of(result)
    assert result.returncode == 2 and result.stdout == b"" and "Traceback" not in err
    flat = re.sub(r"[\s\u2500-\u257f]+", " ", err)  # rich's box and line wrapping undone
    assert "Invalid value for '--dtype'" in flat and message in flat


def test_known_dtype_without_its_files(model_dir, image):
    result = run_cli("describe", image, "-m", model_dir, "--dtype", "q4f16", "--backend", "onnx")
    assert_clean_error(result, reason="no ONNX files for dtype q4f16")
    assert "--dtype" in hint(result)


def test_unknown_hub_id_offline(image, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("describe", image, "-m", "nobody-here/no-such-smolvlm", env=env)
    assert_clean_error(
        result, names=["nobody-here/no-such-smolvlm"], reason="not in the local cache, and HF_HUB_OFFLINE is set"
    )
    assert "HF_HUB_OFFLINE" in hint(result) and "smolvlm download" in hint(result)
    result = run_cli("describe", image, "-m", "not a model id", env=env)
    assert_clean_error(result, names=["not a model id"], reason="neither a local directory nor a Hub id")


def test_model_path_is_a_file(image, tmp_path):
    file = tmp_path / "model.onnx"
    file.write_bytes(b"x")
    assert_clean_error(run_cli("describe", image, "-m", file), names=[file], reason="is a file")


def test_a_folder_that_is_not_a_model_and_an_empty_name(image, tmp_path):
    """An empty folder was "has no ONNX files for dtype int8" (advice about dtypes and torch),
    and `-m ""` the working folder under an empty name."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    for args in (("describe", image, "-m", empty), ("download", empty)):
        assert_clean_error(invoke_cli(*args), names=[empty], reason="has no config.json")
    assert_clean_error(invoke_cli("describe", image, "-m", ""), reason="the model name is empty")


def test_a_graph_cache_that_cannot_be_a_folder_names_the_setting(model_dir, image, tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("x")
    result = invoke_cli("describe", image, "-m", model_dir, "--graphs", "build", env={"SMOLVLM_CACHE": str(in_the_way)})
    assert_clean_error(result, names=[in_the_way], reason="cannot use the graph cache")
    assert "SMOLVLM_CACHE" in stderr_of(result)


def test_a_graph_cache_that_refuses_its_lock_names_the_setting(model_dir, image, tmp_path, monkeypatch):
    """A read-only cache, built before for another dtype: its lock file cannot be made."""
    import filelock

    def refused(lock, *args, **kwargs):
        raise PermissionError(13, "Permission denied", lock.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", refused)
    cache = tmp_path / "read-only"
    result = invoke_cli("describe", image, "-m", model_dir, "--graphs", "build", env={"SMOLVLM_CACHE": str(cache)})
    assert_clean_error(result, names=[cache], reason="cannot use the graph cache")
    assert "SMOLVLM_CACHE" in stderr_of(result)


def test_chat_template_that_reads_files_fails_cleanly(model_dir, image, tmp_path):
    """A template cannot include files (no loader in the sandbox); it fails as one error line."""
    broken = clone(model_dir, tmp_path / "m")
    (broken / "chat_template.json").unlink()
    (broken / "chat_template.jinja").write_text("{% include '/etc/passwd' %}")
    result = run_cli("describe", image, "-m", broken, "-n", "2")
    assert_clean_error(result, reason="chat template")
    assert "root:" not in stderr_of(result)
