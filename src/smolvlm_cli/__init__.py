"""smolvlm-cli: SmolVLM captions and visual answers on a CPU through ONNX Runtime.

    from smolvlm_cli import SmolVLM
    model = SmolVLM.from_pretrained()
    print(model.generate("photo.jpg", "What is in the box?"))

Names load lazily so that `import smolvlm_cli` (and `smolvlm --help`) stays fast.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# ONNX Runtime (1.29 and later) sends usage telemetry from Linux and macOS too, and writes a
# device id under HOME when it is imported (a coloured warning on every run where HOME is
# read-only). A local tool sends nothing it does not need: off, unless the user chose otherwise.
# Read once, when onnxruntime is first imported: this module is imported before it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_EXPORTS = {
    "SmolVLM": "smolvlm_cli.model",
    "Conversation": "smolvlm_cli.conversation",
    "TextStream": "smolvlm_cli.values",
    "GenerationStats": "smolvlm_cli.values",
    "Generation": "smolvlm_cli.values",
    "PreparedInputs": "smolvlm_cli.values",
    "Processor": "smolvlm_cli.processor",
    "ImageProcessor": "smolvlm_cli.image_processing",
    "Tokenizer": "smolvlm_cli.tokenizer",
    "ModelConfig": "smolvlm_cli.config",
    "GenerationOptions": "smolvlm_cli.options",
    "Tiling": "smolvlm_cli.options",
    "SmolVLMError": "smolvlm_cli.errors",
    "open_video": "smolvlm_cli.video.clip",
    "SampledVideo": "smolvlm_cli.video.clip",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.conversation import Conversation
    from smolvlm_cli.errors import SmolVLMError
    from smolvlm_cli.image_processing import ImageProcessor
    from smolvlm_cli.model import SmolVLM
    from smolvlm_cli.options import GenerationOptions, Tiling
    from smolvlm_cli.processor import Processor
    from smolvlm_cli.tokenizer import Tokenizer
    from smolvlm_cli.values import Generation, GenerationStats, PreparedInputs, TextStream
    from smolvlm_cli.video.clip import SampledVideo, open_video


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'smolvlm_cli' has no attribute {name!r}")
