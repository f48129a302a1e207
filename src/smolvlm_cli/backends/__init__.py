"""Model runners: `onnx` (ONNX Runtime, the default) and `torch` (transformers, optional extra)."""

BACKENDS = ("auto", "onnx", "torch")
# Where the ONNX graphs come from (see select.py): built from the safetensors, or the repo's own.
GRAPH_SOURCES = ("auto", "build", "hub")
