"""Every number the pipeline needs, read once from a model directory's JSON files.

One source of truth: the image processor, the prompt builder and the backends read their
geometry from `ModelConfig`, never from constants, so the 2.2B models (384-px tiles, 81 tokens
per tile) work like the 256M/500M ones (512-px tiles, 64 tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolvlm_cli.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("smolvlm", "idefics3")

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"

# transformers' defaults for fields that SmolVLM2 configs omit (SiglipVisionConfig).
_VISION_DEFAULTS = {
    "num_hidden_layers": 12,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "hidden_size": 768,
    "image_size": 512,
    "patch_size": 16,
}
_LLAMA_DEFAULT_MAX_POSITIONS = 2048
_LLAMA_DEFAULT_HEADS = 32  # SmolVLM2-2.2B's config.json omits its head counts


def read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    """Load a JSON object, with errors that name the file."""
    if not path.is_file():
        if required:
            raise ConfigError(
                f"{path.name} not found in {path.parent}",
                hint="is this a SmolVLM model directory in the Hugging Face layout?",
            )
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    # prompt
    image_token_id: int
    image_seq_len: int  # image tokens per tile
    vocab_size: int
    bos_token_id: int | None
    pad_token_id: int | None
    eos_token_ids: tuple[int, ...]  # generation stops on any of these
    # image processing
    tile_size: int  # side of one square tile (max_image_size.longest_edge)
    longest_edge: int  # the image is resized so that its longest edge is this (size.longest_edge)
    do_image_splitting: bool
    do_convert_rgb: bool
    do_resize: bool
    do_rescale: bool
    do_normalize: bool
    do_pad: bool
    resample: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # video sampling (preprocessor_config.json's video_sampling; None: not a video model)
    video_fps: float | None
    video_max_frames: int | None
    # vision tower
    vision_image_size: int
    patch_size: int
    scale_factor: int
    vision_hidden_size: int
    vision_num_layers: int
    # text model
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        model_dir = Path(model_dir)
        cfg = read_json(model_dir / CONFIG_FILE)
        gen = read_json(model_dir / GENERATION_CONFIG_FILE, required=False)
        pre = read_json(model_dir / PREPROCESSOR_CONFIG_FILE)
        proc = read_json(model_dir / PROCESSOR_CONFIG_FILE, required=False)
        try:
            config = cls._parse(cfg, gen, pre, proc)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(
                f"unexpected model configuration in {model_dir}: {exc!r}",
                hint="expected a SmolVLM / SmolVLM2 (idefics3 or smolvlm) model",
            ) from exc
        config._check(model_dir)
        return config

    def _check(self, model_dir: Path) -> None:
        """The files must agree with each other: a tile's patches, pooled by the scale factor,
        are the image tokens the prompt gets per tile (else the prompt and the vision features
        cannot be matched, deep inside generation)."""
        for name in ("tile_size", "patch_size", "scale_factor", "image_seq_len", "longest_edge"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be positive in {model_dir}, got {getattr(self, name)}",
                    hint="the model's configuration files are damaged",
                )
        per_tile = (self.tile_size // self.patch_size) ** 2 // self.scale_factor**2
        if per_tile != self.image_seq_len:
            raise ConfigError(
                f"inconsistent model configuration in {model_dir}: a {self.tile_size}-px tile "
                f"({PREPROCESSOR_CONFIG_FILE} max_image_size) of {self.patch_size}-px patches "
                f"pooled by scale_factor {self.scale_factor} ({CONFIG_FILE}) gives {per_tile} "
                f"image tokens, but image_seq_len is {self.image_seq_len}",
                hint="the configuration files come from different models: download the model again",
            )

    @classmethod
    def _parse(cls, cfg: dict, gen: dict, pre: dict, proc: dict) -> ModelConfig:
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config.json: model_type {model_type!r} is not supported",
                hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            )
        text = cfg["text_config"]
        vision = {**_VISION_DEFAULTS, **cfg.get("vision_config", {})}
        scale = int(cfg.get("scale_factor", 1))
        patches = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        image_seq_len = int(proc.get("image_seq_len", patches // (scale * scale)))
        heads = int(text.get("num_attention_heads") or _LLAMA_DEFAULT_HEADS)
        hidden = int(text["hidden_size"])
        # generation_config.json is authoritative; text_config's eos (<|im_end|>) is an extra stop.
        eos = _ids(gen.get("eos_token_id")) or _ids(cfg.get("eos_token_id"))
        eos += tuple(i for i in _ids(text.get("eos_token_id")) if i not in eos)
        if not eos:
            raise ConfigError("no eos_token_id in generation_config.json or config.json")
        mean, std = pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3)
        video = pre.get("video_sampling") or {}
        return cls(
            model_type=model_type,
            image_token_id=int(cfg.get("image_token_id", text.get("image_token_id"))),
            image_seq_len=image_seq_len,
            vocab_size=int(cfg.get("vocab_size", text["vocab_size"])),
            bos_token_id=gen.get("bos_token_id", text.get("bos_token_id")),
            pad_token_id=gen.get("pad_token_id", text.get("pad_token_id")),
            eos_token_ids=eos,
            tile_size=int(pre.get("max_image_size", {}).get("longest_edge", vision["image_size"])),
            longest_edge=int(pre.get("size", {}).get("longest_edge", 4 * int(vision["image_size"]))),
            do_image_splitting=bool(pre.get("do_image_splitting", True)),
            do_convert_rgb=bool(pre.get("do_convert_rgb", True)),
            do_resize=bool(pre.get("do_resize", True)),
            do_rescale=bool(pre.get("do_rescale", True)),
            do_normalize=bool(pre.get("do_normalize", True)),
            do_pad=bool(pre.get("do_pad", True)),
            resample=int(pre.get("resample", 1)),
            rescale_factor=float(pre.get("rescale_factor", 1 / 255)),
            image_mean=tuple(float(v) for v in mean),
            image_std=tuple(float(v) for v in std),
            video_fps=float(video["fps"]) if "fps" in video else None,
            video_max_frames=int(video["max_frames"]) if "max_frames" in video else None,
            vision_image_size=int(vision["image_size"]),
            patch_size=int(vision["patch_size"]),
            scale_factor=scale,
            vision_hidden_size=int(vision["hidden_size"]),
            vision_num_layers=int(vision["num_hidden_layers"]),
            hidden_size=hidden,
            num_hidden_layers=int(text["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            max_position_embeddings=int(text.get("max_position_embeddings", _LLAMA_DEFAULT_MAX_POSITIONS)),
        )
