"""The architecture of a SmolVLM / Idefics3 checkpoint, read from its `config.json` alone.

Fields a config leaves out take transformers' defaults (5.x: `LlamaConfig` for the text model,
`SmolVLMVisionConfig` / `Idefics3VisionConfig` for the vision tower), so that what we build is
what transformers would run: SmolVLM2 configs omit the vision tower's depth and MLP width, and
SmolVLM2-2.2B's omits the text model's head counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvlm_cli.config import CONFIG_FILE, SUPPORTED_MODEL_TYPES, read_json
from smolvlm_cli.errors import ConfigError

# transformers 5.x defaults (configuration_smolvlm.py / configuration_idefics3.py, LlamaConfig)
_VISION_DEFAULTS = {
    "hidden_size": 1152,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
_TEXT_DEFAULTS = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "rope_theta": 10000.0,
}
_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class Rope:
    """Rotary embedding settings (`rope_parameters`, or the older `rope_theta` + `rope_scaling`)."""

    theta: float
    type: str = "default"
    params: dict[str, Any] = field(default_factory=dict)  # factor, low_freq_factor, ...


@dataclass(frozen=True)
class TextArch:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    vocab_size: int
    rope: Rope


@dataclass(frozen=True)
class VisionArch:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    gelu_tanh: bool  # gelu_pytorch_tanh (FastGelu) or exact gelu (erf)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class Architecture:
    model_type: str
    text: TextArch
    vision: VisionArch
    scale_factor: int
    tie_word_embeddings: bool

    @property
    def tokens_per_tile(self) -> int:
        return (self.vision.patches_per_side // self.scale_factor) ** 2

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Architecture:
        path = Path(model_dir) / CONFIG_FILE
        raw = read_json(path)
        try:
            return cls.from_config(raw)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ConfigError(f"unexpected model configuration in {path}: {exc!r}") from exc

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Architecture:
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config.json: model_type {model_type!r} is not supported",
                hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            )
        t = {**_TEXT_DEFAULTS, **{k: v for k, v in cfg.get("text_config", {}).items() if v is not None}}
        v = {**_VISION_DEFAULTS, **{k: v for k, v in cfg.get("vision_config", {}).items() if v is not None}}
        if t["hidden_act"] not in ("silu", "swish"):
            raise ConfigError(f"config.json: text hidden_act {t['hidden_act']!r} is not supported (SiLU only)")
        if v["hidden_act"] not in ("gelu_pytorch_tanh", "gelu", "gelu_new"):
            raise ConfigError(f"config.json: vision hidden_act {v['hidden_act']!r} is not supported")
        if t.get("attention_bias") or t.get("mlp_bias"):
            raise ConfigError("config.json: text attention/MLP biases are not supported")
        heads = int(t["num_attention_heads"])
        hidden = int(t["hidden_size"])
        text = TextArch(
            hidden_size=hidden,
            intermediate_size=int(t["intermediate_size"]),
            num_layers=int(t["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(t.get("num_key_value_heads") or heads),
            head_dim=int(t.get("head_dim") or hidden // heads),
            rms_norm_eps=float(t["rms_norm_eps"]),
            max_positions=int(t["max_position_embeddings"]),
            vocab_size=int(cfg.get("vocab_size") or t.get("vocab_size") or 0),
            rope=_rope(t),
        )
        vision = VisionArch(
            hidden_size=int(v["hidden_size"]),
            intermediate_size=int(v["intermediate_size"]),
            num_layers=int(v["num_hidden_layers"]),
            num_heads=int(v["num_attention_heads"]),
            num_channels=int(v["num_channels"]),
            image_size=int(v["image_size"]),
            patch_size=int(v["patch_size"]),
            layer_norm_eps=float(v["layer_norm_eps"]),
            gelu_tanh=v["hidden_act"] != "gelu",
        )
        scale = int(cfg.get("scale_factor", 2))
        if vision.patches_per_side % scale:
            raise ConfigError(
                f"config.json: {vision.patches_per_side} patches per side do not pool by scale_factor {scale}"
            )
        return cls(
            model_type=model_type,
            text=text,
            vision=vision,
            scale_factor=scale,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )


def _rope(text: dict[str, Any]) -> Rope:
    params = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    theta = float(params.pop("rope_theta", None) or text["rope_theta"])
    if rope_type not in _ROPE_TYPES:
        raise ConfigError(
            f"config.json: rope type {rope_type!r} is not supported", hint=f"supported: {', '.join(_ROPE_TYPES)}"
        )
    return Rope(theta=theta, type=rope_type, params=params)
