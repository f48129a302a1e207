#!/usr/bin/env python
"""Build our fast ONNX graphs from a SmolVLM / SmolVLM2 checkpoint, in the Hub's `onnx/` layout.

    scripts/export_onnx.py MODEL OUT_DIR [--dtype fp32,fp16,int8,q4] [--check] [--quiet]

The same as `smolvlm export` (see `smolvlm export --help`), runnable from a checkout. MODEL is a
local checkpoint directory (config, tokenizer and safetensors) or a Hub id. OUT_DIR gets every
config/tokenizer/processor file plus onnx/vision_encoder*.onnx, onnx/embed_tokens*.onnx and
onnx/decoder_model_merged*.onnx for each dtype (default fp32 and int8). No torch is needed;
`--check` holds the fp32 graphs against transformers (the `export` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _script_common  # noqa: E402,F401 - makes src/ importable from a checkout

if __name__ == "__main__":
    from smolvlm_cli.cli.main import main

    main(["export", *sys.argv[1:]])
