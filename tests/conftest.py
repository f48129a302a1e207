"""Shared test fixtures. The real model files live in ../shared/fixtures (never copied here)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SMOLVLM_FIXTURES", REPO.parent / "shared" / "fixtures"))
MODEL_NAMES = ("SmolVLM2-256M-Video-Instruct", "SmolVLM2-500M-Video-Instruct", "SmolVLM-256M-Instruct")


def special_id(tokenizer, name: str) -> int | None:
    """The id of a named special token ("bos_token", "eos_token", ...) of our `Tokenizer`."""
    token = tokenizer.special_tokens.get(name)
    return None if token is None else tokenizer.token_to_id(token)


def special_ids(tokenizer) -> frozenset[int]:
    """The added tokens tokenizer.json flags special: the ids `skip_special_tokens` drops."""
    return frozenset(i for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special)


# -- broken copies of a model directory ------------------------------------------------------


def clone(src: Path, dst: Path) -> Path:
    """A copy of a model directory made of hard links (fast); `replace` writes a file anew, so
    the shared original is never modified."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return dst


def replace(path: Path, data: bytes | str | None) -> None:
    path.unlink()
    if data is not None:
        path.write_bytes(data.encode() if isinstance(data, str) else data)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    replace(path, json.dumps(data))


ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@contextlib.contextmanager
def all_cpus():
    """Every CPU of the run for this process and what it starts meanwhile (Ray's many processes
    crawl on one CPU: a run of test_batch_ray's takes 2.3 s on two, 5.5-9 s on one)."""
    if not ALL_CPUS:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALL_CPUS)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def _compile_the_package() -> None:
    """The package's bytecode, written once before the run. An editable install has none, and
    with PYTHONDONTWRITEBYTECODE set (as on the CI machines) every interpreter the suite starts
    (about 200 CLI subprocesses, the Ray workers, the pytest workers) would compile the modules
    it imports from source: 0.1-0.15 s of CPU each."""
    import compileall

    compileall.compile_dir(str(REPO / "src" / "smolvlm_cli"), quiet=1)


# glibc malloc settings: variable (read by a process's malloc at start), mallopt() parameter, value
_MALLOC_SETTINGS = (
    ("MALLOC_TRIM_THRESHOLD_", -1, 1 << 30),
    ("MALLOC_TOP_PAD_", -2, 64 << 20),
    ("MALLOC_MMAP_THRESHOLD_", -3, 32 << 20),
)


def _keep_freed_memory() -> None:
    """glibc's malloc hands freed memory back to the kernel early: blocks above its mmap
    threshold get mappings of their own, unmapped when freed, and the top of the heap is
    trimmed past 128 KB. So each new 2048-px image, 13-tile pixel array or float64 reference
    copy page-faults its memory in again, zeroed, and the tests make thousands of them (the
    kernel's share of the suite's CPU time was 55-69 of 385-444 s). Kept for reuse instead:
    blocks up to 32 MB come from the heap, which is trimmed past 1 GB only. On a mix of six test
    files (-n 2): 68.4 and 65.7 s before, 58.7 and 56.2 s after, system time 18.5 -> 7-10 s.
    This process gets the settings through mallopt(); the variables reach the pytest-xdist
    workers, CLI subprocesses and Ray workers. Speed only: no allocation behaves differently."""
    for name, _, value in _MALLOC_SETTINGS:
        os.environ.setdefault(name, str(value))
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    for name, param, _ in _MALLOC_SETTINGS:
        with contextlib.suppress(ValueError):
            mallopt(param, int(os.environ[name]))


def pytest_configure(config):
    """Each pytest-xdist worker gets CPUs of its own (as `taskset` would): ONNX Runtime sizes its
    thread pool from the affinity and torch's OpenMP does too, so N workers on N cores run one
    thread each instead of N spinning thread pools fighting over the same cores. CLI
    subprocesses and Ray workers inherit it."""
    _keep_freed_memory()
    if hasattr(config.option, "loadscopereorder"):  # xdist's --no-loadscope-reorder (see LONGEST_FIRST)
        config.option.loadscopereorder = False
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        _compile_the_package()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = ALL_CPUS
    index = int(worker[2:])
    mine = cpus[index::workers] if workers <= len(cpus) else [cpus[index % len(cpus)]]
    if mine:
        os.sched_setaffinity(0, mine)


# The modules that take longest in a full run (Ray's actors, exports, subprocesses, 2048-px
# reference comparisons), longest first. pytest-xdist hands whole files to the workers in
# collection order (pytest_configure turns off its own reordering, which puts files with many
# tests first and left these long ones for the end, one worker busy and the other idle).
LONGEST_FIRST = (
    "test_batch_ray.py",
    "test_export.py",
    "test_image_processing.py",
    "test_user_trust.py",
    "test_batch_decode.py",
    "test_builder.py",
    "test_graph_cache.py",
    "test_engine.py",
    "test_robustness_inputs.py",
    "test_robustness_outputs.py",
    "test_batch_e2e.py",
    "test_properties.py",
    "test_onnx_runtime_paths.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


# Model-building fixtures (tiny random checkpoints, their ONNX exports) live in model_fixtures.py.
from model_fixtures import *  # noqa: E402,F401,F403


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory):
    """Graphs the runtime builds go to a per-session cache, never the user's ~/.cache (the
    variable reaches the CLI subprocesses too)."""
    saved = os.environ.get("SMOLVLM_CACHE")
    os.environ["SMOLVLM_CACHE"] = str(tmp_path_factory.mktemp("smolvlm-cache"))
    yield
    if saved is None:
        os.environ.pop("SMOLVLM_CACHE", None)
    else:
        os.environ["SMOLVLM_CACHE"] = saved


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "config.json").is_file():
        raise RuntimeError(f"fixture {path} missing: ../shared/fixtures must sit beside the repo")
    return path


