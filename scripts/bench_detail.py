"""Time to first token and batch images/min at each `--detail` level, through the real CLI.

    python scripts/bench_detail.py MODEL_DIR [--size 451x300] [--new-tokens 64] [--runs 3]

`describe --json` gives the time to first token (the best of --runs: on a shared machine other
jobs only ever add time); `batch` over copies of the image gives images/min from its summary line
(the best of --batch-runs). Random-weight models never stop early, so every
caption is exactly --new-tokens long. Prints a Markdown table (the README's) on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from _bench_machine import wait_idle

LEVELS = ("low", "auto", "high")


def smolvlm(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "smolvlm_cli", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"smolvlm {' '.join(args)} failed:\n{result.stderr}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--size", default="451x300", help="image WxH (default: a thumbnail)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-runs", type=int, default=1)
    parser.add_argument("--images", default="low=24,auto=8,high=4", help="batch images per level")
    parser.add_argument("--threads", default="2")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for idle CPUs",
    )
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    counts = dict(part.split("=") for part in args.images.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-detail-"))
    rng = np.random.default_rng(0)
    image = work / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(image, quality=90)
    common = ["-m", args.model, "-n", str(args.new_tokens), "--threads", args.threads]
    smolvlm("describe", str(image), "--detail", "low", *common)  # warm the session cache
    rows = []
    for level in LEVELS:
        ttfts, tiles = [], 0
        for _ in range(args.runs):
            wait_idle(args.wait_idle)
            data = json.loads(smolvlm("describe", str(image), "--detail", level, "--json", *common).stdout)
            ttfts.append(data["timings"]["ttft_s"])
            tiles = data["image_tiles"]
        folder = work / level
        folder.mkdir()
        for i in range(int(counts[level])):
            (folder / f"{i:03}.jpg").write_bytes(image.read_bytes())
        rates = []
        for _ in range(args.batch_runs):
            wait_idle(args.wait_idle)
            stderr = smolvlm(
                "batch", str(folder), "--detail", level, "--overwrite", "-o", str(work / f"{level}.jsonl"), *common
            ).stderr
            rates.append(float(re.findall(r"([\d.]+) images/min", stderr)[-1]))
        rows.append((level, tiles, min(ttfts), max(rates)))
        print(
            f"{level}: {tiles} tiles, ttft {min(ttfts):.2f} s (median "
            f"{statistics.median(ttfts):.2f}), {max(rates):.1f} images/min",
            file=sys.stderr,
        )
    print(
        f"| `--detail` | tiles ({width}x{height}) | time to first token | batch images/min ({args.new_tokens} tokens) |"
    )
    print("|---|---|---|---|")
    for level, tiles, ttft, rate in rows:
        print(f"| `{level}` | {tiles} | {ttft:.1f} s | {rate:.1f} |")


if __name__ == "__main__":
    main()
