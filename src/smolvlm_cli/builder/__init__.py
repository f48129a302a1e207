"""Our fast ONNX graphs, built from a SmolVLM checkpoint's safetensors with numpy and onnx only.

- `build.build_graphs(checkpoint_dir, onnx_dir, [(component, dtype), ...])`: write graphs.
- `cache.ensure_graphs(checkpoint_dir, {component: dtype}, label)`: the cached build the runtime
  loads by default (built once per checkpoint, dtype, builder and ONNX Runtime version).
"""
