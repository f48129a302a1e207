"""Python code that makes a process see only what `pip install .` (no extras) installs.

The test environment has every extra (torch, transformers, onnxscript, Ray, ...), so a module
the default path imports without declaring it passes every test and fails for users: onnxruntime's
4-bit quantizer imports `onnx_ir`, which only the `export` extra brought. Run as the prelude of
`python -c`, this code blocks the import of every installed top-level module whose distributions
are outside smolvlm-cli's dependency closure (extras left out); the standard library stays.
"""

ONLY_DEFAULT_DEPENDENCIES = r"""
import importlib.abc, importlib.metadata as _md, sys
from packaging.requirements import Requirement as _Req
from packaging.utils import canonicalize_name as _name

def _closure(root):
    seen, todo = set(), [root]
    while todo:
        dist = _name(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = _md.requires(dist) or []
        except _md.PackageNotFoundError:
            continue
        for text in requires:
            req = _Req(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen

_allowed = _closure("smolvlm-cli")
_blocked = {
    module
    for module, dists in _md.packages_distributions().items()
    if not any(_name(d) in _allowed for d in dists)
}

class _DefaultInstallOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed by `pip install .`)", name=fullname)
        return None

sys.meta_path.insert(0, _DefaultInstallOnly())
"""
