#!/usr/bin/env python
"""Images per minute: `smolvlm batch` (--batch-size 1 and 4) against a shell loop of `describe`.

    python scripts/bench_batch.py --model /work/models/smolvlm2-256m-random-onnx

Generates a folder of photo-like images (default 24, 640x480, one tile each with --no-split),
then times, wall clock, each way of captioning all of them with the same model, dtype, prompt
and greedy settings:

- loop:    `for f in dir/*.jpg; do smolvlm describe --no-split ... "$f"; done` (a model load per image)
- batch-1: `smolvlm batch dir --no-split ... --batch-size 1` (one load, preprocessing overlapped)
- batch-4: `smolvlm batch dir --no-split ... --batch-size 4` (any `batch-N` can be asked for)

and checks that the three give the same captions (greedy decoding; not with int8 decoders,
whose batched rows share a step's activation quantization). With random weights the
model rarely stops early, so every image costs about `--max-new-tokens` tokens in every way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _script_common import fail, log

WAYS = ("loop", "batch-1", "batch-4")


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, (x + y) / (width + height)], -1)
        pixels = base * rng.uniform(120, 230, 3) + rng.normal(0, 18, (height, width, 3))
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def launcher() -> list[str]:
    """The `smolvlm` console script next to this Python, else `python -m smolvlm_cli`."""
    script = Path(sys.executable).parent / "smolvlm"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "smolvlm_cli"]


def model_args(args) -> list[str]:
    out = ["-m", args.model, "--no-split", "-n", str(args.max_new_tokens), "-p", args.prompt]
    if args.dtype:
        out += ["--dtype", args.dtype]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def run_loop(args, images: list[Path], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    describe = " ".join(shlex.quote(a) for a in launcher() + ["describe", "-q", *model_args(args)])
    script = (
        f"for f in {shlex.quote(str(images[0].parent))}/*.jpg; do "
        f'{describe} "$f" > {shlex.quote(str(out_dir))}/"$(basename "$f")".txt || exit 1; done'
    )
    subprocess.run(["bash", "-c", script], check=True)
    return {p.name: (out_dir / f"{p.name}.txt").read_text().strip() for p in images}


def run_batch(args, images: list[Path], batch_size: int, out_file: Path) -> dict[str, str]:
    cmd = launcher() + [
        "batch",
        str(images[0].parent),
        "-q",
        "-o",
        str(out_file),
        "--batch-size",
        str(batch_size),
        *model_args(args),
    ]
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    failed = [r for r in records if r["error"]]
    if failed:
        raise RuntimeError(f"{len(failed)} image(s) failed, e.g. {failed[0]['error']}")
    return {Path(r["path"]).name: r["caption"].strip() for r in records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("SMOLVLM_MODEL", "/work/models/smolvlm2-256m-random-onnx"))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="Describe this image in one sentence.")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--ways", default=",".join(WAYS), help=f"comma-separated, among loop and batch-N (default {','.join(WAYS)})"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = {w for w in ways if w != "loop" and not re.fullmatch(r"batch-[1-9]\d*", w)}
    if unknown:
        return fail(f"unknown way(s) {', '.join(sorted(unknown))}", "choose from loop and batch-N")
    if not Path(args.model, "config.json").is_file() and not Path(args.model).exists():
        log(f"(model {args.model} is not a local folder: it will be resolved on the Hub)")
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    results, captions = {}, {}
    try:
        images = make_images(work / "images", args.images, width, height)
        log(f"{len(images)} images of {width}x{height} in {work / 'images'}; model {args.model}")
        for way in ways:
            log(f"-- {way} ...")
            t0 = time.perf_counter()
            if way == "loop":
                captions[way] = run_loop(args, images, work / "loop")
            else:
                captions[way] = run_batch(args, images, int(way.split("-")[1]), work / f"{way}.jsonl")
            seconds = time.perf_counter() - t0
            results[way] = {"seconds": round(seconds, 2), "images_per_min": round(60 * len(images) / seconds, 2)}
            log(f"   {seconds:.1f} s, {results[way]['images_per_min']:.1f} images/min")
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        return fail(str(exc))
    finally:
        if args.keep:
            log(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)

    reference = captions[ways[0]]
    same = {way: captions[way] == reference for way in ways[1:]}
    base = results.get("loop", {}).get("images_per_min")
    if args.json:
        print(
            json.dumps(
                {
                    "images": args.images,
                    "size": args.size,
                    "model": args.model,
                    "max_new_tokens": args.max_new_tokens,
                    "results": results,
                    "same_captions_as_" + ways[0]: same,
                },
                indent=2,
            )
        )
    else:
        print(f"{'way':<10}{'seconds':>10}{'images/min':>12}{'speed-up':>10}")
        for way, r in results.items():
            speedup = f"{r['images_per_min'] / base:.2f}x" if base else ""
            print(f"{way:<10}{r['seconds']:>10.1f}{r['images_per_min']:>12.1f}{speedup:>10}")
        for way, equal in same.items():
            print(f"captions of {way} {'equal' if equal else 'DIFFER FROM'} {ways[0]}'s")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
