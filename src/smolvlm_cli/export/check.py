"""Check exported graphs in ONNX Runtime against transformers, and measure variant fidelity.

fp32 graphs must reproduce transformers within `TOLERANCE` (max absolute difference):
- vision_encoder vs `model.model.get_image_features` on 3 tiles: a full one, one with a partial
  pixel mask, and an all-padding tile (transformers drops it; the graph must keep it finite);
- embed_tokens vs the embedding table (exact);
- decoder_model_merged vs the transformers model with a DynamicCache: a prefill from empty caches,
  then 8 greedy decode steps feeding the presents back as pasts (decoders that return only the
  last position's logits are compared on those).
Variants (fp16, int8, q4) get the same inputs; their fidelity is the cosine similarity of their
outputs to the fp32 graph's (for the decoder: every returned position's logits, teacher-forced on
the fp32 run's tokens and fed the fp32 embeddings) and, for the decoder, the top-1 agreement.
This is a quick sanity check on a random prompt; `scripts/fidelity.py` measures variants on a
real caption (64 steps, top-1 / top-5 / cosine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from smolvlm_cli.errors import ExportError
from smolvlm_cli.torch_compat import cache_kwargs, output_cache

TOLERANCE = 1e-3
PROMPT_LEN, DECODE_STEPS = 8, 8
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _run(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with inputs cast to the session's own dtypes (fp16 graphs take float16 caches)."""
    types = {i.name: _NP.get(i.type) for i in sess.get_inputs()}
    cast = {k: (v.astype(types[k]) if types.get(k) is not None else v) for k, v in feeds.items()}
    return [np.asarray(o) for o in sess.run(None, cast)]


def vision_inputs(model, seed: int = 0):
    import torch

    size = int(model.config.vision_config.image_size)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 3, size, size, generator=gen).clamp(-1, 1)
    mask = torch.ones(1, 3, size, size, dtype=torch.bool)
    mask[0, 1, (2 * size) // 3 :, :] = False  # a partial tile: bottom rows and right columns padded
    mask[0, 1, :, size // 2 :] = False
    pixels[0, 1][:, ~mask[0, 1]] = 0.0
    mask[0, 2] = False  # a padding tile
    pixels[0, 2] = 0.0
    return pixels, mask


def vision_reference(model, pixels, mask) -> np.ndarray:
    """transformers' features for the non-padding tiles, as [tiles, tokens, hidden]."""
    import torch

    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixels, pixel_attention_mask=mask)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    real_tiles = int((pixels != 0).flatten(2).any(-1).sum())  # transformers drops all-zero tiles
    return feats.reshape(real_tiles, -1, feats.shape[-1]).numpy()


def decoder_reference(model, ids: np.ndarray, steps: int = DECODE_STEPS):
    """Greedy prefill + `steps` decode steps in transformers: (token ids fed, list of logits)."""
    import torch

    embed = model.get_input_embeddings()
    tokens, logits_list, cache = [ids], [], None
    step_ids = torch.from_numpy(ids)
    length = 0
    with torch.no_grad():
        for _ in range(steps + 1):
            seq = step_ids.shape[1]
            out = model(
                inputs_embeds=embed(step_ids),
                attention_mask=torch.ones(1, length + seq, dtype=torch.int64),
                position_ids=torch.arange(length, length + seq)[None],
                use_cache=True,
                **cache_kwargs(model, cache),
            )
            cache, length = output_cache(out), length + seq
            logits_list.append(out.logits.numpy())
            step_ids = out.logits[:, -1:].argmax(-1)
            tokens.append(step_ids.numpy())
    return tokens[:-1], logits_list


def run_decoder(
    dec, embed, tokens: list[np.ndarray], num_layers: int, kv_heads: int, head_dim: int
) -> list[np.ndarray]:
    """Teacher-forced ONNX run over the given token chunks; returns the logits of each call
    ([1, seq, vocab], or [1, 1, vocab] from graphs that return only the last position's)."""
    from smolvlm_cli.builder.text import past_names

    names = past_names(num_layers)
    pasts = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in names}
    outputs = [o.name for o in dec.get_outputs()]
    positions = "position_ids" in {i.name for i in dec.get_inputs()}  # GQA graphs use the mask
    length, result = 0, []
    for chunk in tokens:
        (embeds,) = _run(embed, {"input_ids": chunk.astype(np.int64)})
        seq = chunk.shape[1]
        feeds = {
            "inputs_embeds": embeds.astype(np.float32),
            "attention_mask": np.ones((1, length + seq), np.int64),
            **pasts,
        }
        if positions:
            feeds["position_ids"] = np.arange(length, length + seq, dtype=np.int64)[None]
        out = dict(zip(outputs, _run(dec, feeds)))
        pasts = {n: out["present." + n[len("past_key_values.") :]] for n in names}
        length += seq
        result.append(out["logits"].astype(np.float32))
    return result


