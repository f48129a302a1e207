"""`smolvlm batch --engine ray`: the Ray Data engine against the local one, on a tiny export.

One local Ray (2 CPUs) for the module. Each output kind is held to the local engine's once. The
JSONL, Parquet, stop and CLI runs use 2 actors; the runs that check what the driver or the
preprocessing tasks do (CSV on videos, sidecars, resume, retry, a load error) use one: an actor
process costs ~2 s of CPU to start, and their count changes nothing the driver or the tasks
do. The Ray runs are marked `ray` (`pytest -m "not ray"` skips them; CI runs them); the
manifest/Parquet-folder units and the missing-extra error need no Ray and always run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import all_cpus
from smolvlm_cli.batch.local import LocalEngine
from smolvlm_cli.batch.progress import Reporter
from smolvlm_cli.batch.records import FIELDS
from smolvlm_cli.batch.resume import LEDGER_NAME
from smolvlm_cli.batch.runner import BatchConfig, run_batch
from smolvlm_cli.batch.templates import CaptionStyle
from smolvlm_cli.errors import SmolVLMError
from smolvlm_cli.options import GenerationOptions, Tiling

pytestmark = pytest.mark.slow  # Ray clusters

MODEL = "SmolVLM2-256M-Video-Instruct"
OPTIONS = GenerationOptions(max_new_tokens=10)  # greedy
KEYS = tuple(f for f in FIELDS if f != "seconds")  # every field but the timing
ray_test = pytest.mark.ray


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    import ray

    with all_cpus():
        started = not ray.is_initialized()
        if started:
            ray.init(
                "local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                object_store_memory=300 * 2**20,
                # Ray kills an idle worker after 1 s when more processes than CPUs are alive
                # (the actors count), so each run would start new task workers (~2 s of CPU
                # each); the module's runs reuse them instead.
                _system_config={"idle_worker_killing_time_threshold_ms": 10 * 60_000},
            )
        yield ray
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx_dir) -> Path:
    return tiny_onnx_dir(MODEL, ("fp32",))


def make_photos(folder: Path, n: int = 6, bad: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (64 + 9 * i, 48 + 5 * i), (25 * i % 256, 90, 250 - 17 * i))
        image.paste((240 - 30 * i, 40, 60), (0, 0, 20 + i, 12))
        image.save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    if bad:
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "notes.png").write_text("not a picture")
        buffer = io.BytesIO()
        Image.new("RGB", (80, 60), (9, 99, 199)).save(buffer, "JPEG")
        (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:150])
        os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """6 images and 4 bad files (empty, text, truncated, dangling link); never written to."""
    return make_photos(tmp_path_factory.mktemp("ray-photos") / "photos")


def run_local(config: BatchConfig, model: Path, video_options: dict | None = None):
    from smolvlm_cli.model import SmolVLM

    def engine():
        vlm = SmolVLM.from_pretrained(str(model))
        return LocalEngine(
            vlm,
            OPTIONS,
            model_name=str(model),
            batch_size=1,
            workers=2,
            tiling=Tiling(split=False),
            video_options=video_options,
        )

    return run_batch(config, engine, reporter=Reporter(quiet=True))


def run_on_ray(config: BatchConfig, model: Path, **settings):
    from smolvlm_cli.batch.ray_engine import RaySettings, run_ray

    settings = {"workers": 2, "batch_size": 2, "tiling": Tiling(split=False), **settings}
    return run_ray(config, RaySettings(str(model), OPTIONS, **settings), reporter=Reporter(quiet=True))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def key(records) -> list[tuple]:
    return [tuple(str(r[k]) for k in KEYS) for r in records]


@pytest.fixture(scope="module")
def local_jsonl(photos, tiny_model, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    summary = run_local(BatchConfig([str(photos)], fmt="jsonl", output=str(out)), tiny_model)
    assert (summary.done, summary.failed) == (6, 4)
    return read_jsonl(out)


# -- the same outputs as the local engine -------------------------------------------------------


@ray_test
def test_jsonl_and_sidecars_equal_the_local_engine(ray_local, photos, tiny_model, local_jsonl, tmp_path):
    summary = run_on_ray(BatchConfig([str(photos)], fmt="jsonl", output=str(tmp_path / "r.jsonl")), tiny_model)
    assert (summary.done, summary.failed, summary.exit_code) == (6, 4, 1)  # the job went on
    assert summary.images_per_min > 0
    ray_records = read_jsonl(tmp_path / "r.jsonl")
    assert key(ray_records) == key(local_jsonl)  # same order, captions, errors, token counts
    errors = {Path(r["path"]).name: r["error"] for r in ray_records if r["error"]}
    assert errors.keys() == {"empty.jpg", "notes.png", "truncated.jpg", "dangling.jpg"}
    assert all(Path(r["path"]).name in r["error"] for r in ray_records if r["error"])

    run_local(BatchConfig([str(photos)], output_dir=tmp_path / "local-txt"), tiny_model)
    summary = run_on_ray(BatchConfig([str(photos)], output_dir=tmp_path / "ray-txt"), tiny_model, workers=1)
    assert (summary.done, summary.failed) == (6, 4)
    for local_txt in (tmp_path / "local-txt").glob("*.txt"):
        assert (tmp_path / "ray-txt" / local_txt.name).read_text() == local_txt.read_text()
    assert len(list((tmp_path / "ray-txt").glob("*.txt"))) == 6

    def ledger(folder):
        return sorted(
            (e["image"], e["output"], e["error"], e["generated_tokens"]) for e in read_jsonl(folder / LEDGER_NAME)
        )

    assert ledger(tmp_path / "ray-txt") == ledger(tmp_path / "local-txt")


@ray_test
def test_cli_engine_ray_end_to_end(ray_local, photos, tiny_model, local_jsonl):
    """The real command in a subprocess, joining the module's Ray with --ray-address as a driver
    on a cluster node does (test_user_trust starts a local Ray from the CLI): results alone on
    stdout."""
    cmd = [
        sys.executable,
        "-m",
        "smolvlm_cli",
        "batch",
        str(photos),
        "-m",
        str(tiny_model),
        "--no-split",
        "-n",
        str(OPTIONS.max_new_tokens),
        "-o",
        "-",
        "--engine",
        "ray",
        "--workers",
        "2",
        "-b",
        "2",
        "--ray-address",
        ray_local.get_runtime_context().gcs_address,
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "SMOLVLM_DEBUG": "0"},
    )
    assert result.returncode == 1, result.stderr  # some images failed
    assert key(json.loads(line) for line in result.stdout.splitlines()) == key(local_jsonl)
    assert "6 done, 0 skipped, 4 failed" in result.stderr
    assert result.stderr.count("Error: ") == 4


@ray_test
def test_videos_and_csv_equal_the_local_engine(ray_local, tiny_model, tmp_path):
    """Videos on Ray: probed, sampled and decoded in the preprocessing tasks (an actor reads no
    file), the same records as the local engine's, a bad video one failed record. The run
    writes CSV, one image a call (the first test covers JSONL and sidecars, two a call)."""
    pytest.importorskip("av")
    from smolvlm_cli.batch.discover import default_extensions
    from video_clips import make_clip

    folder = make_photos(tmp_path / "media", n=2, bad=False)
    make_clip(folder / "clip.mp4", seconds=2, fps=10, size=(48, 32))
    (folder / "notes.mp4").write_text("not a video")
    sampling = {"fps": 2.0, "max_frames": 3}  # 4 frames by the rate, 3 by the cap
    config = BatchConfig([str(folder)], fmt="csv", output=str(tmp_path / "local.csv"), extensions=default_extensions())
    assert run_local(config, tiny_model, sampling).done == 3
    local = read_csv(tmp_path / "local.csv")
    config = replace_config(config, output=str(tmp_path / "ray.csv"))
    summary = run_on_ray(config, tiny_model, video_options=sampling, workers=1, batch_size=1)  # tasks decode
    assert (summary.done, summary.failed) == (3, 1)
    records = read_csv(tmp_path / "ray.csv")
    assert key(records) == key(local) and len(records) == 4
    by_name = {Path(r["path"]).name: r for r in records}
    assert by_name["clip.mp4"]["image_tiles"] == "3" and by_name["clip.mp4"]["caption"]
    assert by_name["clip.mp4"]["prompt"] == "Describe this video in detail."
    assert "notes.mp4" in by_name["notes.mp4"]["error"]


# -- resume ------------------------------------------------------------------------------------


@ray_test
def test_stopped_then_killed_job_resumes_without_duplicates(
    ray_local, photos, tiny_model, local_jsonl, tmp_path, monkeypatch
):
    from smolvlm_cli.batch import ray_engine

    out = tmp_path / "r.jsonl"
    config = BatchConfig([str(photos)], fmt="jsonl", output=str(out))
    real_run = ray_engine.RayEngine.run

    def stopping_run(self, jobs, emit, should_stop):  # a SIGTERM after 2 results
        count = [0]

        def counting_emit(job, record):
            emit(job, record)
            count[0] += 1
            if count[0] == 2:
                should_stop.signum = 15

        real_run(self, jobs, counting_emit, should_stop)

    monkeypatch.setattr(ray_engine.RayEngine, "run", stopping_run)
    stopped = run_on_ray(config, tiny_model)
    monkeypatch.undo()
    kept = read_jsonl(out)
    assert stopped.signal == 15 and stopped.exit_code == 143
    assert 2 <= len(kept) < 10 and stopped.done + stopped.failed == len(kept)
    with open(out, "ab") as f:  # then a kill -9 in the middle of a record
        f.write(b'{"path": "' + str(photos).encode() + b"/img0")

    again = run_on_ray(config, tiny_model, workers=1)
    assert again.skipped == len(kept) and again.done + again.failed == 10 - len(kept)
    final = read_jsonl(out)
    assert len({r["path"] for r in final}) == len(final) == 10  # each image once, torn line gone
    assert sorted(key(final)) == sorted(key(local_jsonl))

    nothing = run_on_ray(config, tiny_model)  # all done: Ray is not even asked
    assert (nothing.done, nothing.skipped, nothing.load_s) == (0, 10, 0)


@ray_test
def test_sidecar_resume_skips_done_and_failed(ray_local, tiny_model, tmp_path):
    folder = make_photos(tmp_path / "photos", n=3, bad=False)
    (folder / "img00.txt").write_text("my own caption\n")  # never clobbered
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    first = run_on_ray(BatchConfig([str(folder)]), tiny_model, workers=1)
    assert (first.done, first.failed, first.skipped_done, first.exit_code) == (2, 1, 1, 1)
    assert (folder / "img00.txt").read_text() == "my own caption\n"
    again = run_on_ray(BatchConfig([str(folder)]), tiny_model, workers=1)
    assert (again.done, again.skipped_done, again.skipped_failed, again.exit_code) == (0, 3, 1, 1)


# -- Parquet and manifests -----------------------------------------------------------------------


@ray_test
def test_parquet_from_a_manifest_retry_and_compaction(
    ray_local, photos, tiny_model, local_jsonl, tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    shutil.copytree(photos, "in", symlinks=True)
    wanted = ["in/img01.png", "in/img04.jpg", "in/empty.jpg", "in/img00.jpg"]
    Path("list.jsonl").write_text(
        "".join(json.dumps({"path": p}) + "\n" for p in wanted[:2]) + "".join(json.dumps(p) + "\n" for p in wanted[2:])
    )
    style = CaptionStyle(prefix="ohwx,")
    config = BatchConfig([], fmt="parquet", output="out.parquet", style=style)
    summary = run_on_ray(config, tiny_model, manifest="list.jsonl")
    assert (summary.done, summary.failed, summary.exit_code) == (3, 1, 1)
    files = sorted(Path("out.parquet").glob("*.parquet"))
    assert files and all(f.name.startswith("smolvlm-") for f in files)
    table = pq.read_table("out.parquet")  # a folder of Ray's files is one table to pyarrow
    assert table.column_names == list(KEYS) + ["seconds"]
    got = {Path(r["path"]).name: r for r in table.to_pylist()}
    local = {Path(r["path"]).name: r for r in local_jsonl}
    assert sorted(got) == sorted(Path(p).name for p in wanted)
    for name, record in got.items():
        if local[name]["error"]:
            assert record["caption"] is None and record["error"] == local[name]["error"].replace(str(photos), "in")
        else:
            assert record["caption"] == style.apply(local[name]["caption"], name)
            assert record["generated_tokens"] == local[name]["generated_tokens"]

    Path("in/empty.jpg").unlink()
    Image.new("RGB", (30, 20), (1, 2, 3)).save("in/empty.jpg", "JPEG")  # fixed by the user
    retry = run_on_ray(replace_config(config, retry_errors=True), tiny_model, manifest="list.jsonl", workers=1)
    assert (retry.done, retry.failed, retry.skipped_done, retry.exit_code) == (1, 0, 3, 0)
    records = pq.read_table("out.parquet").to_pylist()  # the old failure was compacted away
    assert len(records) == 4 and all(r["error"] is None for r in records)


def replace_config(config: BatchConfig, **changes) -> BatchConfig:
    from dataclasses import replace

    return replace(config, **changes)


def test_manifests(tmp_path):
    from smolvlm_cli.batch.ray_io import read_manifest

    (tmp_path / "a.jsonl").write_text('{"path": "x/a.jpg", "caption": "old"}\n\n"b.png"\n')
    assert read_manifest(tmp_path / "a.jsonl") == ["x/a.jpg", "b.png"]
    (tmp_path / "url.jsonl").write_text('"https://example.com/a.jpg"\n')
    with pytest.raises(SmolVLMError, match="URL"):
        read_manifest(tmp_path / "url.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"file": "a.jpg"}\n')
    with pytest.raises(SmolVLMError, match="line 1"):
        read_manifest(tmp_path / "bad.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["c.jpg", None, "d.webp"]}), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet") == ["c.jpg", "d.webp"]
    pq.write_table(pa.table({"image": ["c.jpg"]}), tmp_path / "n.parquet")
    with pytest.raises(SmolVLMError, match="no 'path' column"):
        read_manifest(tmp_path / "n.parquet")


def test_parquet_folder_removes_torn_files_and_refuses_foreign_ones(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smolvlm_cli.batch.discover import ImageItem
    from smolvlm_cli.batch.ray_io import ParquetStore
    from smolvlm_cli.batch.resume import State, check_made_with

    folder = tmp_path / "out"
    folder.mkdir()
    pq.write_table(
        pa.table(
            {"path": [str(tmp_path / "a.jpg")], "error": [None], "caption": ["x"], "model": ["m"], "prompt": ["A"]}
        ),
        folder / "smolvlm-20250101T000000-000001-u-0-0.parquet",
    )
    (folder / "smolvlm-20250101T000000-000002-u-0-0.parquet").write_bytes(b"PAR1 torn")
    store = ParquetStore(folder)
    store.open()
    done = ImageItem(str(tmp_path / "a.jpg"), "a.jpg")
    assert store.state(done) is State.DONE
    # what made it is known: a re-run with another prompt is refused, as for JSONL and CSV
    assert store.made_with(done) == ("m", "A")
    with pytest.raises(SmolVLMError, match="another prompt"):
        check_made_with([done], store.made_with, "m", lambda item: "B")
    assert store.state(ImageItem(str(tmp_path / "b.jpg"), "b.jpg")) is State.NEW
    assert any("torn" in n for n in store.notices) and len(store.files()) == 1
    with pytest.raises(SmolVLMError, match="another smolvlm batch run"):
        ParquetStore(folder).open()  # locked while the first is open
    store.close()
    (folder / "theirs.parquet").write_bytes(b"junk")
    with pytest.raises(SmolVLMError, match="cannot read"):
        ParquetStore(folder).open()


@ray_test
def test_a_model_that_cannot_load_is_one_error(ray_local, tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "onnx" / "decoder_model_merged.onnx").write_bytes(b"not a graph")
    make_photos(tmp_path / "p", n=2, bad=False)
    with pytest.raises(
        SmolVLMError,
        match=r"^captioning failed on a Ray worker: cannot load "
        r".*decoder_model_merged\.onnx",
    ):
        run_on_ray(BatchConfig([str(tmp_path / "p")], fmt="jsonl", output=str(tmp_path / "o.jsonl")), broken, workers=1)


# -- without Ray --------------------------------------------------------------------------------


def test_remote_errors_read_from_ray_tracebacks():
    from smolvlm_cli.batch.ray_engine import remote_error

    text = (
        "\x1b[36mray::MapWorker(MapBatches(Captioner)).submit()\x1b[39m (pid=1, ip=x)\n"
        '  File "x.py", line 7, in __call__\n'
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf: [ONNXRuntimeError] bad\n"
        "The above exception was the direct cause of the following exception:\n"
        "smolvlm_cli.errors.ConfigError: cannot load decoder.onnx: bad\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
    )
    assert remote_error(text) == "cannot load decoder.onnx: bad"
    assert remote_error("x\nnumpy.core._exceptions.MemoryError: out of memory\n") == ("MemoryError: out of memory")
    assert remote_error("ray.exceptions.RayActorError: died\n") is None


def test_missing_extra_is_one_clear_error(monkeypatch, tmp_path):
    from smolvlm_cli.batch.ray_engine import RaySettings, RayUnavailableError, run_ray

    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    make_photos(tmp_path / "p", n=1, bad=False)
    with pytest.raises(RayUnavailableError) as caught:
        run_ray(BatchConfig([str(tmp_path / "p")]), RaySettings("some/model", OPTIONS), reporter=Reporter(quiet=True))
    assert caught.value.message == "the ray engine needs Ray"
    assert caught.value.hint == "pip install 'smolvlm-cli[ray]'"
    assert isinstance(caught.value, SmolVLMError)
    assert list((tmp_path / "p").iterdir()) == [tmp_path / "p" / "img00.jpg"]  # nothing written


def test_ray_client_addresses_are_refused_before_any_work(tmp_path, monkeypatch):
    from smolvlm_cli.batch.ray_engine import RaySettings, run_ray

    make_photos(tmp_path / "p", n=1, bad=False)
    with pytest.raises(SmolVLMError, match="Ray Client") as caught:
        run_ray(
            BatchConfig([str(tmp_path / "p")]),
            RaySettings("m", OPTIONS, address="ray://h:10001"),
            reporter=Reporter(quiet=True),
        )
    assert "ray job submit" in caught.value.hint
    assert list((tmp_path / "p").iterdir()) == [tmp_path / "p" / "img00.jpg"]
    monkeypatch.setenv("RAY_ADDRESS", "ray://h:10001")  # the same address from the environment
    with pytest.raises(SmolVLMError, match="Ray Client"):
        run_ray(BatchConfig([str(tmp_path / "p")]), RaySettings("m", OPTIONS), reporter=Reporter(quiet=True))


def test_importing_the_engine_does_not_import_ray():
    code = "import sys; import smolvlm_cli.batch.ray_engine, smolvlm_cli.batch.ray_io; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
