"""Model runners: `onnx` (ONNX Runtime, the default) and `torch` (transformers, optional extra)."""

BACKENDS = ("auto", "onnx", "torch")
