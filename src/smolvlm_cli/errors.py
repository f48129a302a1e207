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


class VideoError(ImageError):
    """An input video cannot be read or decoded (an `ImageError`: every handler of a bad input
    file handles it)."""


class ImageTooLargeError(ImageError):
    """An image (a download, a file) is over a size limit."""


class InputError(SmolVLMError, ValueError):
    """What was asked does not fit the model: a prompt and reply longer than its context, an
    image cut into more tiles than it has positions for (a `ValueError` too, as it was)."""


class ExportError(SmolVLMError):
    """Built or exported graphs are wrong (ONNX Runtime disagrees with transformers)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (library messages may go on for pages), or its
    type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_message(exc: BaseException) -> str:
    """One line for a record or a report: the message of our errors, `Type: first line` of others."""
    message = getattr(exc, "message", None)
    if message:
        return str(message)
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
