"""The machine's own limits for scripts/bench.py, measured with ONNX Runtime at a given thread
count: fp32 GEMM FLOP/s on the vision tower's shapes and memory read GB/s; the FLOP of a tile and
the bytes a decode step reads, from the model's config; and waiting for idle CPUs."""

from __future__ import annotations

import time
from pathlib import Path

from _script_common import log


def _idle_fraction(seconds: float = 0.5) -> float:
    def snap():
        with open("/proc/stat", encoding="utf-8") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]

    total0, idle0 = snap()
    time.sleep(seconds)
    total1, idle1 = snap()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_idle(limit: float) -> None:
    """Wait (up to `limit` seconds) until other processes leave the CPUs idle: on a shared
    machine a concurrent job halves a 2-thread benchmark."""
    if limit <= 0 or not Path("/proc/stat").is_file():
        return
    deadline = time.time() + limit
    while time.time() < deadline:
        if _idle_fraction() > 0.85 and _idle_fraction() > 0.85:
            return
        time.sleep(2)
    log(f"   (the machine stayed busy for {limit:.0f} s: measuring anyway)")


def matmul_session(shapes, threads):
    """One session running independent MatMuls [m, k] x constant [k, n] (packed like model weights)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (m, k, n) in enumerate(shapes):
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [f"A{i}", f"B{i}"], [f"C{i}"]))
        inputs.append(helper.make_tensor_value_info(f"A{i}", TensorProto.FLOAT, [m, k]))
        outputs.append(helper.make_tensor_value_info(f"C{i}", TensorProto.FLOAT, [m, n]))
    graph = helper.make_graph(nodes, "gemms", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {f"A{i}": rng.standard_normal((m, k)).astype(np.float32) for i, (m, k, _n) in enumerate(shapes)}
    return sess, feeds


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _reduce_gbps(threads: int) -> float:
    """Read bandwidth: a ReduceSum of [threads, ...] rows (each thread streams its own 512/threads MiB)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    data = np.ones((threads, (1 << 29) // 4 // threads), np.float32)
    node = helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "read",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(data.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [threads])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    reduce = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        opts,
        providers=["CPUExecutionProvider"],
    )
    return data.nbytes / best_time(lambda: reduce.run(None, {"X": data}), 8) / 1e9


def worker_machine(args) -> dict:  # the `--worker machine` subprocess
    """fp32 matmul FLOP/s on one vision layer's GEMMs, and memory read GB/s (same threads)."""
    import onnxruntime as ort

    threads = args.threads
    # one SigLIP-B/16 layer on a 512 tile: qkv, out-proj, fc1, fc2 (1024 patches, 768 wide)
    shapes = [(1024, 768, 2304), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]
    sess, feeds = matmul_session(shapes, threads)
    flops = sum(2 * m * k * n for m, k, n in shapes)
    seconds = best_time(lambda: sess.run(None, feeds), 12)

    reduce_gbps = _reduce_gbps(threads)
    # read bandwidth 2: a GEMV over a 512 MiB weight matrix (what a decode step does)
    gemv, gemv_feeds = matmul_session([(1, 4096, 32768)], threads)
    gemv_gbps = 4096 * 32768 * 4 / best_time(lambda: gemv.run(None, gemv_feeds), 8) / 1e9
    return {
        "matmul_gflops": flops / seconds / 1e9,
        "read_gbps": max(reduce_gbps, gemv_gbps),
        "reduce_gbps": reduce_gbps,
        "gemv_gbps": gemv_gbps,
        "threads": threads,
        "ort_version": ort.__version__,
        "isa": cpu_isa(),
    }


def cpu_isa() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return ",".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags)


def vision_flops_per_tile(model_dir: Path) -> float:
    """Multiply-adds x 2 of one tile through the vision tower and the connector (from config.json)."""
    from smolvlm_cli.config import ModelConfig, read_json

    c = ModelConfig.from_dir(model_dir)
    vision = read_json(model_dir / "config.json").get("vision_config", {})
    d, layers = c.vision_hidden_size, c.vision_num_layers
    inter = int(vision.get("intermediate_size", 3072))
    p = (c.vision_image_size // c.patch_size) ** 2
    per_layer = 2 * p * d * 3 * d + 2 * p * d * d + 2 * 2 * p * p * d + 2 * 2 * p * d * inter
    patch = 2 * p * (3 * c.patch_size**2) * d
    connector = 2 * (p // c.scale_factor**2) * (d * c.scale_factor**2) * c.hidden_size
    return layers * per_layer + patch + connector


def decoder_bytes(model_dir: Path, backend: str, dtype: str) -> float:
    """Weight bytes one decode step reads: the decoder graph (all of it), or fp32 params for torch."""
    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.dtypes import onnx_files, parse_dtype

    if backend == "onnx":
        path = model_dir / onnx_files(parse_dtype(None if dtype == "default" else dtype))["decoder"]
        files = [path, path.with_name(path.name + "_data"), path.with_name(path.name + ".data")]
        size = sum(p.stat().st_size for p in files if p.is_file())
        if size:
            return float(size)
    c = ModelConfig.from_dir(model_dir)
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    from smolvlm_cli.config import read_json

    inter = int(read_json(model_dir / "config.json")["text_config"].get("intermediate_size", 4 * h))
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * inter + 2 * h
    return 4.0 * (c.num_hidden_layers * per_layer + h + c.vocab_size * h)


def kv_bytes_per_step(model_dir: Path, prompt_tokens: int, new_tokens: int, cache_bytes: int = 4) -> float:
    """KV-cache bytes one decode step reads on average (keys and values of every layer, over the
    mean past length of the measured steps): ~42 MB at past ~906 for the 256M model, 8% of its
    fp32 weights and 30% of its int8 ones. The issue's ceiling counts weights only."""
    from smolvlm_cli.config import ModelConfig

    c = ModelConfig.from_dir(model_dir)
    past = prompt_tokens + new_tokens / 2
    return 2.0 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * past * cache_bytes