def check_export(
    model,
    fp32: dict[str, Path],
    variants: dict[str, dict[str, Path]],
    log: Callable[[str], None] = print,
    tolerance: float = TOLERANCE,
):
    """(diffs, fidelity): max abs difference per fp32 graph, cosine/top-1 per variant file."""
    from smolvlm_cli.export.checkpoint import quiet_transformers

    with quiet_transformers():
        return _check_export(model, fp32, variants, log, tolerance)


def _check_export(model, fp32, variants, log, tolerance):
    import torch

    text = model.config.text_config
    layers, kv_heads = int(text.num_hidden_layers), int(text.num_key_value_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    diffs: dict[str, float] = {}
    fidelity: dict[str, dict[str, float]] = {}
    failures = []

    def record(graph: str, diff: float, scale: float) -> None:
        diffs[graph] = diff
        ok = diff <= tolerance
        log(
            f"check {graph}.onnx: max |onnxruntime - transformers| = {diff:.2e} "
            f"(values up to {scale:.3g}) {'ok' if ok else 'FAILED'}"
        )
        if not ok:
            failures.append(f"{graph} differs from transformers by {diff:.2e} (> {tolerance:g})")

    # vision
    pixels, mask = vision_inputs(model)
    ref = vision_reference(model, pixels, mask)
    vis = {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy()}
    (feats,) = _run(session(fp32["vision_encoder"]), vis)
    valid = feats[: ref.shape[0]]
    if feats.shape[0] != 3 or not np.isfinite(feats).all():
        failures.append(f"vision_encoder returned {feats.shape[0]} tiles or non-finite values")
    record("vision_encoder", float(np.abs(valid - ref).max()), float(np.abs(ref).max()))

    # embed_tokens
    gen = np.random.default_rng(0)
    vocab = int(text.vocab_size)
    ids = gen.integers(0, vocab, size=(2, 16), dtype=np.int64)
    with torch.no_grad():
        emb_ref = model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    emb_sess = session(fp32["embed_tokens"])
    (emb,) = _run(emb_sess, {"input_ids": ids})
    record("embed_tokens", float(np.abs(emb - emb_ref).max()), float(np.abs(emb_ref).max()))

    # decoder: prefill + greedy decode steps
    prompt = gen.integers(3, vocab, size=(1, PROMPT_LEN), dtype=np.int64)
    tokens, logits_ref = decoder_reference(model, prompt)
    dec_sess = session(fp32["decoder_model_merged"])
    logits = run_decoder(dec_sess, emb_sess, tokens, layers, kv_heads, head_dim)
    logits_ref = [ref_[:, -got.shape[1] :] for got, ref_ in zip(logits, logits_ref)]  # last-only graphs
    record(
        "decoder_model_merged",
        max(float(np.abs(a - b).max()) for a, b in zip(logits, logits_ref)),
        max(float(np.abs(b).max()) for b in logits_ref),
    )
    if failures:
        raise ExportError("; ".join(failures), hint="the exported graphs do not reproduce transformers: report this")

    for dtype, graphs in variants.items():
        sessions = {g: session(p) for g, p in graphs.items()}
        (vf,) = _run(sessions["vision_encoder"], vis)
        (ef,) = _run(sessions["embed_tokens"], {"input_ids": ids})
        # the fp32 embeddings feed the variant decoder: each figure is one graph's own error
        lg = run_decoder(sessions["decoder_model_merged"], emb_sess, tokens, layers, kv_heads, head_dim)
        full, part = np.concatenate([x[0] for x in logits]), np.concatenate([x[0] for x in lg])
        real = len(ref)
        outputs = {
            "vision_encoder": (vf[:real], feats[:real]),
            "embed_tokens": (ef, emb),
            "decoder_model_merged": (part, full),
        }
        for graph, (got, want) in outputs.items():
            name = graphs[graph].stem
            if not np.isfinite(got).all():
                raise ExportError(f"{name}.onnx produced non-finite values")
            fidelity[name] = {"cosine": cosine(got, want)}
            extra = ""
            if graph == "decoder_model_merged":
                fidelity[name]["top1"] = float((got.argmax(-1) == want.argmax(-1)).mean())
                extra = (
                    f", same top-1 token as fp32 at {fidelity[name]['top1']:.0%} of {len(got)} "
                    "positions (random or tiny weights have near-ties: low figures are normal "
                    "there; README's dtype table has real-caption figures)"
                )
            log(f"fidelity {name}.onnx: cosine to fp32 {fidelity[name]['cosine']:.5f}{extra}")
    return diffs, fidelity