def fast_first(values, fast: int = 1) -> list:
    """Parameters of which the first `fast` stay in the fast loop (`pytest -m "not slow"`) and
    the rest are marked slow: the fast loop checks one model (or case) of each matrix, the full
    suite all of them. Test ids are unchanged."""
    return [v if i < fast else pytest.param(v, marks=pytest.mark.slow) for i, v in enumerate(values)]


@pytest.fixture(params=fast_first(MODEL_NAMES))
def model_files(request) -> Path:
    """A real model directory (config, tokenizer, processor files; no weights), one per fixture."""
    return fixture_dir(request.param)


# -- running as a process that obeys file permissions ---------------------------------------

_CAPS = ("dac_override", "dac_read_search")
_CAP_NUMBERS = {"dac_override": 1, "dac_read_search": 2}
_PR_CAPBSET_DROP = 24


@functools.lru_cache(maxsize=None)
def without_root_file_powers() -> tuple[list[str], object]:
    """(command prefix, preexec_fn) that run a child without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so that even root gets EACCES on a chmod-000 file.

    The capabilities are dropped from the bounding set before exec (util-linux's setpriv, else
    prctl in the child), so the exec'd interpreter never regains them; everything else (uid 0,
    the owner bits of root's own files) is as before. Not root: nothing to do, the permission
    bits already apply. Root without the right to drop them (no CAP_SETPCAP): ([], None), and
    `permissions_enforced()` says False.
    """
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv:
        prefix = [setpriv, "--bounding-set", ",".join(f"-{c}" for c in _CAPS), "--"]
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix, None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:  # pragma: no cover - only where util-linux's setpriv is missing
        for cap in _CAPS:
            if libc.prctl(_PR_CAPBSET_DROP, _CAP_NUMBERS[cap], 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"cannot drop CAP_{cap.upper()}")

    if subprocess.run(["true"], preexec_fn=drop, capture_output=True).returncode == 0:
        return [], drop
    return [], None


def permissions_enforced() -> bool:
    """Whether the CLI runs of `run_cli` get EACCES on a chmod-000 file."""
    prefix, preexec = without_root_file_powers()
    return os.geteuid() != 0 or bool(prefix) or preexec is not None


class Killed(BaseException):
    """A process dying at that point, for crash-order tests: raised from a patched write, it
    skips every `except Exception` after it, as a SIGKILL would."""


# -- running the CLI ------------------------------------------------------------------------


def run_cli(
    *args,
    input: bytes | str | None = b"",
    env: dict | None = None,
    timeout: float = 120,
    cwd: str | Path | None = None,
    python_code: str | None = None,
):
    """`python -m smolvlm_cli ARGS` as a user runs it: a real subprocess obeying file
    permissions even as root (see `without_root_file_powers`), stdin given (default empty),
    SMOLVLM_DEBUG unset unless `env` sets it, output captured as bytes. `python_code` runs
    `python -c CODE ARGS` instead (a wrapper around the CLI's `main`).

    For signals, pipes, exit codes and permissions; other CLI tests use `invoke_cli`."""
    prefix, preexec = without_root_file_powers()
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    if "SMOLVLM_DEBUG" not in (env or {}):
        full_env.pop("SMOLVLM_DEBUG", None)
    data = input.encode() if isinstance(input, str) else input
    command = ["-c", python_code] if python_code is not None else ["-m", "smolvlm_cli"]
    return subprocess.run(
        [*prefix, sys.executable, *command, *map(os.fsdecode, args)],
        input=data,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        preexec_fn=preexec,
        cwd=cwd,
    )


def invoke_cli(*args, input: bytes | str | None = None, env: dict | None = None):
    """`smolvlm ARGS` in this process: the CLI's `main` (its error lines and exit codes) under
    typer's CliRunner isolation. Returns `returncode`, `stdout` and `stderr` (bytes), as
    `run_cli` does, without a new interpreter and model load per call."""
    from typer.testing import CliRunner

    from smolvlm_cli.cli.main import main

    with CliRunner().isolation(input=input, env={"SMOLVLM_DEBUG": None, **(env or {})}) as (out, err, _):
        try:
            main([os.fsdecode(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - what the interpreter does with an uncaught error
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue(), err.getvalue()  # closed on leaving the isolation
    return SimpleNamespace(returncode=code, stdout=stdout, stderr=stderr)


def run_on_terminal(command: list[str], env: dict, timeout: float = 300) -> tuple[int, str, str]:
    """Run `command` with stderr a pseudo-terminal (where bars and spinners draw) and stdout a
    pipe: (exit code, stdout, everything drawn on the terminal)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=timeout)
    finally:
        os.close(master)
    return code, out, screen.decode(errors="replace")


def stderr_of(result) -> str:
    return result.stderr.decode("utf-8", "backslashreplace")


def stdout_of(result) -> str:
    return result.stdout.decode("utf-8", "backslashreplace")


def assert_clean_error(result, *, code: int = 1, names=(), reason: str = "") -> str:
    """Exit `code`, stdout empty, no traceback, and one `Error: ` line (the first line of
    stderr, or after a batch run's status lines) naming each of `names` and holding `reason`
    (case-insensitive). Returns that line."""
    err = stderr_of(result)
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{err}"
    assert "Traceback" not in err, err
    assert result.stdout == b"", stdout_of(result)
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    line = errors[0]
    for name in names:
        assert str(name) in line, f"{name!r} not in {line!r}"
    assert reason.lower() in line.lower(), f"{reason!r} not in {line!r}"
    return line
