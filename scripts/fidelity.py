#!/usr/bin/env python
"""How far each quantized ONNX variant is from fp32, on the same image and prompt.

    scripts/fidelity.py MODEL_DIR [--image IMG] [--variants int8,q4 --variants vision=int8,decoder=q4]
                        [--steps 64] [--no-split] [--threads N] [--json]

fp32 captions the image for --steps tokens (ignoring stop tokens; sampled at temperature 1 by
default, because a random-weight model's greedy reply is one token repeated). Each variant then
runs on the same inputs, teacher-forced on fp32's tokens, and is scored per step against fp32's
logits:
- top-1: how often its greedy (argmax) token equals fp32's;
- cosine: the mean cosine similarity of the logits rows;
- top-5: how often fp32's token is among the variant's 5 best.
Two rows per variant: `decoder` feeds the variant's decoder (and embeddings) the fp32 vision
features, isolating the text side; `end-to-end` uses the variant's own vision features. The
vision column is the mean (min) cosine of the variant's image features to fp32's, per tile.
Without --image a photo-like 1024x768 JPEG is generated (13 tiles). No torch needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402

PROMPT = "Describe this image."


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def reference_run(backend, ids: np.ndarray, features, steps: int, temperature: float, seed: int = 0):
    """fp32's run: the tokens fed at each step and the logits before each of them.

    Greedy (`temperature` 0) is what users run; but a random-weight model's greedy reply is
    usually one token repeated, which makes every variant agree trivially. Sampling the fed
    tokens (temperature 1) gives varied contexts; the scores still compare greedy choices.
    """
    rng = np.random.default_rng(seed)
    state = backend.new_state()
    logits = backend.forward(state, ids, features)
    tokens, rows = [], []
    for _ in range(steps):
        rows.append(logits)
        if temperature > 0:
            p = np.exp((logits - logits.max()) / temperature)
            tokens.append(int(rng.choice(len(p), p=p / p.sum())))
        else:
            tokens.append(int(np.argmax(logits)))
        logits = backend.forward(state, np.array([tokens[-1]]))
    return tokens, np.stack(rows)


def forced(backend, ids: np.ndarray, features, tokens: list[int]) -> np.ndarray:
    """The variant's logits at every step, fed fp32's tokens."""
    state = backend.new_state()
    rows = [backend.forward(state, ids, features)]
    for t in tokens[:-1]:
        rows.append(backend.forward(state, np.array([t])))
    return np.stack(rows)


def score(rows: np.ndarray, ref_rows: np.ndarray) -> dict:
    """Per step: the variant's greedy token vs fp32's, logits cosine, fp32's token in the top 5."""
    ref = ref_rows.argmax(-1)
    top5 = np.argsort(rows, axis=-1)[:, -5:]
    return {
        "top1": float((rows.argmax(-1) == ref).mean()),
        "cosine": float(cosine_rows(rows, ref_rows).mean()),
        "top5": float((top5 == ref[:, None]).any(-1).mean()),
    }


def _variants(values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [value] if "=" in value else [v.strip() for v in value.split(",") if v.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="model directory with onnx/ graphs")
    parser.add_argument("--image", help="image file (default: a generated 1024x768 photo-like JPEG)")
    parser.add_argument(
        "--variants",
        action="append",
        help="dtype specs to compare with fp32 (default: int8,q4 and vision=int8,embed=int8,decoder=q4)",
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="how fp32 picks the fed tokens: 1 samples (varied contexts, default), 0 is greedy",
    )
    parser.add_argument("--no-split", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from smolvlm_cli import SmolVLM
    from smolvlm_cli.backends.onnx import OnnxBackend
    from smolvlm_cli.errors import SmolVLMError

    variants = _variants(args.variants or ["int8,q4", "vision=int8,embed=int8,decoder=q4"])
    with tempfile.TemporaryDirectory(prefix="smolvlm-fidelity-") as tmp:
        image = args.image
        if image is None:
            from bench_preprocess import photo_jpeg

            image = str(Path(tmp) / "photo_1024x768.jpg")
            photo_jpeg(Path(image), 1024, 768)
        try:
            vlm = SmolVLM.from_pretrained(args.model, backend="onnx", dtype="fp32", threads=args.threads)
            prepared = vlm.prepare([image], args.prompt, tiling="low" if args.no_split else None)
            ref_features = vlm.backend.encode_images(prepared.pixel_values, prepared.pixel_attention_mask)
            flat_ref = ref_features.reshape(-1, ref_features.shape[-1])
            log(f"fp32: {len(prepared.input_ids)} prompt tokens, {prepared.num_tiles} tiles, {args.steps} steps")
            ref_tokens, ref_rows = reference_run(
                vlm.backend, prepared.input_ids, flat_ref, args.steps, args.temperature
            )
            log(
                f"fp32 fed {len(set(ref_tokens))} distinct tokens; greedy choices: "
                f"{len(set(ref_rows.argmax(-1).tolist()))} distinct"
            )
            results = []
            for spec in variants:
                log(f"{spec} ...")
                backend = OnnxBackend(args.model, vlm.config, dtype=spec, threads=args.threads)
                features = backend.encode_images(prepared.pixel_values, prepared.pixel_attention_mask)
                tile_cos = cosine_rows(features.reshape(len(features), -1), ref_features.reshape(len(features), -1))
                vision = {"vision_cosine": float(tile_cos.mean()), "vision_cosine_min": float(tile_cos.min())}
                decoder_only = forced(backend, prepared.input_ids, flat_ref, ref_tokens)
                end_to_end = forced(backend, prepared.input_ids, features.reshape(flat_ref.shape), ref_tokens)
                for mode, rows in (("decoder", decoder_only), ("end-to-end", end_to_end)):
                    results.append(
                        {"variant": backend.dtype, "mode": mode, "steps": args.steps, **vision, **score(rows, ref_rows)}
                    )
                del backend
        except (SmolVLMError, ValueError, OSError) as exc:
            return fail(str(exc))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"fidelity to fp32 over {args.steps} steps (teacher-forced on fp32's tokens, "
        f"temperature {args.temperature:g}), {prepared.num_tiles} tiles"
    )
    print(f"{'variant':<36}{'mode':<12}{'top-1':>7}{'top-5':>7}{'logits cos':>11}{'vision cos (min)':>18}")
    for r in results:
        print(
            f"{r['variant']:<36}{r['mode']:<12}{r['top1']:>7.0%}{r['top5']:>7.0%}{r['cosine']:>11.4f}"
            f"{r['vision_cosine']:>11.4f} ({r['vision_cosine_min']:.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
