"""Model export: `smolvlm export` and the checks and fixtures around it.

- `export_onnx(model, out_dir, dtypes=("fp32",), check=False, log=print)`: the model's config
  files and our fast graphs (built without torch by `smolvlm_cli.builder`) in the Hub's `onnx/`
  layout; `style="official"` traces graphs of Hugging Face's own contract (torch); `check=True`
  holds the fp32 graphs against transformers (torch).
- `make_random_checkpoint(config_dir, out_dir, tiny=False, seed=0)`: a Hugging Face model
  directory with seeded random weights of the real architecture (tests, benchmarks; torch).

Importing this package is cheap: torch and transformers load only when a function needs them.
"""

from smolvlm_cli.errors import ExportError
from smolvlm_cli.export.checkpoint import make_random_checkpoint
from smolvlm_cli.export.onnx_export import export_onnx

__all__ = ["ExportError", "export_onnx", "make_random_checkpoint"]
