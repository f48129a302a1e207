"""Model resolution: a local directory in the Hub's layout, or a Hub id through huggingface_hub.

Only the files a run needs are downloaded: the configuration and tokenizer files, plus the ONNX
graphs of the chosen dtype (or the safetensors weights for the torch backend). The Hub's own
cache and variables (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`) apply unchanged.
huggingface_hub is imported lazily: a local directory never pays for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smolvlm_cli.builder.layout import Progress
from smolvlm_cli.dtypes import onnx_files, resolve_dtype
from smolvlm_cli.errors import ModelNotFoundError

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
MODEL_ENV = "SMOLVLM_MODEL"

# Everything but the weights. The tokenizer needs only tokenizer.json (+ its config files).
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
)
# The checkpoint: what the torch backend loads and what our graphs are built from.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def _from_env(model: str) -> str:
    """Where a bad model name came from, when the user may not remember setting it."""
    return f" (from ${MODEL_ENV})" if os.environ.get(MODEL_ENV) == model else ""


def files_for(backend: str, dtype: str | None) -> list[str]:
    """Hub file patterns a backend needs: `torch` and `build` (our graphs, built from the
    checkpoint) the safetensors weights, `onnx` the repo's own graphs of `dtype` (a graph may
    carry an `.onnx_data` file)."""
    if backend in ("torch", "build"):
        return [*CONFIG_FILES, *WEIGHT_FILES]
    graphs = onnx_files(dtype).values()
    return [*CONFIG_FILES, *graphs, *(f"{g}_data" for g in graphs), *(f"{g}.data" for g in graphs)]


def is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def resolve_model(model: str, patterns: list[str], progress: Progress | None = None) -> Path:
    """A local directory as is, else the Hub snapshot holding `patterns` (downloaded if needed,
    shown through `progress.downloads()`)."""
    if not model.strip():
        raise ModelNotFoundError(
            "the model name is empty", hint=f"give a model folder or a Hub id like {DEFAULT_MODEL}"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():  # else "no ONNX files" etc. would mislead
            raise ModelNotFoundError(
                f"{model} is not a model folder: it has no config.json",
                hint="give the folder that holds config.json, the tokenizer files and the weights "
                "(the Hugging Face layout)",
            )
        return path
    if path.exists():
        raise ModelNotFoundError(f"model {model!r} is a file, not a model directory")
    if not _REPO_ID.match(model) or model.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model {model!r}{_from_env(model)} is neither a local directory nor a Hub id",
            hint=f"pass a directory in the Hugging Face layout or an id like {DEFAULT_MODEL}",
        )
    return Path(_snapshot(model, patterns, progress or Progress()))


def _snapshot(repo_id: str, patterns: list[str], progress: Progress) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        with progress.downloads() as bars:
            return snapshot_download(repo_id, allow_patterns=patterns, tqdm_class=bars)
    except GatedRepoError as exc:
        raise ModelNotFoundError(
            f"model {repo_id} is gated on the Hub", hint="accept its terms on the Hub and log in (hf auth login)"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"model {repo_id}{_from_env(repo_id)} not found on the Hugging Face Hub",
            hint="check the id, or log in if it is private",
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if offline():
            raise ModelNotFoundError(
                f"model {repo_id} is not in the local cache, and HF_HUB_OFFLINE is set",
                hint=f"unset HF_HUB_OFFLINE to download it (`smolvlm download {repo_id}` fetches it "
                "once for later offline runs), or give a model folder you have instead of the id",
            ) from exc
        raise ModelNotFoundError(
            f"model {repo_id} is not in the local cache and the Hub cannot be reached ({_root_cause(exc)})",
            hint=_network_hint(repo_id),
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        cause = _innermost(exc)
        if isinstance(cause, OSError) and cause.filename is not None:  # a file of the cache, not the network
            raise ModelNotFoundError(
                f"cannot use the Hugging Face cache: {cause.strerror or cause}: {os.fsdecode(cause.filename)}",
                hint="set HF_HOME to a folder you can write (the Hub's files are kept there)",
            ) from exc
        raise ModelNotFoundError(f"cannot download {repo_id}: {_root_cause(exc)}", hint=_network_hint(repo_id)) from exc
    except Exception as exc:
        # the HTTP client's own errors (a malformed HF_ENDPOINT, a TLS failure) escape
        # huggingface_hub: the cache may still hold the model, as when the Hub is unreachable
        if not type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3", "ssl")):
            raise
        try:
            return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        except (LocalEntryNotFoundError, OSError):
            pass
        raise ModelNotFoundError(f"cannot download {repo_id}: {_root_cause(exc)}", hint=_network_hint(repo_id)) from exc


def offline() -> bool:
    """Whether huggingface_hub is told not to reach the Hub (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _network_hint(repo_id: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    mirror = f"check HF_ENDPOINT ({endpoint!r})" if endpoint else "or use a mirror (HF_ENDPOINT=https://your-mirror)"
    return f"connect and run `smolvlm download {repo_id}` once; {mirror}; or give a model folder you have instead of the id"


def _innermost(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return exc


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause ("Connection refused", "Name or service not
    known"), not the wrappers' advice."""
    exc = _innermost(exc)
    reason = getattr(exc, "strerror", None) if isinstance(exc, OSError) else None
    text = (reason or str(exc)).strip()
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[0] if text else "")
    return text or type(exc).__name__


def has_onnx(model_dir: Path, dtype: str | None) -> bool:
    """Whether `model_dir` holds every graph `dtype` loads (the default spec may fall back)."""
    return all((model_dir / f).is_file() for f in onnx_files(resolve_dtype(dtype, model_dir)).values())


def has_torch_weights(model_dir: Path) -> bool:
    return any(model_dir.glob("*.safetensors"))
