"""Writing ONNX graphs node by node, with the weights streamed to disk as they are made.

Every initializer of 1 kB or more goes straight into the graph's external data file
(`<graph>.onnx_data`, the Hub's naming) and the ModelProto keeps only its offset: building a
graph holds one layer's weights at a time, never the whole model, and a 2.2B decoder is no
harder than a 256M one. Offsets are page-aligned so ONNX Runtime can map the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from smolvlm_cli.builder.layout import data_file_name

DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators
OPSET = 17
EXTERNAL_MIN_BYTES = 1024
_ALIGN = 4096
_TWO_GB = 2**31 - 2**20


class GraphWriter:
    """Collects nodes under unique names; large initializers go to `data_path` as they come."""

    def __init__(self, data_path: Path | None = None, prefix: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.prefix = prefix
        self._names: set[str] = set()
        self._data_path = data_path
        self._data = open(data_path, "wb") if data_path is not None else None
        self._offset = 0

    def name(self, base: str) -> str:
        base = self.prefix + base
        n, i = base, 1
        while n in self._names:
            n, i = f"{base}_{i}", i + 1
        self._names.add(n)
        return n

    def reserve(self, *names: str) -> None:
        self._names.update(names)

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        array = np.ascontiguousarray(array)
        if self._data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        pad = -self._offset % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        self._data.write(array.tobytes())
        tensor = TensorProto(
            name=name,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
            dims=array.shape,
            data_location=TensorProto.EXTERNAL,
        )
        for key, value in (
            ("location", self._data_path.name),
            ("offset", str(self._offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self._offset += array.nbytes
        self.inits.append(tensor)
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        n_out: int = 1,
        base: str | None = None,
        domain: str = "",
        outputs: list[str] | None = None,
        **attrs,
    ) -> list[str]:
        base = base or op
        outs = outputs or [self.name(f"{base}/out{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(base), domain=domain or None, **attrs))
        return outs

    def finish(self, graph_name: str, inputs, outputs, path: Path, metadata: dict[str, str], doc: str = "") -> None:
        """Write the ModelProto to `path` (its data file was written along the way)."""
        if self._data is not None:
            self._data.flush()
            os.fsync(self._data.fileno())
            self._data.close()
            self._data = None
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        proto = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
            producer_name="smolvlm-cli",
        )
        proto.ir_version = 8
        proto.doc_string = doc
        helper.set_model_props(proto, metadata)
        write_proto(proto, path)

    def abort(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None

    def __enter__(self) -> GraphWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # a no-op after finish(); closes the data file when building failed


def write_proto(proto: onnx.ModelProto, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
        f.flush()
        os.fsync(f.fileno())


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    """One file, or `<name>.onnx_data` beside it when the graph exceeds protobuf's 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        large = proto.ByteSize() > _TWO_GB
    except Exception:  # protobuf refuses to size messages above 2 GB
        large = True
    if large:
        onnx.save(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file_name(path.name),
            size_threshold=EXTERNAL_MIN_BYTES,
        )
    else:
        onnx.save(proto, str(path))
