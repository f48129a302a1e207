#!/usr/bin/env python
"""Build a SmolVLM checkpoint with seeded random weights from a model's config/tokenizer files.

    scripts/random_checkpoint.py CONFIG_DIR OUT_DIR [--tiny] [--seed N]

CONFIG_DIR is a model directory in the Hugging Face layout (no weights needed). OUT_DIR gets
model.safetensors plus copies of every non-weight file. --tiny shrinks the transformer stacks
(2 layers, hidden 64) but keeps the tile geometry, vocabulary and special tokens.
Needs the `export` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_dir", type=Path, help="model directory with config.json etc.")
    parser.add_argument("out_dir", type=Path, help="where to write the checkpoint")
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide test model")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    if not args.config_dir.is_dir():
        return fail(f"{args.config_dir} is not a directory")
    if not (args.config_dir / "config.json").is_file():
        return fail(f"config.json not found in {args.config_dir}",
                    hint="pass a SmolVLM model directory in the Hugging Face layout")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        return fail(f"{args.out_dir} exists and is not a directory")

    from smolvlm_cli.errors import SmolVLMError

    started = time.perf_counter()
    try:
        from smolvlm_cli.export.checkpoint import make_random_checkpoint
    except ImportError as exc:
        return fail(f"cannot import the exporter: {exc}", hint="pip install 'smolvlm-cli[export]'")
    log(f"building {'tiny ' if args.tiny else ''}random checkpoint of {args.config_dir} (seed {args.seed})")
    try:
        out = make_random_checkpoint(args.config_dir, args.out_dir, tiny=args.tiny, seed=args.seed)
    except SmolVLMError as exc:
        return fail(exc.message, exc.hint)
    except OSError as exc:
        return fail(str(exc))
    files = [p for p in out.iterdir() if p.is_file()]
    from smolvlm_cli.cli.output import files_table

    print(files_table(out, files, time.perf_counter() - started, what="checkpoint written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
