"""ModelConfig against transformers' own configuration classes and the fixture files."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoConfig

from conftest import fixture_dir
from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import ConfigError


def test_config_matches_transformers(model_files):
    ours = ModelConfig.from_dir(model_files)
    ref = AutoConfig.from_pretrained(model_files)
    text, vision = ref.text_config, ref.vision_config
    assert ours.model_type == ref.model_type
    assert ours.image_token_id == ref.image_token_id
    assert ours.scale_factor == ref.scale_factor
    assert (ours.hidden_size, ours.num_hidden_layers) == (text.hidden_size, text.num_hidden_layers)
    assert (ours.num_attention_heads, ours.num_key_value_heads) == (text.num_attention_heads, text.num_key_value_heads)
    assert ours.head_dim == getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    assert (ours.vision_image_size, ours.patch_size) == (vision.image_size, vision.patch_size)
    assert (ours.vision_hidden_size, ours.vision_num_layers) == (vision.hidden_size, vision.num_hidden_layers)
    assert ours.vocab_size == text.vocab_size
    tokens = (vision.image_size // vision.patch_size) ** 2 // ref.scale_factor**2
    assert ours.image_seq_len == tokens == 64
    gen = json.loads((model_files / "generation_config.json").read_text())
    assert ours.eos_token_ids[0] == gen["eos_token_id"] == 49279
    assert (ours.tile_size, ours.longest_edge, ours.resample) == (512, 2048, 1)


def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(fixture_dir(name), dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_2b_geometry_without_special_cases(tmp_path):
    d = _copy("SmolVLM-256M-Instruct", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"].update(image_size=384, patch_size=14)
    cfg["scale_factor"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "processor_config.json").write_text(json.dumps({"image_seq_len": 81}))
    pre = json.loads((d / "preprocessor_config.json").read_text())
    pre["max_image_size"] = {"longest_edge": 384}
    pre["size"] = {"longest_edge": 1536}
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    gen = json.loads((d / "generation_config.json").read_text())
    gen["eos_token_id"] = 49154
    (d / "generation_config.json").write_text(json.dumps(gen))
    c = ModelConfig.from_dir(d)
    assert (c.tile_size, c.longest_edge, c.image_seq_len, c.eos_token_ids[0]) == (384, 1536, 81, 49154)
    (d / "processor_config.json").unlink()  # derived from the geometry when absent
    assert ModelConfig.from_dir(d).image_seq_len == 81


@pytest.mark.parametrize("filename", ["config.json", "preprocessor_config.json"])
def test_missing_file_is_named(tmp_path, filename):
    d = _copy("SmolVLM2-256M-Video-Instruct", tmp_path)
    (d / filename).unlink()
    with pytest.raises(ConfigError, match=filename):
        ModelConfig.from_dir(d)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_malformed_file_is_named(tmp_path, content):
    d = _copy("SmolVLM2-256M-Video-Instruct", tmp_path)
    (d / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig.from_dir(d)


def test_unsupported_model_type(tmp_path):
    d = _copy("SmolVLM2-256M-Video-Instruct", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llava"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="llava"):
        ModelConfig.from_dir(d)
