"""The vision graph: SigLIP tower + pixel-shuffle connector, as one plain-tensor module.

transformers' `get_image_features` does not export as written (an in-place `|=`, bucketize with
float indices, a `split(...tolist())` that bakes the batch in), so this wrapper recomputes the same
thing with export-friendly ops:

- the patch mask: a patch is valid when any pixel in it is (transformers' `unfold(...).sum() > 0`);
- position ids: transformers' NaViT bucketisation (fractional patch coordinates bucketised over
  the `num_patches_per_side` grid), written as a comparison count instead of `torch.bucketize`.
  For a full tile it is exactly `arange(num_patches)`; partially masked tiles get the same
  interpolated ids as transformers;
- an additive attention bias (0 for valid patches, -1e4 for padding: exp() of it is exactly 0 in
  float32, and it stays finite after a float16 conversion);
- the connector's pixel shuffle, from the patch grid's height and width (not a traced sqrt).

Padding tiles (all-false mask) are not dropped inside the graph: they give finite features and
the caller drops them. Geometry (patch size, grid, scale factor) comes from the config.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_VALUE = -1.0e4


class VisionEncoder(nn.Module):
    """pixel_values [B, N, 3, H, W] float, pixel_attention_mask [B, N, H, W] bool
    -> image_features [B*N, (H/p/s)*(W/p/s), text_hidden]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        inner = model.model
        vision = inner.vision_model
        self.patch_embedding = vision.embeddings.patch_embedding
        self.position_embedding = vision.embeddings.position_embedding
        self.encoder = vision.encoder
        self.post_layernorm = vision.post_layernorm
        self.projection = inner.connector.modality_projection
        self.scale = int(model.config.scale_factor)
        self.patch_size = int(model.config.vision_config.patch_size)
        per_side = int(vision.embeddings.num_patches_per_side)
        self.per_side = per_side
        # The very tensor transformers builds, so the float comparisons below agree bit for bit.
        self.register_buffer("boundaries", torch.arange(1 / per_side, 1.0, 1 / per_side), persistent=False)

    def _position_ids(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """transformers' bucketised NaViT position ids for a [T, nh, nw] bool patch mask."""
        rows = patch_mask[:, :, 0].sum(dim=1)  # valid patches along the first column
        cols = patch_mask[:, 0, :].sum(dim=1)
        step_h = 1.0 / rows.to(torch.float32)
        step_w = 1.0 / cols.to(torch.float32)
        h_idx = torch.arange(patch_mask.shape[1], dtype=torch.float32)
        w_idx = torch.arange(patch_mask.shape[2], dtype=torch.float32)
        frac_h = torch.clamp(h_idx[None, :] * step_h[:, None], max=1.0 - 1e-6)
        frac_w = torch.clamp(w_idx[None, :] * step_w[:, None], max=1.0 - 1e-6)
        # bucketize(v, boundaries, right=True) == number of boundaries <= v
        bucket_h = (frac_h[:, :, None] >= self.boundaries).to(torch.int64).sum(dim=-1)
        bucket_w = (frac_w[:, :, None] >= self.boundaries).to(torch.int64).sum(dim=-1)
        pos = bucket_h[:, :, None] * self.per_side + bucket_w[:, None, :]
        pos = pos.reshape(patch_mask.shape[0], -1)
        return torch.where(patch_mask.reshape(patch_mask.shape[0], -1), pos, torch.zeros_like(pos))

    def embed(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor):
        """Patch + position embeddings [T, nh*nw, D] and the patch mask [T, nh, nw] (bool)."""
        channels, height, width = pixel_values.shape[2], pixel_values.shape[3], pixel_values.shape[4]
        p = self.patch_size
        pixels = pixel_values.reshape(-1, channels, height, width)
        nh, nw = height // p, width // p
        mask = pixel_attention_mask.reshape(-1, height, width)[:, : nh * p, : nw * p]
        mask = mask.reshape(-1, nh, p, nw, p).to(torch.int32).sum(dim=(2, 4)) > 0  # [T, nh, nw]

        embeds = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [T, nh*nw, D]
        return embeds + self.position_embedding(self._position_ids(mask)), mask

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        p, s = self.patch_size, self.scale
        nh, nw = pixel_values.shape[3] // p, pixel_values.shape[4] // p
        embeds, mask = self.embed(pixel_values, pixel_attention_mask)
        valid = mask.reshape(mask.shape[0], 1, 1, -1)
        bias = torch.where(valid, torch.zeros((), dtype=embeds.dtype), torch.full((), MASK_VALUE, dtype=embeds.dtype))
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=bias).last_hidden_state
        hidden = self.post_layernorm(hidden)

        # Pixel shuffle (transformers' SmolVLMConnector.pixel_shuffle) on the nh x nw grid.
        tiles, dim = hidden.shape[0], hidden.shape[2]
        x = hidden.reshape(tiles, nh, nw // s, dim * s)
        x = x.permute(0, 2, 1, 3).reshape(tiles, nw // s, nh // s, dim * s * s)
        x = x.permute(0, 2, 1, 3).reshape(tiles, (nh // s) * (nw // s), dim * s * s)
        return self.projection(x)


def sample_inputs(model) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, dict[int, str]]]:
    """Tracing inputs of the vision graphs, (pixel_values, pixel_attention_mask): two tiles, the
    second half padding (so the masked path is traced too); and their dynamic axes."""
    size = int(model.config.vision_config.image_size)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 2, 3, size, size, generator=gen)
    mask = torch.ones(1, 2, size, size, dtype=torch.bool)
    mask[0, 1, size // 2 :, :] = False
    axes = {
        "pixel_values": {0: "batch_size", 1: "num_images", 3: "height", 4: "width"},
        "pixel_attention_mask": {0: "batch_size", 1: "num_images", 2: "height", 3: "width"},
    }
    return (pixels, mask), axes
