#!/usr/bin/env python
"""Benchmark one caption end to end, per backend and dtype, against the machine's own limits.

    scripts/bench.py MODEL_DIR [--image IMG] [--backend onnx,torch] [--dtype fp32,int8,q4]
                     [--new-tokens 64] [--no-split] [--threads N] [--json] [--torch-model DIR]
                     [--runs N] [--wait-idle SECONDS] [--clear-cache] [--no-machine]
    scripts/bench.py --source LABEL=[GRAPHS:]MODEL[@HF_HOME] ... [--baseline LABEL] [options above]

MODEL_DIR holds the ONNX graphs (`onnx/`) and, for the torch backend, the safetensors checkpoint
(or pass `--torch-model`). Each configuration runs in its own fresh subprocess, one after
another, through the public API (`SmolVLM.from_pretrained(...).stream(...)` with
`GenerationOptions(ignore_eos=True, max_new_tokens=N)`, so exactly N tokens), and reports its
`stats`: preprocessing, vision, prefill, time to first token, decode tokens/s, the load time and
the process's peak RSS. Without `--image` a photo-like 1024x768 JPEG is generated (13 tiles,
832 image tokens). Every ONNX dtype is loaded once first (this fills the optimized-graph cache:
`--clear-cache` makes that a true first load, reported in the footer), so the rows show loads
"after the first run".

The machine is measured with the same thread count before each configuration and after the
last: fp32 matmul FLOP/s on one vision-tower layer's GEMM shapes (ONNX Runtime, packed weights)
and memory read GB/s (the best of a 2-row ReduceSum and a GEMV over 512 MB). Each row is held to
the best of the measurements just before and after it: its vision time against the floor
(tiles x FLOP per tile / FLOP/s) and its decode speed against the bandwidth ceiling (GB/s /
bytes of decoder weights read per token; `+KV` also counts the KV cache a step reads, and the
JSON has the read GB/s probed in the worker right after its decode). The ratios to the torch
backend are speed-ups (>1: faster than torch). `--dtype` takes per-component specs too
(`--dtype fp32,int8 --dtype vision=int8,decoder=q4`); `default` means the library's default. On a shared machine,
`--wait-idle 300` waits for idle CPUs before each measurement.

`--source` (repeatable) compares graph sources in one run instead of MODEL_DIR: each source's
rows (one per dtype) load through `SmolVLM.from_pretrained(MODEL, graphs=GRAPHS)` (GRAPHS: auto,
the default, build or hub). `MODEL@HF_HOME` is a Hub id read offline from that Hugging Face home
(HF_HOME=..., HF_HUB_OFFLINE=1), the way a user's default run finds it. Every worker gets one
SMOLVLM_CACHE made for the run, so a source that builds does it in its first load (reported in
the footer) and its rows load from the cache. The `x` columns are ratios to the row of the same
dtype of `--baseline` (default: the first `hub:` source), not to torch. For issue #14's W1
(three sources made from one random 256M checkpoint; the Hub-contract export needs torch):

    scripts/random_checkpoint.py ../shared/fixtures/SmolVLM2-256M-Video-Instruct models/256m --numpy
    scripts/fake_hub_cache.py models/256m models/hf-home --repo bench/SmolVLM2-256M
    python -m smolvlm_cli export models/256m models/256m-export --dtype fp32,int8
    python -c "from smolvlm_cli.export import export_onnx; export_onnx('models/256m', \\
        'models/256m-hub', dtypes=('fp32', 'int8'), style='official')"
    scripts/bench.py --threads 2 --dtype fp32,int8 --backend onnx --wait-idle 300 \\
        --source default=bench/SmolVLM2-256M@models/hf-home \\
        --source export=models/256m-export --source hub=hub:models/256m-hub

To reproduce the reference numbers (the full-size SmolVLM2-256M architecture, random weights):

    scripts/random_checkpoint.py ../shared/fixtures/SmolVLM2-256M-Video-Instruct models/256m
    scripts/export_onnx.py models/256m models/256m --dtype fp32,int8,q4
    scripts/bench.py models/256m --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402
from _bench_machine import (
    best_time,
    cpu_isa,
    decoder_bytes,
    kv_bytes_per_step,
    matmul_session,  # noqa: E402
    vision_flops_per_tile,
    wait_idle,
    worker_machine,
)

PROMPT = "Describe this image."


# -- workers (run in fresh subprocesses) --------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _read_gbps(threads: int) -> float:
    """Memory read GB/s of a [1, 4096] x [4096, 32768] product (512 MiB of weights), best of 4."""
    gemv, feeds = matmul_session([(1, 4096, 32768)], threads)
    return 4096 * 32768 * 4 / best_time(lambda: gemv.run(None, feeds), 4) / 1e9


def worker_config(args) -> dict:
    t0 = time.perf_counter()
    from smolvlm_cli import SmolVLM
    from smolvlm_cli.options import GenerationOptions

    imported = time.perf_counter()
    dtype = None if args.dtype in ("default", "") else args.dtype
    vlm = SmolVLM.from_pretrained(
        args.model, backend=args.backend, dtype=dtype, threads=args.threads, graphs=args.graphs
    )
    loaded = time.perf_counter()
    options = GenerationOptions(ignore_eos=True, max_new_tokens=args.new_tokens)
    runs = []
    for _ in range(args.runs):
        stream = vlm.stream([args.image], args.prompt, tiling="low" if args.no_split else None, options=options)
        for _delta in stream:
            pass
        runs.append(stream.stats)
    stats = sorted(runs, key=lambda s: s.ttft_s)[len(runs) // 2]  # the median run by TTFT
    peak_rss = _peak_rss_mb()  # before the probe below allocates its 512 MiB matrix
    # read GB/s in this process right after decoding: on the shared 2-vCPU VM here the separate
    # machine probes swing between ~43 and ~62 GB/s from one minute to the next, and the best of
    # the two around a row can flatter its ceiling
    gbps_here = _read_gbps(args.threads)
    return {
        "backend": vlm.backend.name,
        "dtype": vlm.backend.dtype,
        "import_s": imported - t0,
        "load_s": loaded - imported,
        "prompt_tokens": stats.prompt_tokens,
        "tiles": stats.image_tiles,
        "image_tokens": stats.image_tokens,
        "preprocess_s": stats.preprocess_s,
        "vision_s": stats.vision_s,
        "prefill_s": stats.prefill_s,
        "ttft_s": stats.ttft_s,
        "decode_tok_s": stats.decode_tokens_per_s,
        "new_tokens": stats.generated_tokens,
        "peak_rss_mb": peak_rss,
        "read_gbps_after_decode": gbps_here,
        "graphs_dir": str(getattr(vlm.backend, "model_dir", "")),
        "config_dir": str(_config_dir(args.model)),
    }


def _config_dir(model: str) -> Path:
    """The folder with config.json: the model folder, or its Hub snapshot (already downloaded)."""
    from smolvlm_cli.hub import files_for, resolve_model

    return resolve_model(model, files_for("build", None))


def worker_warm(args) -> dict:
    """Load once (this fills the optimized-graph cache on a first run) and report the time."""
    t0 = time.perf_counter()
    from smolvlm_cli import SmolVLM

    dtype = None if args.dtype in ("default", "") else args.dtype
    SmolVLM.from_pretrained(args.model, backend=args.backend, dtype=dtype, threads=args.threads, graphs=args.graphs)
    return {"first_load_s": time.perf_counter() - t0}


def help_seconds() -> float:
    """Best of 3 wall-clock runs of `smolvlm --help` (the CLI's start-up cost)."""
    script = Path(sys.executable).parent / "smolvlm"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "smolvlm_cli"]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(cmd + ["--help"], capture_output=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


# -- the parent ------------------------------------------------------------------------------------


def _run_worker(kind: str, extra: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    import os

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{kind} worker failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dtype_list(values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [value] if "=" in value else [v.strip() for v in value.split(",") if v.strip()]
    return out


def parse_source(spec: str) -> dict:
    """`LABEL=[GRAPHS:]MODEL[@HF_HOME]` -> {label, graphs, model, hf_home}."""
    from smolvlm_cli.backends.select import GRAPH_SOURCES

    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--source {spec!r}: expected LABEL=[GRAPHS:]MODEL[@HF_HOME]")
    graphs, colon, model = rest.partition(":")
    if not colon or graphs not in GRAPH_SOURCES:
        graphs, model = "auto", rest
    hf_home = None
    if "@" in model:
        model, hf_home = model.rsplit("@", 1)
        if not Path(hf_home, "hub").is_dir():
            raise ValueError(f"--source {label}: {hf_home} is not a Hugging Face home (no hub/ folder)")
    elif not (Path(model) / "config.json").is_file():
        raise ValueError(
            f"--source {label}: {model} is not a model directory (no config.json); a Hub id needs @HF_HOME"
        )
    return {"label": label, "graphs": graphs, "model": model, "hf_home": hf_home}


def photo(path: Path) -> None:
    from bench_preprocess import photo_jpeg

    photo_jpeg(path, 1024, 768)


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def print_table(results: list[dict], machine: dict, baseline: str | None = None) -> None:
    print(
        f"machine: {machine['isa']}, {machine['threads']} threads, ONNX Runtime {machine['ort_version']}: "
        f"fp32 matmul {machine['gflops_runs']} GFLOP/s, read {machine['gbps_runs']} GB/s "
        f"(measured before each configuration and after the last)"
    )
    head = (
        f"{'config':<26}{'tiles':>6}{'pre s':>7}{'vision s':>9}{'prefill s':>10}{'TTFT s':>8}"
        f"{'tok/s':>7}{'RSS MB':>8}{'load s':>7}{'GFLOP/s':>8}{'vis/floor':>10}{'GB/s':>6}{'dec/ceil':>9}{'+KV':>5}"
        f"{'TTFT x':>8}{'tok/s x':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        name = f"{r['source']} {r['dtype']}" if r.get("source") else f"{r['backend']} {r['dtype']}"
        print(
            f"{name:<26}{r['tiles']:>6}{r['preprocess_s']:>7.2f}{r['vision_s']:>9.2f}"
            f"{r['prefill_s']:>10.2f}{r['ttft_s']:>8.2f}{r['decode_tok_s']:>7.1f}{r['peak_rss_mb']:>8.0f}"
            f"{r['load_s']:>7.2f}{_fmt(r.get('matmul_gflops'), '>8.0f')}{_fmt(r.get('vision_x_floor'), '>10.2f')}"
            f"{_fmt(r.get('read_gbps'), '>6.1f')}{_fmt(r.get('decode_of_ceiling'), '>9.0%')}"
            f"{_fmt(r.get('decode_of_ceiling_with_kv'), '>5.0%')}{_fmt(r.get('ttft_x'), '>7.2f')}x"
            f"{_fmt(r.get('decode_x'), '>7.2f')}x"
        )
    print(
        f"smolvlm --help: {results[0]['cli_help_s']:.2f} s; first load in this run (optimizes and fills "
        "the session cache when it is empty, see --clear-cache): "
        + ", ".join(
            f"{r.get('source') or r['backend']} {r['dtype']} {r['first_load_s']:.2f} s"
            for r in results
            if r.get("first_load_s")
        )
    )
    print(
        "GFLOP/s, GB/s: the machine's best just before/after the row; vis/floor: vision time / (tiles x "
        "FLOP per tile / GFLOP/s), 1.00 = at the floor; dec/ceil: decode tok/s / (GB/s / decoder bytes "
        "per token); +KV: the same ceiling with the KV cache's bytes added (past ~prompt + new/2); "
        + (f"x: ratio to {baseline} of the same dtype (>1: faster)" if baseline else "x: speed-up over torch fp32")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="model directory (onnx/ graphs, and the checkpoint for torch)")
    parser.add_argument("--image", help="image file (default: a generated 1024x768 photo-like JPEG)")
    parser.add_argument("--backend", default="onnx,torch", help="comma-separated: onnx, torch")
    parser.add_argument("--dtype", action="append", help="ONNX dtypes, comma-separated (default fp32,int8,q4)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-split", action="store_true", help="one tile per image")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per configuration")
    parser.add_argument("--torch-model", help="checkpoint directory for the torch backend (default MODEL_DIR)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--runs", type=int, default=1, help="generations per configuration (median reported)")
    parser.add_argument("--no-machine", action="store_true", help="skip the FLOP/s and GB/s measurement")
    parser.add_argument(
        "--clear-cache", action="store_true", help="delete the optimized-graph cache first (time a true first load)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for idle CPUs (shared machines)",
    )
    parser.add_argument(
        "--source",
        action="append",
        metavar="LABEL=[GRAPHS:]MODEL[@HF_HOME]",
        help="a graph source to compare (repeatable; replaces MODEL_DIR)",
    )
    parser.add_argument("--baseline", help="the source the x columns are ratios to (default: the first hub: one)")
    parser.add_argument("--graphs", default="auto", help=argparse.SUPPRESS)  # a worker's graph source
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--backend-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.backend = args.backend_one
        args.dtype = (args.dtype or ["default"])[0]
        args.model = args.model or ""
        workers = {"config": worker_config, "machine": worker_machine, "warm": worker_warm}
        result = workers[args.worker](args)
        print(json.dumps(result))
        return 0
    sources = []
    try:
        sources = [parse_source(spec) for spec in args.source or []]
    except ValueError as exc:
        return fail(str(exc))
    labels = [src["label"] for src in sources]
    if len(set(labels)) != len(labels):
        return fail("--source labels must differ")
    baseline = args.baseline or next((src["label"] for src in sources if src["graphs"] == "hub"), None)
    if baseline and baseline not in labels:
        return fail(f"--baseline {baseline}: no such --source", hint=f"labels: {', '.join(labels)}")
    if not sources and not args.model:
        return fail("MODEL_DIR (or --source) is required")
    model_dir = Path(args.model) if args.model else None
    if model_dir and not (model_dir / "config.json").is_file():
        return fail(f"{model_dir} is not a model directory (no config.json)")
    from smolvlm_cli.backends.onnx_session import default_threads

    threads = args.threads or default_threads()
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if set(backends) - {"onnx", "torch"}:
        return fail(f"unknown backend in {args.backend!r}", hint="choose from onnx, torch")
    dtypes = _dtype_list(args.dtype or ["fp32,int8,q4"])
    # a configuration: (backend, dtype, model, graphs, source label, extra environment)
    configs = []
    if "onnx" in backends:
        for src in sources or [{"label": None, "graphs": "auto", "model": str(model_dir), "hf_home": None}]:
            env = {"HF_HOME": src["hf_home"], "HF_HUB_OFFLINE": "1"} if src["hf_home"] else {}
            configs += [("onnx", d, src["model"], src["graphs"], src["label"], env) for d in dtypes]
    torch_dir = Path(args.torch_model) if args.torch_model else model_dir
    if "torch" in backends and torch_dir is not None:
        if any(torch_dir.glob("*.safetensors")):
            configs.append(("torch", "fp32", str(torch_dir), "auto", None, {}))
        else:
            log(f"(no *.safetensors in {torch_dir}: torch skipped; pass --torch-model)")

    with tempfile.TemporaryDirectory(prefix="smolvlm-bench-") as tmp:
        image = Path(args.image) if args.image else Path(tmp) / "photo_1024x768.jpg"
        if not args.image:
            photo(image)
        if not image.is_file():
            return fail(f"image {image} not found")
        # one graph cache for the run: a building source builds in its first load, not in its rows
        run_env = {"SMOLVLM_CACHE": str(Path(tmp) / "smolvlm-cache")}
        common = [
            "--threads",
            str(threads),
            "--new-tokens",
            str(args.new_tokens),
            "--image",
            str(image),
            "--prompt",
            args.prompt,
            "--runs",
            str(args.runs),
        ] + (["--no-split"] if args.no_split else [])
        machine_runs = []

        def measure_machine() -> None:
            if not args.no_machine:
                wait_idle(args.wait_idle)
                machine_runs.append(_run_worker("machine", ["--threads", str(threads)], 600))

        try:
            results, first_loads = [], {}
            if args.clear_cache:
                import shutil

                from smolvlm_cli.backends.onnx_session import CACHE_DIRNAME

                for model in dict.fromkeys(c[2] for c in configs if Path(c[2]).is_dir()):
                    shutil.rmtree(Path(model) / "onnx" / CACHE_DIRNAME, ignore_errors=True)
            for backend, dtype, model, graphs, label, env in configs:  # a first load fills the caches
                if backend == "onnx":
                    log(f"first load: {label or model} {dtype} ...")
                    first_loads[(label, dtype)] = _run_worker(
                        "warm",
                        [
                            model,
                            "--backend-one",
                            backend,
                            "--dtype",
                            dtype,
                            "--threads",
                            str(threads),
                            "--graphs",
                            graphs,
                        ],
                        3600,
                        {**run_env, **env},
                    )
            log(f"measuring the machine ({threads} threads) before each configuration and after the last")
            for backend, dtype, model, graphs, label, env in configs:
                measure_machine()
                wait_idle(args.wait_idle)
                log(f"running {label or backend} {dtype} ...")
                r = _run_worker(
                    "config",
                    [model, "--backend-one", backend, "--dtype", dtype, "--graphs", graphs, *common],
                    3600,
                    {**run_env, **env},
                )
                r["first_load_s"] = first_loads.get((label, dtype), {}).get("first_load_s")
                r["decoder_bytes"] = decoder_bytes(Path(r["graphs_dir"] or r["config_dir"]), backend, r["dtype"])
                r["model_dir"], r["source"], r["graphs"] = model, label, graphs
                results.append(r)
                log(
                    f"   TTFT {r['ttft_s']:.2f} s, vision {r['vision_s']:.2f} s, {r['decode_tok_s']:.1f} tok/s, "
                    f"peak {r['peak_rss_mb']:.0f} MB"
                )
            measure_machine()
            cli_help_s = help_seconds()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            return fail(str(exc))

    machine = {"isa": cpu_isa(), "threads": threads, "ort_version": "?", "matmul_gflops": None, "read_gbps": None}
    if machine_runs:
        machine = dict(machine_runs[0])
        machine["matmul_gflops"] = max(m["matmul_gflops"] for m in machine_runs)
        machine["read_gbps"] = max(m["read_gbps"] for m in machine_runs)
        machine["gflops_runs"] = "/".join(f"{m['matmul_gflops']:.0f}" for m in machine_runs)
        machine["gbps_runs"] = "/".join(f"{m['read_gbps']:.1f}" for m in machine_runs)
    flops_tile = vision_flops_per_tile(Path(results[0]["config_dir"]))
    torch_ref = next((r for r in results if r["backend"] == "torch"), None)
    for i, r in enumerate(results):
        r["threads"] = threads
        r["cli_help_s"] = cli_help_s
        r["vision_tflop"] = r["tiles"] * flops_tile / 1e12
        if machine_runs:
            # the machine's best in the measurements just before and after this configuration:
            # its speed drifts on a shared host, so compare like with like (and strictly)
            window = machine_runs[i : i + 2]
            gflops = max(m["matmul_gflops"] for m in window)
            gbps = max(m["read_gbps"] for m in window)
            floor = r["tiles"] * flops_tile / (gflops * 1e9)
            r["vision_floor_s"] = floor
            r["vision_x_floor"] = r["vision_s"] / floor if floor else None
            ceiling = gbps * 1e9 / r["decoder_bytes"]
            r["decode_ceiling_tok_s"] = ceiling
            r["decode_of_ceiling"] = r["decode_tok_s"] / ceiling
            # the same with the KV cache's bytes counted (what a step really has to read)
            kv = kv_bytes_per_step(Path(r["config_dir"]), r["prompt_tokens"], r["new_tokens"])
            r["kv_bytes"] = kv
            r["decode_of_ceiling_with_kv"] = r["decode_tok_s"] / (gbps * 1e9 / (r["decoder_bytes"] + kv))
            r["decode_of_ceiling_after_decode"] = r["decode_tok_s"] / (
                r["read_gbps_after_decode"] * 1e9 / r["decoder_bytes"]
            )
            r["matmul_gflops"], r["read_gbps"] = gflops, gbps
        if torch_ref is not None:
            r["ttft_speedup_vs_torch"] = torch_ref["ttft_s"] / r["ttft_s"]
            r["decode_speedup_vs_torch"] = (
                r["decode_tok_s"] / torch_ref["decode_tok_s"] if torch_ref["decode_tok_s"] else None
            )
        ref = (
            next((b for b in results if b["source"] == baseline and b["dtype"] == r["dtype"]), None)
            if baseline
            else torch_ref
        )
        if ref is not None:  # the x columns: >1 is faster than the reference row
            r["ttft_x"] = ref["ttft_s"] / r["ttft_s"]
            r["decode_x"] = r["decode_tok_s"] / ref["decode_tok_s"] if ref["decode_tok_s"] else None
            r["x_reference"] = f"{baseline} {r['dtype']}" if baseline else "torch fp32"
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        if machine.get("matmul_gflops"):
            print_table(results, machine, baseline)
        else:
            print_table(
                results,
                {
                    **machine,
                    "matmul_gflops": float("nan"),
                    "read_gbps": float("nan"),
                    "gflops_runs": "-",
                    "gbps_runs": "-",
                    "ort_version": "?",
                },
                baseline,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
