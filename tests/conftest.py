"""Shared test fixtures. The real model files live in ../shared/fixtures (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SMOLVLM_FIXTURES", REPO.parent / "shared" / "fixtures"))
MODEL_NAMES = ("SmolVLM2-256M-Video-Instruct", "SmolVLM2-500M-Video-Instruct", "SmolVLM-256M-Instruct")

# Model-building fixtures (tiny random checkpoints, their ONNX exports) live in model_fixtures.py.
from model_fixtures import *  # noqa: E402,F401,F403


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory):
    """Graphs the runtime builds go to a per-session cache, never the user's ~/.cache (the
    variable reaches the CLI subprocesses too)."""
    saved = os.environ.get("SMOLVLM_CACHE")
    os.environ["SMOLVLM_CACHE"] = str(tmp_path_factory.mktemp("smolvlm-cache"))
    yield
    if saved is None:
        os.environ.pop("SMOLVLM_CACHE", None)
    else:
        os.environ["SMOLVLM_CACHE"] = saved


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "config.json").is_file():
        raise RuntimeError(f"fixture {path} missing: ../shared/fixtures must sit beside the repo")
    return path


@pytest.fixture(params=MODEL_NAMES)
def model_files(request) -> Path:
    """A real model directory (config, tokenizer, processor files; no weights), one per fixture."""
    return fixture_dir(request.param)
