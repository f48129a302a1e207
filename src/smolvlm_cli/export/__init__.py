"""Model export (the optional `export` extra: torch, transformers, onnx).

- `make_random_checkpoint(config_dir, out_dir, tiny=False, seed=0)`: a Hugging Face model
  directory with seeded random weights of the real architecture (tests, benchmarks).
- `export_onnx(model, out_dir, dtypes=("fp32",), check=True, log=print)`: the three graphs of the
  Hub's `onnx/` layout (vision_encoder, embed_tokens, decoder_model_merged) and their fp16 / int8
  / q4 variants, checked against transformers in ONNX Runtime.

Importing this package is cheap: torch and transformers load when a function runs. Nothing else
in smolvlm_cli imports it.
"""

from smolvlm_cli.export.checkpoint import make_random_checkpoint
from smolvlm_cli.export.onnx_export import ExportError, export_onnx

__all__ = ["ExportError", "export_onnx", "make_random_checkpoint"]
