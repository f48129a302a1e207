#!/usr/bin/env python
"""Where a caption's time goes, per ONNX operator: ONNX Runtime's profiler over one W1 caption.

    scripts/profile_ops.py MODEL_DIR [--dtype int8] [--threads 2] [--new-tokens 64] [--image IMG]
                           [--top 12] [--json]

Runs one caption through the public API (`SmolVLM.from_pretrained(...).stream(...)`, exactly
`--new-tokens` tokens) with ONNX Runtime's profiler on in every session, then prints, per graph
and phase (vision; the decoder's prefill; its decode steps), the wall time of the runs, the share
of it spent inside operators, and the operators (by type) that take the most, with their
kernel count per run. The share outside operators is the executor's own overhead (scheduling,
allocation, the Python call). Without `--image` the 1024x768 photo-like image of `bench.py`
is used (13 tiles: issue #18's W1). Profiling adds a little time per kernel; read shares, not
absolute speeds (`bench.py` measures those).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import _script_common  # noqa: F401 - import path
from _script_common import fail


def _phases(events: list[dict]) -> dict[str, list[tuple[float, list[dict]]]]:
    """Each `model_run` event (one session.run) with the operator events inside it."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    nodes = sorted(
        (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    out, i = [], 0
    for run in runs:
        end = run["ts"] + run["dur"]
        inside = []
        while i < len(nodes) and nodes[i]["ts"] < end:
            if nodes[i]["ts"] >= run["ts"]:
                inside.append(nodes[i])
            i += 1
        out.append((run["dur"] / 1e6, inside))
    return out


def _summary(label: str, runs: list[tuple[float, list[dict]]], top: int) -> dict:
    wall = sum(r[0] for r in runs)
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for _, nodes in runs:
        for n in nodes:
            entry = by_op[n.get("args", {}).get("op_name", "?")]
            entry[0] += n["dur"] / 1e6
            entry[1] += 1
    in_ops = sum(v[0] for v in by_op.values())
    ops = sorted(by_op.items(), key=lambda kv: -kv[1][0])
    return {
        "phase": label,
        "runs": len(runs),
        "wall_s": wall,
        "in_operators": in_ops / wall if wall else 0.0,
        "kernels_per_run": sum(v[1] for v in by_op.values()) / max(len(runs), 1),
        "ops": [
            {"op": op, "s": s, "share": s / wall if wall else 0.0, "per_run": n / max(len(runs), 1)}
            for op, (s, n) in ops[:top]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--dtype", default="int8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image", default=None)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from bench import photo  # the W1 image
    from smolvlm_cli import GenerationOptions, SmolVLM
    from smolvlm_cli.backends import onnx_session

    profile_dir = Path(tempfile.mkdtemp(prefix="smolvlm-profile-"))
    sessions: list[tuple[str, ort.InferenceSession]] = []
    plain_options, plain_session = onnx_session.session_options, ort.InferenceSession

    def profiled_options(*a, **kw):
        opts = plain_options(*a, **kw)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / "run")
        return opts

    def recorded_session(path, *a, **kw):
        session = plain_session(path, *a, **kw)
        sessions.append((Path(str(path)).name, session))
        return session

    onnx_session.session_options = profiled_options
    onnx_session.ort.InferenceSession = recorded_session
    try:
        vlm = SmolVLM.from_pretrained(args.model_dir, backend="onnx", dtype=args.dtype, threads=args.threads)
    except Exception as exc:  # noqa: BLE001 - a script: one line, not a traceback
        return fail(f"cannot load {args.model_dir}: {exc}")
    finally:
        onnx_session.ort.InferenceSession = plain_session
    image = args.image
    if image is None:
        image = profile_dir / "w1.jpg"
        photo(image)
    stream = vlm.stream(
        image,
        "Describe this image in detail.",
        options=GenerationOptions(max_new_tokens=args.new_tokens, ignore_eos=True),
    )
    text = "".join(stream)
    stats = stream.stats
    report = {
        "model": args.model_dir,
        "dtype": args.dtype,
        "threads": args.threads,
        "tiles": stats.image_tiles,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "ttft_s": stats.ttft_s,
        "decode_tokens_per_s": stats.decode_tokens_per_s,
        "phases": [],
    }
    for name, session in sessions:
        trace = json.loads(Path(session.end_profiling()).read_text())
        runs = _phases(trace)
        if not runs:
            continue
        if name.startswith("decoder"):
            report["phases"].append(_summary(f"{name} prefill", runs[:1], args.top))
            report["phases"].append(_summary(f"{name} decode", runs[1:], args.top))
        else:
            report["phases"].append(_summary(name, runs, args.top))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(
        f"{args.model_dir} {args.dtype}: {stats.image_tiles} tiles, {stats.prompt_tokens} prompt tokens, "
        f"{stats.generated_tokens} generated ({len(text)} chars); first token {stats.ttft_s:.2f} s, "
        f"decode {stats.decode_tokens_per_s:.1f} tok/s (profiled)"
    )
    for phase in report["phases"]:
        print(
            f"\n{phase['phase']}: {phase['runs']} run(s), {phase['wall_s']:.3f} s, "
            f"{phase['in_operators']:.0%} inside operators, {phase['kernels_per_run']:.0f} kernels/run"
        )
        for op in phase["ops"]:
            print(f"  {op['op']:<28} {op['s']:8.3f} s  {op['share']:6.1%}  {op['per_run']:6.1f}/run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
