#!/usr/bin/env python
"""Time the graph builder and measure its peak memory, one fresh process per dtype.

    scripts/bench_build.py CHECKPOINT_DIR [--dtype fp32,int8] [--work-dir DIR] [--phases] [--json]

For each dtype, a fresh subprocess runs `build_graphs(CHECKPOINT_DIR, tmp, [(c, dtype) for all
three graphs])`, exactly the build the runtime's cache does, into a temporary folder under
--work-dir (default: the checkpoint's parent folder, so that big outputs stay off the repo and
/tmp), deleted afterwards. Reported per dtype: build seconds (the call alone, not the imports),
the process's peak RSS (`ru_maxrss`, which also counts the checkpoint's memory-mapped pages it
touched) with its peak anonymous and file-backed parts (sampled from /proc every 20 ms: the
anonymous part is what the build really allocates, file pages are reclaimable), `ru_maxrss` of
its children (onnxruntime's quantizers run in-process, so normally 0), and the graphs' sizes.
--phases also prints, per phase of the build (the fp32 layers of each graph, each quantization),
its seconds and the peak RSS inside it: where the time and the memory go.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402

GB = 2**30


# -- worker (a fresh process per dtype) -------------------------------------------------------------


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0])
    return out


class _Sampler:
    """Peak RSS (total, anonymous, file-backed), overall and per phase, sampled in a thread."""

    def __init__(self) -> None:
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.window = dict(self.peak)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        now = _status_kb()
        with self._lock:
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now.get(key, 0))
                self.window[key] = max(self.window[key], now.get(key, 0))

    def take_window(self) -> dict[str, int]:
        self.sample()
        with self._lock:
            window, self.window = self.window, {k: 0 for k in self.window}
        return window

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def worker(checkpoint: Path, out_dir: Path, dtype: str) -> dict:
    from smolvlm_cli.builder.build import build_graphs
    from smolvlm_cli.builder.layout import Progress, graph_bytes
    from smolvlm_cli.dtypes import COMPONENTS

    sampler = _Sampler()
    phases: list[dict] = []
    clock = [time.perf_counter()]

    class Recorder(Progress):
        # one phase per run of equal step labels ("vision layer" x 12 -> one phase)
        def step(self, description: str) -> None:
            now = time.perf_counter()
            window = sampler.take_window()
            label = description if not description.endswith(" layer") else description.replace(" layer", " fp32")
            if phases and phases[-1]["phase"] == label:
                phase = phases[-1]
            else:
                phase = {"phase": label, "seconds": 0.0, "steps": 0, "peak_rss_kb": 0, "peak_anon_kb": 0}
                phases.append(phase)
            phase["seconds"] += now - clock[0]
            phase["steps"] += 1
            phase["peak_rss_kb"] = max(phase["peak_rss_kb"], window["VmRSS"])
            phase["peak_anon_kb"] = max(phase["peak_anon_kb"], window["RssAnon"])
            clock[0] = now
            log(f"  {dtype}: {label} {phase['steps']} ({window['VmRSS'] / 2**20:.2f} GB)")

    started = time.perf_counter()
    sampler.take_window()
    clock[0] = started
    recorder = Recorder()
    paths = build_graphs(checkpoint, out_dir, [(c, dtype) for c in COMPONENTS], recorder)
    seconds = time.perf_counter() - started
    recorder.step("after the last step")  # the last graph's tail (final norm, lm_head, save)
    sampler.stop()
    return {
        "dtype": dtype,
        "build_s": seconds,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "peak_anon_kb": sampler.peak["RssAnon"],
        "peak_file_kb": sampler.peak["RssFile"],
        "sizes": {p.name: graph_bytes(p) for p in paths},
        "phases": phases,
    }


# -- parent -----------------------------------------------------------------------------------------


def run_one(checkpoint: Path, dtype: str, work_dir: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(dir=work_dir, prefix=f".bench-build-{dtype}-"))
    try:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(checkpoint), str(tmp / "onnx"), dtype],
            stdout=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the {dtype} build failed (exit {proc.returncode}): see its errors above")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - started
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table(checkpoint: Path, rows: list[dict], phases: bool) -> str:
    head = (
        f"{'dtype':<6} {'build s':>8} {'process s':>9} {'peak RSS GB':>11} {'anon GB':>8} {'file GB':>8} "
        f"{'children GB':>11} {'output GB':>9}"
    )
    lines = [f"checkpoint: {checkpoint}", head]
    for r in rows:
        lines.append(
            f"{r['dtype']:<6} {r['build_s']:>8.1f} {r['process_s']:>9.1f} {r['peak_rss_kb'] / 2**20:>11.2f} "
            f"{r['peak_anon_kb'] / 2**20:>8.2f} {r['peak_file_kb'] / 2**20:>8.2f} "
            f"{r['children_peak_rss_kb'] / 2**20:>11.2f} {sum(r['sizes'].values()) / GB:>9.3f}"
        )
    if phases:
        for r in rows:
            lines.append(f"\n{r['dtype']} phases: {'seconds':>8} {'peak RSS GB':>11} {'anon GB':>8}")
            for p in r["phases"]:
                lines.append(
                    f"  {p['phase']:<34} {p['seconds']:>8.1f} {p['peak_rss_kb'] / 2**20:>11.2f} "
                    f"{p['peak_anon_kb'] / 2**20:>8.2f}"
                )
            lines.append("  sizes: " + ", ".join(f"{n} {b / GB:.3f} GB" for n, b in r["sizes"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(Path(argv[1]), Path(argv[2]), argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (config.json + safetensors)")
    parser.add_argument("--dtype", default="fp32,int8", help="comma-separated dtypes (default fp32,int8)")
    parser.add_argument(
        "--work-dir", type=Path, help="where the temporary outputs go (default: the checkpoint's parent folder)"
    )
    parser.add_argument("--phases", action="store_true", help="also print time and peak RSS per phase")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)

    from smolvlm_cli.builder.weights import weight_files
    from smolvlm_cli.dtypes import EXPORT_DTYPES

    if not (args.checkpoint / "config.json").is_file():
        return fail(f"no config.json in {args.checkpoint}", hint="pass a SmolVLM checkpoint folder")
    if not weight_files(args.checkpoint):
        return fail(f"no *.safetensors weights in {args.checkpoint}")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in EXPORT_DTYPES]
    if bad or not dtypes:
        return fail(f"unknown dtype {', '.join(bad) or '(none)'}", hint=f"choose from {', '.join(EXPORT_DTYPES)}")
    work_dir = args.work_dir or args.checkpoint.resolve().parent
    if not work_dir.is_dir():
        return fail(f"--work-dir {work_dir} is not a directory")

    checkpoint = args.checkpoint.resolve()
    size = sum(p.stat().st_size for p in weight_files(checkpoint))
    log(
        f"building {', '.join(dtypes)} graphs of {checkpoint} ({size / GB:.2f} GB of safetensors), "
        f"one process each, on {os.cpu_count()} CPUs"
    )
    rows = []
    for dtype in dtypes:
        try:
            rows.append(run_one(checkpoint, dtype, work_dir))
        except (RuntimeError, ValueError, OSError) as exc:
            return fail(str(exc))
        log(f"{dtype}: {rows[-1]['build_s']:.1f} s, peak RSS {rows[-1]['peak_rss_kb'] / 2**20:.2f} GB")
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint), "weights_bytes": size, "rows": rows}, indent=2))
    else:
        print(_table(checkpoint, rows, args.phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
