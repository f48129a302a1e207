"""torch backend: transformers' own SmolVLM / Idefics3 model classes.

The fallback for models without ONNX files and the reference the ONNX path is held to. Imported
only when chosen, so the ONNX path never loads torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smolvlm_cli.config import ModelConfig
from smolvlm_cli.errors import BackendUnavailableError, ConfigError, first_line
from smolvlm_cli.extras import install_command
from smolvlm_cli.torch_compat import cache_kwargs, output_cache

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


class TorchState:
    def __init__(self, cache):
        self.cache = cache

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        if length < self.length:  # a negative crop removes that many positions (transformers 4 and 5)
            self.cache.crop(length - self.length)


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        config: ModelConfig,
        dtype: str | None = None,
        threads: int | None = None,
        device: str | None = None,
    ):
        if not torch_available():
            raise BackendUnavailableError(
                "the torch backend needs torch and transformers", hint=install_command("torch")
            )
        import torch
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr is for our status, not transformers' bars

        dtype = (dtype or "fp32").lower()
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"the torch backend runs {', '.join(TORCH_DTYPES)}, not {dtype!r}")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.config = config
        self.dtype = dtype
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                str(model_dir), dtype=getattr(torch, TORCH_DTYPES[dtype])
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the torch model from {model_dir}: {first_line(exc)}",
                hint="the directory needs config.json and *.safetensors weights",
            ) from exc
        self.torch_model = model.to(self.device).eval()
        self._float = next(self.torch_model.parameters()).dtype

    def encode_images(self, pixel_values: np.ndarray, pixel_attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            pv = torch.from_numpy(np.ascontiguousarray(pixel_values))[None].to(self.device, self._float)
            mask = torch.from_numpy(np.ascontiguousarray(pixel_attention_mask))[None].to(self.device)
            out = self.torch_model.model.get_image_features(pv, mask)
            features = out.pooler_output if hasattr(out, "pooler_output") else out
            if isinstance(features, (list, tuple)):
                features = torch.cat(list(features))
            per_tile = self.config.image_seq_len
            return features.float().cpu().numpy().reshape(-1, per_tile, features.shape[-1])

    def new_state(self) -> TorchState:
        from transformers import DynamicCache

        return TorchState(DynamicCache(config=self.torch_model.config.get_text_config()))

    def forward(self, state: TorchState, input_ids: np.ndarray, image_features: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64).reshape(1, -1)).to(self.device)
        with torch.inference_mode():
            embeds = self.torch_model.get_input_embeddings()(ids)
            if image_features is not None and len(image_features):
                positions = (ids[0] == self.config.image_token_id).nonzero().flatten()
                if len(positions) != len(image_features):
                    raise ValueError(
                        f"{len(positions)} image tokens in the prompt but {len(image_features)} image feature rows"
                    )
                embeds[0, positions] = torch.from_numpy(np.asarray(image_features)).to(embeds)
            past = state.length
            mask = torch.ones((1, past + ids.shape[1]), dtype=torch.long, device=self.device)
            out = self.torch_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs(self.torch_model, state.cache),
            )
            state.cache = output_cache(out)
        return out.logits[0, -1].float().cpu().numpy()

    def new_rows(self, rows: int) -> None:
        """None: the reference backend answers one reply at a time."""
        return None
