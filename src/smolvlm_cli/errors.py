"""Errors the user can act on. The CLI prints them as one `Error: ...` line plus a hint."""

from __future__ import annotations


class SmolVLMError(Exception):
    """Base class: a message for the user and an optional hint on what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(SmolVLMError):
    """A model file is missing or malformed."""


class ModelNotFoundError(SmolVLMError):
    """The model id or directory cannot be resolved (unknown, offline and not cached, ...)."""


class BackendUnavailableError(SmolVLMError):
    """The requested backend cannot run this model (no ONNX files, torch not installed, ...)."""


class ImageError(SmolVLMError):
    """An input image cannot be read or decoded."""


class ExportError(SmolVLMError):
    """Built or exported graphs are wrong (ONNX Runtime disagrees with transformers)."""
