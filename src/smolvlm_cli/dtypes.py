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
_ALIASES = {"vision_encoder": "vision", "embed_tokens": "embed", "decoder_model_merged": "decoder",
            "text": "decoder", "embeddings": "embed"}

DEFAULT_DTYPE = "fp32"


def parse_dtype(spec: str | None) -> dict[str, str]:
    """`"vision=fp32,decoder=int8"` -> {"vision": "fp32", "embed": "fp32", "decoder": "int8"}."""
    spec = (spec or DEFAULT_DTYPE).strip().lower()
    default, chosen = DEFAULT_DTYPE, {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.rpartition("=")
        name = name.strip()
        value = value.strip()
        if value not in DTYPE_SUFFIXES:
            raise ValueError(f"unknown dtype {value!r} (choose from {', '.join(DTYPE_SUFFIXES)})")
        if not name:
            default = value
            continue
        component = _ALIASES.get(name, name)
        if component not in COMPONENTS:
            raise ValueError(f"unknown model component {name!r} (choose from {', '.join(COMPONENTS)})")
        chosen[component] = value
    return {c: chosen.get(c, default) for c in COMPONENTS}


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
