"""The text graphs: token embeddings, and the Llama decoder + lm_head with a flat KV cache.

Every input and output is a plain tensor: the decoder wrapper builds a transformers `DynamicCache`
from the `past_key_values.{i}.key|value` tensors layer by layer (building it from legacy tuples
concatenates onto an empty tensor and breaks the trace) and returns the grown cache as
`present.{i}.key|value`. The first call passes empty (past length 0) caches.
"""

from __future__ import annotations

import torch
from torch import nn

from smolvlm_cli.torch_compat import cache_kwargs, output_cache


class EmbedTokens(nn.Module):
    """input_ids [B, S] int64 -> inputs_embeds [B, S, hidden]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_tokens = model.model.text_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def make_cache(text_config, pasts: list[torch.Tensor] | tuple[torch.Tensor, ...]):
    """A DynamicCache holding the given flat [key0, value0, key1, value1, ...] tensors."""
    from transformers import DynamicCache

    cache = DynamicCache(config=text_config)
    if len(cache.layers) * 2 != len(pasts):
        raise ValueError(f"expected {2 * len(cache.layers)} past tensors, got {len(pasts)}")
    for i, layer in enumerate(cache.layers):
        key, value = pasts[2 * i], pasts[2 * i + 1]
        layer.lazy_initialization(key, value)
        layer.keys, layer.values = key, value
    return cache


def flat_cache(cache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class Decoder(nn.Module):
    """(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.text_model = model.model.text_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ):
        cache = make_cache(self.text_config, past)
        out = self.text_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **cache_kwargs(self.text_model, cache),
        )
        logits = self.lm_head(out.last_hidden_state)
        return (logits, *flat_cache(output_cache(out)))
