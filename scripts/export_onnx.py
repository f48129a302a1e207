#!/usr/bin/env python
"""Export a SmolVLM / SmolVLM2 checkpoint to ONNX in the Hugging Face `onnx/` layout.

    scripts/export_onnx.py MODEL OUT_DIR [--dtype fp32,fp16,int8,q4] [--no-check]
                           [--decoder-style gqa|official] [--vision-style fused|plain]
                           [--all-logits | --last-logits]

MODEL is a local model directory (with model.safetensors) or a Hub id. OUT_DIR gets every
config/tokenizer/processor file plus onnx/vision_encoder*.onnx, onnx/embed_tokens*.onnx and
onnx/decoder_model_merged*.onnx for each dtype. The fp32 graphs are checked in ONNX Runtime
against transformers unless --no-check; quantized variants report their fidelity.
By default the decoder is built with ONNX Runtime's GroupQueryAttention (no position_ids,
shared KV buffers, only the last position's logits) and the vision tower with fused attention;
`--decoder-style official --vision-style plain` writes graphs of exactly the Hub's contract.
Needs the `export` extra (torch, transformers, onnx).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="local model directory or Hub id")
    parser.add_argument("out_dir", type=Path, help="output directory (Hub layout)")
    parser.add_argument("--dtype", default="fp32,int8",
                        help="comma-separated variants: fp32, fp16, int8, q4 (default fp32,int8: "
                             "the exact one and the runtime's default)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the ONNX Runtime vs transformers check")
    parser.add_argument("--decoder-style", choices=("gqa", "official"), default="gqa",
                        help="gqa: fused GroupQueryAttention decoder (fast, default); official: the Hub's contract")
    parser.add_argument("--vision-style", choices=("fused", "plain"), default="fused",
                        help="fused: MultiHeadAttention & co (fast, default); plain: standard operators")
    logits = parser.add_mutually_exclusive_group()
    logits.add_argument("--all-logits", dest="last_logits", action="store_false", default=None,
                        help="the decoder returns every position's logits (default for official)")
    logits.add_argument("--last-logits", dest="last_logits", action="store_true",
                        help="only the last position's logits (default for gqa)")
    args = parser.parse_args(argv)

    from smolvlm_cli.dtypes import EXPORT_DTYPES
    from smolvlm_cli.errors import SmolVLMError
    from smolvlm_cli.hub import is_local

    wanted = [d.strip().lower() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in wanted if d not in EXPORT_DTYPES]
    if bad or not wanted:
        return fail(f"unknown dtype {bad[0] if bad else args.dtype!r}" if bad else "no dtype given",
                    hint=f"choose from {', '.join(EXPORT_DTYPES)}")
    model_path = Path(args.model).expanduser()
    looks_local = args.model.startswith((".", "/", "~")) or model_path.exists() or args.model.count("/") != 1
    if looks_local and not is_local(args.model):
        return fail(f"model directory {args.model} not found" if not model_path.exists()
                    else f"{args.model} is not a directory")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        return fail(f"{args.out_dir} exists and is not a directory")

    try:
        from smolvlm_cli.export.onnx_export import export_onnx
    except ImportError as exc:
        return fail(f"cannot import the exporter: {exc}", hint="pip install 'smolvlm-cli[export]'")
    try:
        result = export_onnx(args.model, args.out_dir, dtypes=tuple(wanted), check=args.check, log=log,
                             decoder_style=args.decoder_style, vision_style=args.vision_style,
                             last_logits=args.last_logits)
    except SmolVLMError as exc:
        return fail(exc.message, exc.hint)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    out = Path(result["out_dir"])
    from smolvlm_cli.export.onnx_export import data_files

    graphs = [out / rel for rel in result["files"]]
    graphs += [extra for path in graphs for extra in data_files(path)]
    print_table(out, graphs, result["seconds"], result["timings"], what="export done")
    shown = {p.name for p in graphs}
    steps = {k: v for k, v in result["timings"].items() if k not in shown}
    print(", ".join(f"{step} {seconds:.1f} s" for step, seconds in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
