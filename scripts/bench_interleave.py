#!/usr/bin/env python
"""What a newcomer's vision encoder costs the streams already running, per interleaving policy.

    python scripts/bench_interleave.py --model HuggingFaceTB/SmolVLM2-256M-Video-Instruct --dtype int8

One long text-only reply runs in the server's scheduler (`server/scheduler.py`, no HTTP) while
--newcomers requests with a square image each (17 tiles at the model's own tiling) are admitted.
For `tiles_per_turn` 1 (the server's policy: one tile, then one decoder step for the running
rows) and None (a newcomer's whole vision and prefill at once) it prints the running reply's
longest wait between two tokens and when each newcomer finished.
"""

from __future__ import annotations

import argparse
import threading
import time

from _script_common import log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--newcomers", type=int, default=3)
    parser.add_argument("--long-tokens", type=int, default=600)
    args = parser.parse_args()

    import io

    import numpy as np
    from PIL import Image

    from smolvlm_cli import SmolVLM
    from smolvlm_cli.options import GenerationOptions
    from smolvlm_cli.server.scheduler import Job, Scheduler

    vlm = SmolVLM.from_pretrained(args.model, dtype=args.dtype, threads=args.threads)

    def newcomers(first_seed: int) -> list:
        """Images no earlier run saw: the backend caches features by content across schedulers."""
        prepared = []
        for seed in range(first_seed, first_seed + args.newcomers):
            buffer = io.BytesIO()
            pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, "PNG")
            prepared.append(vlm.prepare([buffer.getvalue()], "Describe it."))
        return prepared

    long = vlm.prepare([], "Talk.")
    for run, policy in enumerate((1, None)):
        prepared = newcomers(1000 * run)
        scheduler = Scheduler(
            vlm, args.newcomers + 1, args.newcomers, feature_cache_tiles=0, tiles_per_turn=policy
        ).start()
        arrivals, finished, done = [], [], threading.Event()

        def on_long(kind, _value):
            if kind == "delta":
                arrivals.append(time.perf_counter())
            else:
                done.set()

        t0 = time.perf_counter()
        scheduler.submit(Job(long, GenerationOptions(max_new_tokens=args.long_tokens, ignore_eos=True), on_long))
        while not arrivals:
            time.sleep(0.001)
        for one in prepared:
            scheduler.submit(
                Job(
                    one,
                    GenerationOptions(max_new_tokens=20, ignore_eos=True),
                    lambda kind, _v: kind != "delta" and finished.append(time.perf_counter()),
                )
            )
        done.wait()
        scheduler.close()
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
        log(
            f"tiles_per_turn={policy}: the running reply's longest wait {gaps[-1] * 1000:.0f} ms "
            f"(median {gaps[len(gaps) // 2] * 1000:.1f} ms); newcomers finished after "
            f"{', '.join(f'{f - t0:.2f}' for f in sorted(finished))} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
