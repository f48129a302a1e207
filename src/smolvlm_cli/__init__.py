"""smolvlm-cli: SmolVLM captions and visual answers on a CPU through ONNX Runtime."""

from __future__ import annotations

__version__ = "0.1.0"
