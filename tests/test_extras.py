"""Install hints for the optional extras: `pip install 'smolvlm-cli[X]'` where that works, and
`pipx inject` with the extra's requirements in a pipx environment (`pipx install .`, which README
offers), where the pip line installs into the wrong environment."""

from __future__ import annotations

import sys

import pytest

from smolvlm_cli.errors import VideoError
from smolvlm_cli.extras import in_pipx, install_command


def test_an_ordinary_environment_gets_the_pip_line():
    assert not in_pipx()  # the test environment
    assert install_command("video") == "pip install 'smolvlm-cli[video]'"


def test_a_pipx_environment_gets_pipx_inject_with_the_extras_requirements(monkeypatch):
    assert in_pipx("/home/u/.local/share/pipx/venvs/smolvlm-cli")
    assert in_pipx("/home/u/.local/pipx/venvs/smolvlm-cli")
    assert not in_pipx("/home/u/project/.venv")
    monkeypatch.setattr(sys, "prefix", "/home/u/.local/share/pipx/venvs/smolvlm-cli")
    assert install_command("video") == "pipx inject smolvlm-cli 'av>=14'"
    export = install_command("export")  # `export` names `smolvlm-cli[torch]`: expanded
    assert export.startswith("pipx inject smolvlm-cli ")
    assert all(name in export for name in ("'torch", "'transformers", "'safetensors", "'onnxscript"))
    assert "smolvlm-cli[" not in export

    from smolvlm_cli.video import decode

    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    with pytest.raises(VideoError) as caught:
        decode.import_av()
    assert "pipx inject smolvlm-cli 'av>=14'" in caught.value.hint
