"""Output-side faults of `smolvlm batch`, as a user meets them: SIGINT / SIGTERM in the middle of
a run (once, and twice), an output folder that is not writable, a full disk.

After each: every finished result is kept whole, no file is torn or half-written, no temp file
is left, and running the same command again completes the rest, each image exactly once.

The full disk is real: a 12 KiB / 4 KiB tmpfs mounted in a private mount namespace
(`unshare -m`, as root). Where that is not allowed (not root), the same runs go through a
wrapper whose `os.write` fails with ENOSPC once the output folder holds as many bytes (the
writers write with `os.write`), and the test says which it used
(SMOLVLM_TEST_SIMULATE_ENOSPC=1 forces the wrapper).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_clean_error, permissions_enforced, run_cli, stderr_of, without_root_file_powers

pytestmark = pytest.mark.slow  # real CLI subprocesses: signals, ENOSPC, permissions

NAME = "SmolVLM2-256M-Video-Instruct"
LEDGER = ".smolvlm-batch.jsonl"


@pytest.fixture(scope="module")
def model_dir(tiny_onnx_dir):
    return tiny_onnx_dir(NAME)


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def batch_args(model_dir: Path, *args) -> list[str]:
    return ["batch", *map(os.fsdecode, args), "-m", os.fsdecode(model_dir), "--no-split"]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "smolvlm-tmp" in p.name]


def jsonl_records(path: Path) -> list[dict]:
    """Every line must be a whole record ending in a line break."""
    data = path.read_text()
    assert data == "" or data.endswith("\n"), f"torn last record in {path}: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def check_sidecars(out: Path, images: list[Path]) -> set[str]:
    """The sidecars in `out` are whole (a caption and one line break); their image stems."""
    done = set()
    for sidecar in out.glob("*.txt"):
        text = sidecar.read_text()
        assert text.endswith("\n") and text.strip(), f"half-written {sidecar}: {text!r}"
        done.add(sidecar.stem)
    assert done <= {p.stem for p in images}
    ledger = out / LEDGER
    if ledger.exists():
        for record in jsonl_records(ledger):
            assert record["error"] is None
    assert not temp_files(out)
    return done


# -- signals --------------------------------------------------------------------------------


def start(args: list[str]) -> subprocess.Popen:
    prefix, preexec = without_root_file_powers()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("SMOLVLM_DEBUG", None)
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "smolvlm_cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
    )


def signal_after_first_result(proc: subprocess.Popen, count, signals) -> tuple[int, str]:
    deadline = time.monotonic() + 90
    while count() < 1:
        assert proc.poll() is None, f"ended before any result: {proc.communicate()[1].decode()}"
        assert time.monotonic() < deadline, "no result within 90 s"
        time.sleep(0.005)
    for n, sig in enumerate(signals):
        if n:
            time.sleep(0.05)
        proc.send_signal(sig)
    if len(signals) > 1:  # a user who keeps pressing Ctrl-C: one every 3 ms until the exit
        while proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signals[-1])
            time.sleep(0.003)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode("utf-8", "backslashreplace")


@pytest.mark.parametrize(
    "fmt, signals, code",
    [
        ("txt", [signal.SIGINT], 130),
        ("jsonl", [signal.SIGTERM], 143),
        ("jsonl", [signal.SIGINT, signal.SIGINT], 130),
    ],
    ids=["sigint-sidecars", "sigterm-jsonl", "double-sigint-jsonl"],
)
def test_signal_mid_run_keeps_results_and_the_rerun_completes(model_dir, tmp_path, fmt, signals, code):
    images = make_images(tmp_path / "in", 10)
    out = tmp_path / "out"
    target = ["-d", out] if fmt == "txt" else ["-o", out / "captions.jsonl"]
    args = batch_args(model_dir, tmp_path / "in", *target, "-n", "6")
    if fmt == "txt":
        count = lambda: len(list(out.glob("*.txt"))) if out.exists() else 0  # noqa: E731
    else:

        def count() -> int:  # the folder may exist a moment before the file does
            try:
                return (out / "captions.jsonl").read_text().count("\n")
            except FileNotFoundError:
                return 0

    returncode, err = signal_after_first_result(start(args), count, signals)
    assert returncode == code, err
    assert "Traceback" not in err
    if len(signals) == 1:  # the first signal finishes the images in flight and says so
        assert "Stopped by " + signals[0].name in err and "run the same command again" in err
    if fmt == "txt":
        kept = check_sidecars(out, images)
    else:
        kept = {Path(r["path"]).stem for r in jsonl_records(out / "captions.jsonl")}
        assert not temp_files(out)
    assert 1 <= len(kept) < len(images), "the signal did not land mid-run"

    again = run_cli(*args)
    assert again.returncode == 0, stderr_of(again)
    assert f"{len(kept)} already done" in stderr_of(again)
    if fmt == "txt":
        assert check_sidecars(out, images) == {p.stem for p in images}
    else:
        records = jsonl_records(out / "captions.jsonl")
        assert sorted(Path(r["path"]).stem for r in records) == sorted(p.stem for p in images)
        assert all(r["error"] is None and r["caption"] for r in records)


# -- permissions ----------------------------------------------------------------------------


def test_output_folder_not_writable(model_dir, tmp_path):
    """A read-only --output-dir, a JSONL file in a read-only folder, sidecars beside images in a
    read-only folder: exit 1, the path and 'Permission denied', nothing written, no traceback.
    (The runs drop root's file-permission override, so this is real even as root.)"""
    if not permissions_enforced():
        pytest.skip("root without CAP_SETPCAP: a read-only folder cannot be made unwritable here")
    images = make_images(tmp_path / "in", 2)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for target in (["-d", locked], ["-d", locked / "sub"], ["-o", locked / "captions.jsonl"]):
        result = run_cli(*batch_args(model_dir, tmp_path / "in", *target, "-n", "2"))
        line = assert_clean_error(result, names=[locked], reason="permission denied")
        assert "Hint: check the permissions" in stderr_of(result), line
    assert list(locked.iterdir()) == []
    (tmp_path / "in").chmod(0o555)
    result = run_cli(*batch_args(model_dir, tmp_path / "in", "-n", "2"))
    assert_clean_error(result, names=[tmp_path / "in"], reason="permission denied")
    assert sorted((tmp_path / "in").iterdir()) == images


# -- a full disk ----------------------------------------------------------------------------

ENOSPC_WRAPPER = """\
import errno, os, sys
root, budget = os.path.realpath(sys.argv[1]), int(sys.argv[2])
sizes = {}  # bytes written per file; like tmpfs, every file takes whole 4 KiB pages
_write = os.write
def pages(n):
    return -(-n // 4096) * 4096
def write(fd, data):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if not path.startswith(root + os.sep):
        return _write(fd, data)
    other = sum(pages(size) for name, size in sizes.items() if name != path)
    room = budget - other - sizes.get(path, 0)
    if room <= 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    n = _write(fd, bytes(data)[:room])
    sizes[path] = sizes.get(path, 0) + n
    return n
os.write = write
sys.argv = ["smolvlm", *sys.argv[3:]]
from smolvlm_cli.cli.main import main
main()
"""


def _tmpfs_works(probe: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or os.environ.get("SMOLVLM_TEST_SIMULATE_ENOSPC"):
        return False
    probe.mkdir(exist_ok=True)
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs '{probe}'"], capture_output=True
    )
    return done.returncode == 0


def run_on_full_disk(out: Path, kib: int, args: list[str], snapshot: Path):
    """Run the CLI with `out` on a disk of `kib` KiB; copy what it left in `out` to `snapshot`.
    Returns (result, how)."""
    snapshot.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("SMOLVLM_DEBUG", None)
    if _tmpfs_works(out.parent / "probe"):
        script = (
            'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; out="$2"; snap="$3"; '
            'shift 3; "$@"; rc=$?; cp -a "$out"/. "$snap"/; exit $rc'
        )
        result = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                script,
                "sh",
                str(kib),
                str(out),
                str(snapshot),
                sys.executable,
                "-m",
                "smolvlm_cli",
                *args,
            ],
            capture_output=True,
            env=env,
            timeout=120,
        )
        assert result.returncode != 99, stderr_of(result)
        return result, "tmpfs"
    result = subprocess.run(
        [sys.executable, "-c", ENOSPC_WRAPPER, str(out), str(kib * 1024), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    shutil.copytree(out, snapshot, dirs_exist_ok=True)
    return result, "simulated"


def test_disk_full_sidecars(model_dir, tmp_path):
    images = make_images(tmp_path / "in", 12)
    out, snap = tmp_path / "out", tmp_path / "snap"
    result, how = run_on_full_disk(out, 12, batch_args(model_dir, tmp_path / "in", "-d", out, "-n", "2"), snap)
    line = assert_clean_error(result, names=[out], reason="no space left on device")
    assert "free some disk space" in stderr_of(result), (how, line)
    kept = check_sidecars(snap, images)  # whole files only, no temp file left
    assert 1 <= len(kept) < len(images), (how, kept)
    again = run_cli(*batch_args(model_dir, tmp_path / "in", "-d", snap, "-n", "2"))
    assert again.returncode == 0, stderr_of(again)
    assert f"{len(kept)} already done" in stderr_of(again)
    assert check_sidecars(snap, images) == {p.stem for p in images}


def test_disk_full_jsonl(model_dir, tmp_path):
    images = make_images(tmp_path / "in", 16)
    out, snap = tmp_path / "out", tmp_path / "snap"
    args = batch_args(model_dir, tmp_path / "in", "-o", out / "captions.jsonl", "-n", "2")
    result, how = run_on_full_disk(out, 4, args, snap)
    line = assert_clean_error(result, reason="no space left on device")
    assert "free some disk space" in stderr_of(result), (how, line)
    data = (snap / "captions.jsonl").read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    kept = [json.loads(l) for l in whole.decode().splitlines()]
    assert 1 <= len(kept) < len(images) and all(r["caption"] for r in kept), how
    torn = data[len(whole) :]

    again = run_cli(*batch_args(model_dir, tmp_path / "in", "-o", snap / "captions.jsonl", "-n", "2"))
    assert again.returncode == 0, stderr_of(again)
    assert f"{len(kept)} already done" in stderr_of(again)
    records = jsonl_records(snap / "captions.jsonl")  # the torn tail, if any, is repaired
    assert sorted(Path(r["path"]).name for r in records) == sorted(p.name for p in images)
    # the failed append was rolled back (nothing torn even before the re-run), the file named
    assert torn == b"", (how, torn)
    assert str(out / "captions.jsonl") in line, (how, line)
