"""Random-weight checkpoints of the real SmolVLM architectures, for tests and benchmarks.

Weights cannot be downloaded on the build machines, so tests build a complete Hugging Face model
directory from a real model's configuration/tokenizer/processor files: `model.safetensors` holds
seeded random weights of the exact architecture (transformers' own initialisation), and every
non-weight file is copied. `tiny=True` shrinks the transformer stacks (~6.6 M parameters) while
keeping the tile geometry (image size, patch, scale factor), the vocabulary and the special token
ids, so the processor, the prompt expansion and the ONNX export run unchanged.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from smolvlm_cli.errors import ConfigError

# Files that hold weights (or derived graphs) and are never copied as "configuration".
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".onnx_data",
    ".data",
    ".gguf",
    ".msgpack",
    ".h5",
    ".ot",
)
WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

TINY_TEXT = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TINY_VISION = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}

# SmolVLM2-2.2B-Instruct, from its published architecture: the weights and config.json cannot be
# fetched here, and no byte-exact copy of its config was found. What a public excerpt of its
# config.json shows: scale_factor 3, text hidden 2048 / intermediate 8192 / 24 layers / head_dim
# 64 / max_position_embeddings 8192, no head counts (transformers' default, 32, applies), and
# processor_config image_seq_len 81. The rest is the published SigLIP-so400m/14 at 384 px and
# SmolLM2-1.7B (rope_theta 130000, untied head in the VLM). The tokenizer and chat template are
# the SmolVLM2 ones.
SMOLVLM2_2_2B = {
    "config": {
        "scale_factor": 3,
        "tie_word_embeddings": False,
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "rope_theta": 130000,
            "num_attention_heads": None,
            "num_key_value_heads": None,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 384,
            "max_image_size": {"longest_edge": 384},
            "size": {"longest_edge": 1536},
        },
    },
    "preprocessor_config": {"max_image_size": {"longest_edge": 384}, "size": {"longest_edge": 1536}},
    "processor_config": {"image_seq_len": 81},
}


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("max_image_size", "size"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_2_2b_config(smolvlm2_dir: str | Path, out_dir: str | Path) -> Path:
    """A SmolVLM2-2.2B-like model folder (no weights) from a SmolVLM2 fixture folder's files."""
    src, out = Path(smolvlm2_dir), Path(out_dir)
    copy_config_files(src, out)
    for name, patch in SMOLVLM2_2_2B.items():
        path = out / f"{name}.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        path.write_text(json.dumps(_merge(data, patch), indent=2) + "\n", encoding="utf-8")
    return out


def is_weight_file(path: Path) -> bool:
    return path.name in WEIGHT_NAMES or path.name.endswith(WEIGHT_SUFFIXES)


def config_files(model_dir: Path) -> list[Path]:
    """Every top-level non-weight file of a model directory (config, tokenizer, processor, ...)."""
    return sorted(
        p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith(".") and not is_weight_file(p)
    )


def copy_config_files(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in config_files(src):
        target = dst / path.name
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        copied.append(target)
    return copied


def _random_config(config: dict[str, Any], tiny: bool) -> dict[str, Any]:
    """The JSON config, patched: float32 everywhere, and the tiny sizes if asked."""
    config = json.loads(json.dumps(config))  # deep copy
    text = config.setdefault("text_config", {})
    vision = config.setdefault("vision_config", {})
    if tiny:
        text.update(TINY_TEXT)
        vision.update(TINY_VISION)
    for section in (config, text, vision):
        section.pop("dtype", None)
        section["torch_dtype"] = "float32"
    return config


@contextlib.contextmanager
def quiet_transformers():
    """No tqdm bars ("Loading weights", "Writing model shards"), deprecation warnings or advice
    from transformers (its API churn is not the user's business), restored after."""
    import warnings

    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()


def make_random_checkpoint(config_dir: str | Path, out_dir: str | Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write a complete model directory with seeded random weights; returns `out_dir`.

    `config_dir` is a SmolVLM / SmolVLM2 directory in the Hub layout (weights not needed).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config_dir, out_dir = Path(config_dir), Path(out_dir)
    config_path = config_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"config.json not found in {config_dir}", hint="pass a SmolVLM model directory in the Hugging Face layout"
        )
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_path} is not valid JSON: {exc}") from exc
    if raw.get("model_type") not in ("smolvlm", "idefics3"):
        raise ConfigError(
            f"{config_path}: model_type {raw.get('model_type')!r} is not supported", hint="supported: smolvlm, idefics3"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    copy_config_files(config_dir, out_dir)
    (out_dir / "config.json").write_text(json.dumps(_random_config(raw, tiny), indent=2) + "\n", encoding="utf-8")
    # Build from the config as written, so that AutoConfig.from_pretrained(out_dir) round-trips.
    config = AutoConfig.from_pretrained(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    # save_pretrained writes the canonical key layout that from_pretrained reads back; its own
    # config/generation_config files are discarded in favour of the copies.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".save-") as tmp, quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        for stale in out_dir.iterdir():
            if stale.is_file() and is_weight_file(stale):
                stale.unlink()
        for path in Path(tmp).iterdir():
            if is_weight_file(path):
                shutil.move(str(path), out_dir / path.name)
                (out_dir / path.name).chmod(0o644)  # the temporary directory's files are 0600
    return out_dir
