"""A small helper for writing ONNX graphs node by node from torch modules' weights."""

from __future__ import annotations

import numpy as np

DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators


class GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.inits, self._names, self.prefix = [], [], set(), prefix

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
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, base: str | None = None,
             domain: str = "", outputs: list[str] | None = None, **attrs) -> list[str]:
        from onnx import helper

        base = base or op
        outs = outputs or [self.name(f"{base}/out{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(base), domain=domain or None,
                                           **attrs))
        return outs


def linear_weight(linear) -> np.ndarray:
    """A torch Linear's weight as the [in, out] matrix MatMul takes."""
    return linear.weight.detach().float().numpy().T


def tensor(t) -> np.ndarray:
    return t.detach().float().numpy()
