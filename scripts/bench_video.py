"""Video: time to first token, decode-and-preprocess vs vision, peak RSS, through the real CLI.

    python scripts/bench_video.py MODEL_DIR [--seconds 60] [--size 1280x720] [--fps 30]
        [--max-frames default,8] [--new-tokens 32] [--runs 1] [--threads 2] [--dtype int8]

MODEL_DIR: e.g. the full-size 256M random checkpoint (`scripts/random_checkpoint.py`). A synthetic
clip (moving shapes and noise, H.264 via PyAV) of --seconds at --size and --fps is written to a
temporary folder. For each --max-frames setting ("default" = the model's video_sampling, 64
frames at 1 fps) `smolvlm describe CLIP --json` runs as a child process: its time to first token,
`preprocess_s` (decoding and resizing the frames, in a thread overlapped with the vision
encoder), `vision_s`, prefill and decode, and the child's peak RSS (wait4). Decoding and
resizing alone (no model) is timed in this process too, so the overlap shows. Prints a Markdown
table on stdout (best of --runs: other jobs on a shared machine only ever add time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_machine import wait_idle  # noqa: E402
from _script_common import log  # noqa: E402


def make_clip(path: Path, seconds: float, fps: int, width: int, height: int) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    from PIL import Image

    base = np.asarray(Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        for i in range(int(seconds * fps)):
            frame = base.copy()
            x = (i * 7) % (width - 200)
            y = (i * 3) % (height - 150)
            frame[y : y + 150, x : x + 200] = (255 - i % 256, i % 256, 128)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def run_describe(args: list[str]) -> tuple[dict, float]:
    """`smolvlm describe ... --json` in a child: its record and its peak RSS in MB."""
    process = subprocess.Popen(
        [sys.executable, "-m", "smolvlm_cli", "describe", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"smolvlm describe failed:\n{stderr.decode(errors='replace')}")
    return json.loads(stdout), usage.ru_maxrss / 1024


def decode_only(clip: Path, model: str, max_frames: int | None) -> tuple[float, int]:
    """Decoding and resizing the sampled frames alone: (seconds, frames)."""
    from smolvlm_cli.config import ModelConfig
    from smolvlm_cli.hub import CONFIG_FILES, resolve_model
    from smolvlm_cli.video.clip import open_video

    config = ModelConfig.from_dir(resolve_model(model, list(CONFIG_FILES)))
    t0 = time.perf_counter()
    video = open_video(clip, config, **({"max_frames": max_frames} if max_frames else {}))
    frames = sum(1 for _ in video.tiles(config))
    return time.perf_counter() - t0, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--max-frames", default="default,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--dtype", default="int8")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for idle CPUs",
    )
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    clip = work / "clip.mp4"
    log(f"writing a {args.seconds:g} s {width}x{height} {args.fps} fps clip ...")
    make_clip(clip, args.seconds, args.fps, width, height)
    common = ["-m", args.model, "-n", str(args.new_tokens), "--threads", args.threads, "--dtype", args.dtype]
    run_describe([str(clip), *common, "--max-frames", "1"])  # build or warm the graphs
    rows = []
    for setting in args.max_frames.split(","):
        limit = None if setting == "default" else int(setting)
        extra = [] if limit is None else ["--max-frames", str(limit)]
        wait_idle(args.wait_idle)
        alone_s, frames = decode_only(clip, args.model, limit)
        best = None
        for _ in range(args.runs):
            wait_idle(args.wait_idle)
            record, rss = run_describe([str(clip), *common, *extra])
            if best is None or record["timings"]["ttft_s"] < best[0]["timings"]["ttft_s"]:
                best = (record, rss)
        record, rss = best
        t = record["timings"]
        rows.append(
            (
                setting,
                frames,
                record["prompt_tokens"],
                t["ttft_s"],
                alone_s,
                t["preprocess_s"],
                t["vision_s"],
                t["prefill_s"],
                t["decode_tokens_per_s"],
                rss,
            )
        )
        log(
            f"{setting}: {frames} frames, ttft {t['ttft_s']:.2f} s, vision {t['vision_s']:.2f} s, "
            f"decode+resize {alone_s:.2f} s alone, peak RSS {rss:.0f} MB"
        )
    print(
        f"{args.seconds:g} s {width}x{height} {args.fps} fps clip, {args.dtype}, {args.threads} threads, "
        f"{args.new_tokens} new tokens\n"
    )
    print(
        "| --max-frames | frames | prompt tokens | time to first token | decode+resize alone | "
        "decode+resize (overlapped) | vision | prefill | tokens/s | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting, frames, tokens, ttft, alone, pre, vision, prefill, tps, rss in rows:
        print(
            f"| {setting} | {frames} | {tokens} | {ttft:.2f} s | {alone:.2f} s | {pre:.2f} s | {vision:.2f} s | "
            f"{prefill:.2f} s | {tps:.1f} | {rss:.0f} MB |"
        )


if __name__ == "__main__":
    main()
