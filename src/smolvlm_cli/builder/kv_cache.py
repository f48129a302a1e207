"""The int8 KV cache of the int8 decoder: static per-channel scales calibrated at build time.

ONNX Runtime's CPU GroupQueryAttention takes an int8 `past_key`/`past_value` with static scales
(`k_quant_type`/`v_quant_type` PER_CHANNEL, `k_scale`/`v_scale` [1, kv_heads, 1, head_dim]): it
stores round(x / scale), saturated, and reads the cache back as q * scale, a quarter of the
bytes a decode step reads from a float cache.

The scales come from the checkpoint through the decoder itself: the quantized decoder (float
cache still) prefills a calibration input — a chat prompt, a synthetic photo's features from the
vision graph built alongside, and an assistant reply — and the per-channel absmax of its
presents over all positions, times `MARGIN`, is the int8 range. Rotary embedding turns each
key channel i with channel i + head_dim/2 by a position-dependent angle, so a key's pair can land
on either channel at an unseen position: both channels of a pair get the pair's largest norm,
sqrt(k_i^2 + k_j^2), which bounds the rotated values at every position (the norm does not
depend on the angle).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MARGIN = 1.1  # headroom over the calibrated absmax, for inputs unlike the calibration's
_PROMPT = "Describe this image."
_REPLY = (
    "The image shows a colourful abstract scene: soft blends of red, green and blue, crossed by "
    "rings and ellipses of many sizes. In the upper left a bright yellow shape stands out, and a "
    "few thin dark outlines overlap near the centre. The texture is slightly grainy, like a photo "
    "taken in low light. There are no people, animals or text in the picture."
)
# GroupQueryAttention's inputs: k_scale and v_scale are the 13th and 14th
_K_SCALE_INPUT = 12


def synthetic_photo(width: int = 1024, height: int = 768, seed: int = 0):
    """Smooth colour fields, rings and sensor noise: a PIL image that tiles and encodes like a photo."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 96 + 3, width // 96 + 3, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, x1 = sorted(rng.integers(0, width + 1, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height + 1, 2).tolist())
        draw.ellipse((x0, y0, x1, y1), outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=8)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def calibration_embeds(model_dir: Path, vision_graph: Path, embed_table: Callable[[np.ndarray], np.ndarray]):
    """inputs_embeds [1, seq, hidden] of a captioning chat (prompt, photo, reply): the token
    embeddings with the photo's features (from `vision_graph`) at its image tokens."""
    from smolvlm_cli.processor import Processor

    processor = Processor.from_pretrained(model_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": _REPLY}]},
    ]
    prepared = processor.prepare([synthetic_photo()], messages=messages)
    vision = _session(vision_graph)
    types = {i.name: i.type for i in vision.get_inputs()}
    features = []
    for tile, mask in zip(prepared.pixel_values, prepared.pixel_attention_mask):
        feeds = {
            "pixel_values": tile[None, None].astype(np.float16 if "float16" in types["pixel_values"] else np.float32)
        }
        if "pixel_attention_mask" in types:
            feeds["pixel_attention_mask"] = mask[None, None].astype(np.bool_)
        (out,) = vision.run(None, feeds)
        features.append(out.reshape(-1, out.shape[-1]).astype(np.float32))
    del vision
    ids = np.asarray(prepared.input_ids, np.int64)
    embeds = embed_table(ids).astype(np.float32)
    embeds[np.flatnonzero(ids == processor.config.image_token_id)] = np.concatenate(features)
    return embeds[None]


def calibrate(decoder: Path, embeds: np.ndarray, num_layers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (k_scale, v_scale) [1, kv_heads, 1, head_dim] covering `embeds`' cache with MARGIN."""
    session = _session(decoder)
    pasts = {i.name: i for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    _, kv_heads, _, head_dim = pasts["past_key_values.0.key"].shape
    empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones(embeds.shape[:2], np.int64)}
    feeds.update({name: empty for name in pasts})
    names = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    presents = session.run(names, feeds)
    scales = []
    for i in range(num_layers):
        key, value = presents[2 * i][0], presents[2 * i + 1][0]  # [kv_heads, seq, head_dim]
        half = head_dim // 2
        pair = np.sqrt(key[..., :half] ** 2 + key[..., half:] ** 2).max(axis=1)  # [kv_heads, half]
        k_range = np.concatenate([pair, pair], axis=-1)
        v_range = np.abs(value).max(axis=1)
        scales.append(tuple(_scale(r).reshape(1, kv_heads, 1, head_dim) for r in (k_range, v_range)))
    return scales


def _scale(absmax: np.ndarray) -> np.ndarray:
    # an all-zero channel (e.g. a zeroed head) still needs a positive scale
    return np.maximum(absmax * MARGIN / 127.0, 1e-8).astype(np.float32)


def use_int8_cache(path: Path, scales: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Rewrite decoder graph `path` (its external data untouched) for an int8 KV cache."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    layers = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if len(layers) != len(scales):
        raise ValueError(f"{path.name}: {len(layers)} attention nodes for {len(scales)} layers of scales")
    for i, (node, (k_scale, v_scale)) in enumerate(zip(layers, scales)):
        k_name, v_name = f"layers.{i}.attn.k_scale", f"layers.{i}.attn.v_scale"
        graph.initializer.extend([numpy_helper.from_array(k_scale, k_name), numpy_helper.from_array(v_scale, v_name)])
        inputs = list(node.input) + [""] * max(0, _K_SCALE_INPUT - len(node.input))
        inputs[_K_SCALE_INPUT : _K_SCALE_INPUT + 2] = [k_name, v_name]
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    onnx.save(model, str(path))
