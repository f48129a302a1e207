"""ONNX variants: which file each component loads for a `--dtype` spec.

A spec is one dtype for every component (`int8`) or a per-component list
(`vision=fp32,decoder=int8`; a bare dtype in the list sets the rest). The file names follow the
Hugging Face `onnx/` folders, so our exports and Hugging Face's load alike.
"""

from __future__ import annotations

# Variant suffixes as Hugging Face publishes them.
DTYPE_SUFFIXES = {
    "fp32": "",
    "fp16": "_fp16",
    "int8": "_int8",
    "uint8": "_uint8",
    "quantized": "_quantized",
    "q4": "_q4",
    "q4f16": "_q4f16",
    "bnb4": "_bnb4",
}
# The dtypes our exporter writes; the runtime loads every key of DTYPE_SUFFIXES.
EXPORT_DTYPES = ("fp32", "fp16", "int8", "q4")

COMPONENTS = {"vision": "vision_encoder", "embed": "embed_tokens", "decoder": "decoder_model_merged"}
_ALIASES = {
    "vision_encoder": "vision",
    "embed_tokens": "embed",
    "decoder_model_merged": "decoder",
    "text": "decoder",
    "embeddings": "embed",
}

# The default spec: one dtype, or per component ("vision=int8,embed=fp32,decoder=int8").
# int8 (dynamic per-tensor weights): 2x the fp32 decode speed, half its time to first token and
# half its memory, with fp32's top-1 token in int8's top-5 at every step (README "Choosing a dtype").
DEFAULT_DTYPE = "int8"
# What a component falls back to when the model folder lacks its default variant (`resolve_dtype`).
FALLBACK_DTYPE = "fp32"


def _parse(spec: str, base: dict[str, str] | None) -> dict[str, str]:
    default, chosen = None, {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.rpartition("=")
        name = name.strip()
        value = value.strip()
        if value not in DTYPE_SUFFIXES:
            raise ValueError(f"unknown dtype {value!r} (choose from {', '.join(DTYPE_SUFFIXES)})")
        if not name:
            if default is not None and default != value:  # the last would win, silently
                raise ValueError(f"two dtypes for every component ({default}, {value}): give one")
            default = value
            continue
        component = _ALIASES.get(name, name)
        if component not in COMPONENTS:
            raise ValueError(f"unknown model component {name!r} (choose from {', '.join(COMPONENTS)})")
        if chosen.get(component, value) != value:
            raise ValueError(f"two dtypes for {component} ({chosen[component]}, {value}): give one")
        chosen[component] = value
    if base is None:  # parsing the default spec itself
        base = {c: default or FALLBACK_DTYPE for c in COMPONENTS}
    return {c: chosen.get(c, default or base[c]) for c in COMPONENTS}


def default_dtypes() -> dict[str, str]:
    """DEFAULT_DTYPE per component."""
    return _parse(DEFAULT_DTYPE.strip().lower(), None)


def parse_dtype(spec: str | None) -> dict[str, str]:
    """`"vision=fp32,decoder=int8"` -> {"vision": "fp32", "embed": "fp32", "decoder": "int8"}.

    A bare dtype sets every component not named; components a spec leaves out take their
    DEFAULT_DTYPE value (which may itself be per component).
    """
    if spec is None or not spec.strip():
        return default_dtypes()
    return _parse(spec.strip().lower(), default_dtypes())


def resolve_dtype(spec: str | None, model_dir) -> dict[str, str]:
    """Like `parse_dtype`, but without an explicit spec a component whose default variant is not
    in `model_dir` uses FALLBACK_DTYPE's graph when that one is there (e.g. an fp32-only export
    under an int8 default). Explicit specs are never substituted."""
    from pathlib import Path

    dtypes = parse_dtype(spec)
    if spec is None or not spec.strip():
        root = Path(model_dir)
        for component, dtype in dtypes.items():
            if (
                not (root / onnx_filename(component, dtype)).is_file()
                and (root / onnx_filename(component, FALLBACK_DTYPE)).is_file()
            ):
                dtypes[component] = FALLBACK_DTYPE
    return dtypes


def format_dtype(dtypes: dict[str, str]) -> str:
    """The shortest spec for a parsed dtype dict: `int8`, or `vision=fp32,embed=int8,decoder=int8`."""
    values = set(dtypes.values())
    if len(values) == 1:
        return values.pop()
    return ",".join(f"{c}={dtypes[c]}" for c in COMPONENTS)


def onnx_filename(component: str, dtype: str) -> str:
    return f"onnx/{COMPONENTS[component]}{DTYPE_SUFFIXES[dtype]}.onnx"


def onnx_files(spec: str | dict[str, str] | None) -> dict[str, str]:
    """component -> relative path of its graph (an `.onnx_data` file may sit beside it)."""
    dtypes = spec if isinstance(spec, dict) else parse_dtype(spec)
    return {c: onnx_filename(c, d) for c, d in dtypes.items()}
