"""Checkpoint weights straight from safetensors files: numpy memory maps, no torch.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw bytes. Reading the header ourselves lets every tensor be
a memory-mapped view: nothing is loaded until a layer asks for it, and a bf16 or fp16 tensor is
widened to float32 only while that layer is written. Single files and sharded checkpoints
(`model.safetensors.index.json`) read alike.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from smolvlm_cli.errors import ConfigError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2**20  # the format's own limit


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, `model.safetensors`, or every
    `*.safetensors` (sorted); [] when there is none."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{index} is not a valid safetensors index: {exc}") from exc
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    return sorted(model_dir.glob("*.safetensors"))


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than a header")
            (size,) = struct.unpack("<Q", raw)
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not a safetensors file ({exc})", hint="the download may be incomplete: download the model again"
        ) from exc
    header.pop("__metadata__", None)
    return header, 8 + size


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # the high half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


class Checkpoint:
    """name -> float32 array, for every tensor of a checkpoint's safetensors files."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.files = weight_files(self.model_dir)
        if not self.files:
            raise ConfigError(
                f"no *.safetensors weights in {self.model_dir}",
                hint="a SmolVLM checkpoint folder holds config.json and model.safetensors",
            )
        self._where: dict[str, tuple[Path, dict, int]] = {}
        self.dtypes: set[str] = set()
        for path in self.files:
            if not path.is_file():
                raise ConfigError(
                    f"{path.name} is listed in {INDEX_FILE} but missing from {self.model_dir}",
                    hint="the download may be incomplete: download the model again",
                )
            header, start = _read_header(path)
            size = path.stat().st_size
            for name, info in header.items():
                begin, end = info["data_offsets"]
                if info["dtype"] not in _DTYPES or start + end > size:
                    raise ConfigError(
                        f"{path} is truncated or damaged: tensor {name} ({info['dtype']}) "
                        f"needs bytes {begin}-{end} of a {size}-byte file",
                        hint="download the model again",
                    )
                self._where[self._canonical(name)] = (path, info, start)
                self.dtypes.add(info["dtype"])
        self._maps: dict[Path, np.memmap] = {}

    @staticmethod
    def _canonical(name: str) -> str:
        # Checkpoints saved from the inner model lack the top-level "model." prefix.
        if name.startswith(("model.", "lm_head.")):
            return name
        return f"model.{name}"

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)[1]["shape"])

    def _info(self, name: str):
        try:
            return self._where[name]
        except KeyError:
            raise ConfigError(
                f"tensor {name} not found in the checkpoint {self.model_dir}",
                hint="is this a SmolVLM / Idefics3 checkpoint saved by transformers?",
            ) from None

    def get(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array (float32 tensors too: callers may keep it after the
        map is closed)."""
        path, info, start = self._info(name)
        mapped = self._maps.get(path)
        if mapped is None:
            mapped = self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = np.frombuffer(
            mapped,
            dtype=_DTYPES[info["dtype"]],
            count=(end - begin) // np.dtype(_DTYPES[info["dtype"]]).itemsize,
            offset=start + begin,
        ).reshape(info["shape"])
        if info["dtype"] in ("F32", "F16", "BF16", "F64"):
            return _to_float32(raw, info["dtype"])  # always a new array
        return np.array(raw, copy=True)

    def close(self) -> None:
        self._maps.clear()
