"""Fixtures that build random-weight checkpoints and ONNX exports (owned by the exporter work)."""
