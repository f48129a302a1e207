#!/usr/bin/env python
"""Images per minute: `smolvlm batch` on the local engine against `--engine ray` (1 and 2 workers).

    python scripts/bench_ray.py /work/models/smolvlm2-256m-random-onnx

Generates a folder of photo-like images (default 24, 640x480: one tile each with --no-split),
then captions all of them once per way, each in a fresh process, with the same model, dtype,
prompt and greedy settings, to JSONL:

- local:  the in-process engine (--batch-size 1, onnxruntime on every core);
- ray-1:  a local Ray started for the run, 1 actor with every core (--workers 1);
- ray-2:  2 actors with cores/2 threads each (--workers 2).

The CLI equivalent of ray-2 is `smolvlm batch DIR --no-split -n 32 -o out.jsonl --engine ray
--workers 2`. Three rates are reported: `wall` (everything: imports, Ray start, model loads),
`run` (the summary's images/min: after the driver's set-up; Ray's includes the actors starting
and loading the model) and `steady` (workers x 60 / the mean per-image `seconds` the records
hold: what a long job converges to once started, with every worker busy). Captions must be
equal across the ways (greedy decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _script_common import fail, log

WAYS = ("local", "ray-1", "ray-2")


def make_images(folder: Path, count: int, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, (x + y) / (width + height)], -1)
        pixels = base * rng.uniform(120, 230, 3) + rng.normal(0, 18, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{i:03d}.jpg", quality=90)


def run_one(way: str, args) -> dict:
    """One way, in this process: the summary, per-result times and the captions."""
    from smolvlm_cli.batch.progress import Reporter
    from smolvlm_cli.batch.runner import BatchConfig, run_batch
    from smolvlm_cli.options import GenerationOptions, Tiling

    t0 = time.perf_counter()
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    config = BatchConfig([args.folder], prompt=args.prompt, fmt="jsonl", output=args.out)
    reporter = Reporter(quiet=True)
    workers = 1 if way == "local" else int(way.split("-")[1])
    if way == "local":
        from smolvlm_cli.batch.local import LocalEngine
        from smolvlm_cli.model import SmolVLM

        def engine():
            vlm = SmolVLM.from_pretrained(args.model, dtype=args.dtype, threads=args.threads)
            return LocalEngine(vlm, options, model_name=args.model, tiling=Tiling(split=False))

        summary = run_batch(config, engine, reporter=reporter)
    else:
        from smolvlm_cli.batch.ray_engine import RaySettings, run_ray

        settings = RaySettings(
            args.model,
            options,
            dtype=args.dtype,
            tiling=Tiling(split=False),
            workers=workers,
            threads_per_worker=args.threads,
        )
        summary = run_ray(config, settings, reporter=reporter)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    n = len(records)
    seconds = [r["seconds"] for r in records if r["error"] is None]
    steady = 60 * workers * len(seconds) / sum(seconds) if seconds and sum(seconds) else 0.0
    return {
        "way": way,
        "images": n,
        "failed": summary.failed,
        "wall_s": round(wall, 2),
        "wall_per_min": round(60 * n / wall, 2),
        "run_per_min": round(summary.images_per_min, 2),
        "steady_per_min": round(steady, 2),
        "load_s": round(summary.load_s, 2),
        "captions": {Path(r["path"]).name: r["caption"] for r in records},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model",
        nargs="?",
        default=os.environ.get("SMOLVLM_MODEL", "/work/models/smolvlm2-256m-random-onnx"),
        help="a model folder (or Hub id)",
    )
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="Describe this image in one sentence.")
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime threads (local) / per worker (ray); default: all cores / cores divided among the workers",
    )
    parser.add_argument("--ways", default=",".join(WAYS), help=f"a subset of {','.join(WAYS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per way (the best is kept)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one way, print JSON
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if set(ways) - set(WAYS):
        return fail(f"unknown way(s) {', '.join(sorted(set(ways) - set(WAYS)))}", f"choose from {', '.join(WAYS)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    results: dict[str, dict] = {}
    try:
        make_images(work / "images", args.images, width, height)
        log(
            f"{args.images} images of {width}x{height}; model {args.model}; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} before"
        )
        for rep in range(args.repeat):
            for way in ways:
                out = work / f"{way}-{rep}.jsonl"
                cmd = [
                    sys.executable,
                    __file__,
                    args.model,
                    "--one",
                    way,
                    "--folder",
                    str(work / "images"),
                    "--out",
                    str(out),
                    "--max-new-tokens",
                    str(args.max_new_tokens),
                    "--prompt",
                    args.prompt,
                ]
                cmd += ["--dtype", args.dtype] if args.dtype else []
                cmd += ["--threads", str(args.threads)] if args.threads else []
                load = os.getloadavg()[0]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    return fail(f"{way} failed: {done.stderr.strip().splitlines()[-1:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["load_average_before"] = round(load, 2)
                log(
                    f"-- {way} (run {rep + 1}): {result['wall_s']:.1f} s wall, "
                    f"{result['wall_per_min']:.1f} / {result['run_per_min']:.1f} / "
                    f"{result['steady_per_min']:.1f} images/min (wall / run / steady), "
                    f"load average {load:.2f} before"
                )
                best = results.get(way)
                if best is None or result["wall_per_min"] > best["wall_per_min"]:
                    results[way] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = results[ways[0]]["captions"]
    same = {way: results[way]["captions"] == reference for way in ways[1:]}
    if args.json:
        print(
            json.dumps(
                {
                    "images": args.images,
                    "size": args.size,
                    "model": args.model,
                    "max_new_tokens": args.max_new_tokens,
                    "cpus": os.cpu_count(),
                    "results": {w: {k: v for k, v in r.items() if k != "captions"} for w, r in results.items()},
                    f"same_captions_as_{ways[0]}": same,
                },
                indent=2,
            )
        )
    else:
        print(f"{'way':<8}{'wall s':>8}{'wall/min':>10}{'run/min':>10}{'steady/min':>12}")
        for way, r in results.items():
            print(
                f"{way:<8}{r['wall_s']:>8.1f}{r['wall_per_min']:>10.1f}{r['run_per_min']:>10.1f}"
                f"{r['steady_per_min']:>12.1f}"
            )
        for way, equal in same.items():
            print(f"captions of {way} {'equal' if equal else 'DIFFER FROM'} {ways[0]}'s")
    return 0 if all(same.values()) and not any(r["failed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
