#!/usr/bin/env python
"""Throughput and latency of `smolvlm serve` at 1, 4 and 8 concurrent clients.

    python scripts/bench_server.py --model HuggingFaceTB/SmolVLM2-256M-Video-Instruct --dtype int8

Starts `smolvlm serve` (or uses --url), then sends the same set of requests (default 16: a
different 512x512 image each, one tile with `detail: low`, 64 tokens with `ignore_eos`, streamed)
at each concurrency level. Concurrency 1 is the same requests sent one after another, the
baseline the other levels are compared with. For each level it prints requests/min, generated
tokens/s, p50/p95 time to first token and latency, the longest wait between two tokens of a
stream (what a newcomer's vision and prefill cost the running streams), and the server's mean
decoder batch (`GET /stats`). Results go to stdout as a Markdown table (and --json).

With random weights the model never stops early; `ignore_eos` makes every reply exactly
--max-tokens long anyway. The machine is shared? Run it when nothing else does (--wait-idle).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _script_common import fail, log


def images(count: int, size: int) -> list[str]:
    """`count` distinct photo-like PNG data URIs (distinct: no request hits the feature cache)."""
    import numpy as np
    from PIL import Image

    uris = []
    for i in range(count):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([x / size, y / size, (x + y) / (2 * size)], -1)
        pixels = base * rng.uniform(120, 230, 3) + rng.normal(0, 18, (size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return uris


def one_request(client, uri: str, prompt: str, max_tokens: int, headers: dict) -> dict:
    """A streamed request: time to first token, latency, tokens, the longest gap between tokens."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri, "detail": "low"}},
                    {"type": "text", "text": prompt},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    arrivals, usage = [], None
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    end = time.perf_counter()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {
        "ttft": (arrivals[0] if arrivals else end) - t0,
        "latency": end - t0,
        "tokens": usage["completion_tokens"] if usage else len(arrivals),
        "max_gap": max(gaps, default=0.0),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(url: str, uris: list[str], concurrency: int, max_tokens: int, headers: dict) -> dict:
    import httpx2

    stats0 = httpx2.get(f"{url}/stats", headers=headers).json()
    with httpx2.Client(base_url=url, timeout=3600, limits=httpx2.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(
                pool.map(
                    lambda i: one_request(client, uris[i], f"Describe image {i}.", max_tokens, headers),
                    range(len(uris)),
                )
            )
        wall = time.perf_counter() - t0
    stats1 = httpx2.get(f"{url}/stats", headers=headers).json()
    steps = stats1["steps"] - stats0["steps"]
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_min": round(60 * len(results) / wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(percentile([r["ttft"] for r in results], 0.5), 3),
        "ttft_p95_s": round(percentile([r["ttft"] for r in results], 0.95), 3),
        "latency_p50_s": round(percentile([r["latency"] for r in results], 0.5), 3),
        "latency_p95_s": round(percentile([r["latency"] for r in results], 0.95), 3),
        "longest_token_gap_s": round(max(r["max_gap"] for r in results), 3),
        "mean_batch": round((stats1["rows_stepped"] - stats0["rows_stepped"]) / steps, 2) if steps else 0.0,
    }


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "smolvlm_cli",
        "serve",
        "-m",
        args.model,
        "--port",
        str(port),
        "--max-batch",
        str(max(args.concurrency)),
        "--max-queue",
        str(args.requests),
        "--quiet",
    ]
    for flag, value in (("--dtype", args.dtype), ("--threads", args.threads)):
        if value is not None:
            command += [flag, str(value)]
    log(f"starting: {' '.join(command)}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    import httpx2

    deadline = time.monotonic() + args.start_timeout
    while True:
        try:
            if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx2.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.3)


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| clients | req/min | tokens/s | speed-up | TTFT p50 / p95 s | latency p50 / p95 s | "
        "longest token gap s | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = r["requests_per_min"] / base["requests_per_min"] if base["requests_per_min"] else 0
        lines.append(
            f"| {r['concurrency']}{' (sequential)' if r['concurrency'] == 1 else ''} | "
            f"{r['requests_per_min']} | {r['tokens_per_s']} | {speedup:.2f}x | {r['ttft_p50_s']} / "
            f"{r['ttft_p95_s']} | {r['latency_p50_s']} / {r['latency_p95_s']} | "
            f"{r['longest_token_gap_s']} | {r['mean_batch']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model for the server it starts (default: smolvlm's)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--url", default=None, help="use this running server instead (e.g. http://127.0.0.1:8080)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--concurrency", default="1,4,8", help="client counts, comma-separated (1 = sequential)")
    parser.add_argument("--requests", type=int, default=16, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    if args.concurrency[0] != 1:
        args.concurrency.insert(0, 1)  # the sequential baseline
    if args.model is None and args.url is None:
        from smolvlm_cli.hub import default_model

        args.model = default_model()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    process = None
    try:
        if args.url is None:
            process, url = start_server(args)
        else:
            url = args.url.rstrip("/")
        uris = images(args.requests, args.image_size)
        log("warm-up request")
        run_level(url, uris[:1], 1, min(8, args.max_tokens), headers)
        rows = []
        for concurrency in args.concurrency:
            log(f"{args.requests} requests, {concurrency} at a time")
            rows.append(run_level(url, uris, concurrency, args.max_tokens, headers))
            log(f"   {rows[-1]}")
    except (RuntimeError, OSError) as exc:
        return fail(str(exc))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
