"""`smolvlm batch` runs with a fake model: formats, resume, bad files, batching, stopping, the CLI.

The fake has the `SmolVLM` surface the local engine uses (`prepare`, `stream_prepared`,
`generate_batch`) and answers from the decoded pixels, so a caption proves the image was read.
End-to-end runs of the real command on a tiny exported model are in test_batch_e2e.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from smolvlm_cli.batch.local import LocalEngine
from smolvlm_cli.batch.progress import Reporter
from smolvlm_cli.batch.resume import LEDGER_NAME
from smolvlm_cli.batch.runner import BatchConfig, StopFlag, run_batch
from smolvlm_cli.batch.templates import CaptionStyle
from smolvlm_cli.errors import SmolVLMError


class FakeStream:
    def __init__(self, text: str):
        self._text = text
        self.stats = SimpleNamespace(
            prompt_tokens=10, generated_tokens=len(text.split()), image_tiles=1, stop_reason="stop"
        )
        self.token_ids = []

    def text(self) -> str:
        return self._text


class FakeVLM:
    """Captions from the image's size and mean colour; records how it was called."""

    model_id = "fake/model"

    def __init__(self, fail_on: str | None = None, broken: bool = False):
        self.fail_on = fail_on
        self.broken = broken
        self.calls: list[int] = []  # batch sizes of the inference calls

    def prepare(self, images, prompt, tiling=None):
        image = images[0]
        mean = np.asarray(image).mean(axis=(0, 1)).round().astype(int).tolist()
        return SimpleNamespace(prompt=prompt, desc=f"{image.width}x{image.height} rgb{mean}")

    def _answer(self, prepared) -> str:
        if self.broken or (self.fail_on and self.fail_on in prepared.prompt):
            raise RuntimeError("inference blew up")
        return f"A {prepared.desc} picture. Asked: {prepared.prompt}"

    def stream_prepared(self, prepared, options=None):
        self.calls.append(1)
        return FakeStream(self._answer(prepared))

    def generate_batch(self, prepared, options=None):
        self.calls.append(len(prepared))
        texts = [self._answer(p) for p in prepared]
        return [SimpleNamespace(text=t, stats=FakeStream(t).stats, token_ids=[]) for t in texts]


class FakeManyVLM(FakeVLM):
    """Also has `generate_many` (continuous batching): `batch_size` images in flight, finishing
    in reverse order, so the engine has to put the records back in job order."""

    def __init__(self, *args, step_fails_once: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_fails_once = step_fails_once
        self.in_flight: list[int] = []

    def generate_many(self, prepared, options=None, *, batch_size, return_exceptions=False):
        items = iter(enumerate(prepared))
        while group := list(islice(items, batch_size)):
            self.in_flight.append(len(group))
            if self.step_fails_once:  # a shared decoder step failing: every row in flight is lost
                self.step_fails_once = False
                raise RuntimeError("step blew up")
            for index, item in reversed(group):
                try:
                    text = self._answer(item)
                except RuntimeError as exc:
                    if not return_exceptions:
                        raise
                    yield index, exc
                    continue
                yield index, SimpleNamespace(text=text, stats=FakeStream(text).stats, token_ids=[])


def make_images(folder: Path, n: int, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.{ext}"
        Image.new("RGB", (16 + i, 12 + i), (10 * i, 255 - 10 * i, 7 * i)).save(path)
        paths.append(path)
    return paths


def add_bad_files(folder: Path) -> dict[str, str]:
    """Bad files of every kind; name -> a word (or alternatives) of the expected error."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"hello, I am not a picture")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, "JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:200])
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    (folder / "huge.png").write_bytes(png_bomb(40000, 40000))
    return {
        "empty.jpg": "empty",
        "text.png": "not an image",
        "truncated.jpg": "truncat",
        "dangling.jpg": ("no such file", "broken symbolic link"),
        "huge.png": "too many pixels",
    }


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG file that claims a huge size (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )


def run(config: BatchConfig, vlm=None, *, batch_size=1, stop_after=None, stdin=None):
    vlm = vlm or FakeVLM()
    printed: list[str] = []
    engine = LocalEngine(vlm, None, model_name="fake/model", batch_size=batch_size, workers=2)
    if stop_after is not None:  # a SIGTERM after `stop_after` results
        real_run = engine.run

        def stopping_run(jobs, emit, should_stop):
            count = [0]

            def counting_emit(job, record):
                emit(job, record)
                count[0] += 1
                if count[0] == stop_after:
                    should_stop.signum = 15

            real_run(jobs, counting_emit, should_stop)

        engine.run = stopping_run
    summary = run_batch(config, lambda: engine, reporter=Reporter(quiet=True), stdin=stdin, out=printed.append)
    return summary, printed, vlm


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "photos", 4)
    make_images(tmp_path / "photos" / "sub", 2, "jpg")
    return tmp_path / "photos"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sidecars_with_prefix_and_templates(photos):
    config = BatchConfig(
        ["photos"], prompt="What is in {stem} from {parent}?", style=CaptionStyle(prefix="ohwx,", suffix="{filename}")
    )
    summary, printed, _ = run(config)
    assert (summary.done, summary.failed, summary.exit_code) == (6, 0, 0)
    caption = (photos / "sub" / "img01.txt").read_text()
    assert caption.startswith("ohwx, A 17x13 rgb[")  # the pixels were decoded
    assert caption.endswith("Asked: What is in img01 from sub? img01.jpg\n")
    assert printed == []  # sidecars: nothing on stdout
    assert sorted(p.name for p in photos.iterdir() if p.suffix == ".txt") == [f"img{i:02d}.txt" for i in range(4)]


def test_jsonl_record_fields(photos):
    summary, _, _ = run(BatchConfig(["photos"], fmt="jsonl", output="out.jsonl"))
    records = read_jsonl(Path("out.jsonl"))
    assert [r["path"] for r in records] == [os.path.join("photos", f"img{i:02d}.png") for i in range(4)] + [
        os.path.join("photos", "sub", f"img{i:02d}.jpg") for i in range(2)
    ]
    first = records[0]
    assert set(first) >= {"path", "caption", "model", "prompt", "prompt_tokens", "generated_tokens", "seconds", "error"}
    assert first["error"] is None and first["model"] == "fake/model"
    assert first["caption"].startswith("A 16x12") and first["prompt_tokens"] == 10


def test_csv_and_stdout(photos):
    run(BatchConfig(["photos"], fmt="csv", output="out.csv"))
    with open("out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["caption"].startswith("A 16x12") and rows[0]["error"] == ""
    summary, printed, _ = run(BatchConfig(["photos"], fmt="jsonl", output="-"))
    assert len(printed) == 6 and json.loads(printed[0])["caption"].startswith("A 16x12")


def test_output_dir_mirrors(photos, tmp_path):
    run(BatchConfig(["photos"], output_dir=tmp_path / "caps"))
    assert (tmp_path / "caps" / "img00.txt").is_file()
    assert (tmp_path / "caps" / "sub" / "img01.txt").is_file()
    assert (tmp_path / "caps" / "sub" / LEDGER_NAME).is_file()
    assert not list(photos.glob("*.txt"))


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
def test_bad_files_reported_and_run_goes_on(photos, fmt):
    expected = add_bad_files(photos)
    output = None if fmt == "txt" else f"out.{fmt}"
    summary, _, _ = run(BatchConfig(["photos"], fmt=fmt, output=output))
    assert (summary.done, summary.failed, summary.exit_code) == (6, 5, 1)
    if fmt == "jsonl":
        errors = {Path(r["path"]).name: r["error"] for r in read_jsonl(Path(output)) if r["error"]}
    elif fmt == "csv":
        with open(output, newline="") as f:
            errors = {Path(r["path"]).name: r["error"] for r in csv.DictReader(f) if r["error"]}
    else:
        errors = {e["image"]: e["error"] for e in read_jsonl(photos / LEDGER_NAME) if e["error"]}
        assert not (photos / "empty.txt").exists()
    assert errors.keys() == expected.keys()
    for name, words in expected.items():
        words = (words,) if isinstance(words, str) else words
        assert any(w in errors[name].lower() for w in words), (name, errors[name])

    # a re-run skips done images and earlier failures; --retry-errors tries only the failures
    again, _, vlm = run(BatchConfig(["photos"], fmt=fmt, output=output))
    assert (again.done, again.failed, again.skipped_done, again.skipped_failed) == (0, 0, 6, 5)
    assert again.exit_code == 1 and vlm.calls == []
    (photos / "empty.jpg").unlink()
    Image.new("RGB", (8, 8)).save(photos / "empty.jpg")  # fixed by the user
    retry, _, vlm = run(BatchConfig(["photos"], fmt=fmt, output=output, retry_errors=True))
    assert (retry.done, retry.failed, retry.skipped_done) == (1, 4, 6) and vlm.calls == [1]
    if fmt == "jsonl":  # superseded records compacted away: one record per image
        paths = [r["path"] for r in read_jsonl(Path(output))]
        assert len(paths) == len(set(paths)) == 11


def test_overwrite_redoes_everything(photos):
    run(BatchConfig(["photos"], fmt="jsonl", output="out.jsonl"))
    summary, _, vlm = run(BatchConfig(["photos"], fmt="jsonl", output="out.jsonl", overwrite=True, prompt="Again?"))
    assert summary.done == 6 and len(vlm.calls) == 6
    records = read_jsonl(Path("out.jsonl"))
    assert len(records) == 6 and all(r["prompt"] == "Again?" for r in records)


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_a_failed_redo_ends_as_a_failure_in_every_output(photos, fmt):
    """--overwrite with a new prompt, and the redo of two images fails: they end as failures,
    not as the old prompt's captions. Before, their old sidecars stayed while the ledger's last
    word was the failure, so the next runs took them for another tool's files: never retried,
    their prompt never checked. JSONL always dropped the superseded record; txt now does the
    same, and the two outputs answer the next runs alike."""
    output = "out.jsonl" if fmt == "jsonl" else None
    run(BatchConfig(["photos"], fmt=fmt, output=output, prompt="Old {stem}."))
    redo, _, _ = run(
        BatchConfig(["photos"], fmt=fmt, output=output, prompt="New {stem}.", overwrite=True),
        FakeVLM(fail_on="New img01"),
    )
    assert (redo.done, redo.failed) == (4, 2)  # photos/img01.png and photos/sub/img01.jpg
    if fmt == "txt":
        assert not (photos / "img01.txt").exists() and not (photos / "sub" / "img01.txt").exists()
        assert (photos / "img00.txt").read_text().endswith("Asked: New img00.\n")

    again, _, vlm = run(BatchConfig(["photos"], fmt=fmt, output=output, prompt="New {stem}."))
    assert (again.skipped_done, again.skipped_failed, again.exit_code) == (4, 2, 1) and vlm.calls == []
    retry, _, _ = run(BatchConfig(["photos"], fmt=fmt, output=output, prompt="New {stem}.", retry_errors=True))
    assert (retry.done, retry.failed, retry.skipped_done) == (2, 0, 4)
    if fmt == "txt":
        assert (photos / "sub" / "img01.txt").read_text().endswith("Asked: New img01.\n")
    else:
        assert [r["prompt"] for r in read_jsonl(Path(output))] == [
            f"New {p.stem}." for p in sorted(photos.rglob("*.*"))
        ]


def test_a_folder_named_like_a_caption_is_a_failure_not_a_caption(photos):
    (photos / "img02.txt").mkdir()  # in the way: no caption can be written there
    summary, _, _ = run(BatchConfig(["photos"]))
    assert (summary.done, summary.failed) == (5, 1)
    again, _, _ = run(BatchConfig(["photos"]))  # never counted as done: it fails again, saying why
    assert (again.done, again.failed, again.skipped_done) == (0, 1, 5)
    (photos / "img02.txt").rmdir()
    fixed, _, _ = run(BatchConfig(["photos"]))
    assert (fixed.done, fixed.skipped_done) == (1, 5) and (photos / "img02.txt").is_file()


@pytest.mark.parametrize("change", ["deleted", "added"])
def test_a_caption_stays_with_its_image_when_stems_collide(tmp_path, monkeypatch, change):
    """`photo.jpg` and `photo.png` share a stem: the first in order gets `photo.txt`. Names used
    to follow that order alone, so deleting photo.jpg handed its photo.txt to photo.png (counted
    done, never captioned), and adding photo.bmp (sorted first) took the jpg's caption."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "t"
    folder.mkdir()
    for name, colour in (("photo.jpg", (200, 0, 0)), ("photo.png", (0, 200, 0))):
        Image.new("RGB", (20, 16), colour).save(folder / name)
    run(BatchConfig(["t"]))
    jpg_caption = (folder / "photo.txt").read_text()
    assert "rgb[2" in jpg_caption or "rgb[19" in jpg_caption  # the red one's
    if change == "deleted":
        (folder / "photo.jpg").unlink()
        summary, _, _ = run(BatchConfig(["t"]))
        assert (summary.done, summary.skipped_done) == (0, 1)  # photo.png keeps photo.png.txt
        assert (folder / "photo.png.txt").read_text() != jpg_caption
        with pytest.raises(SmolVLMError, match="another prompt"):  # its caption is known: checked
            run(BatchConfig(["t"], prompt="Another question?"))
    else:
        Image.new("RGB", (20, 16), (0, 0, 200)).save(folder / "photo.bmp")
        summary, _, _ = run(BatchConfig(["t"], extensions=(".jpg", ".png", ".bmp")))
        assert (summary.done, summary.skipped_done) == (1, 2)  # only the new one is captioned
        assert (folder / "photo.txt").read_text() == jpg_caption  # still the jpg's
        assert "rgb[0, 0, 2" in (folder / "photo.bmp.txt").read_text()
    ledger = [json.loads(line) for line in (folder / LEDGER_NAME).read_text().splitlines()]
    assert {e["image"]: e["output"] for e in ledger}["photo.png"] == "photo.png.txt"


def test_existing_sidecar_is_never_clobbered(photos):
    (photos / "img00.txt").write_text("my own caption\n")
    summary, _, _ = run(BatchConfig(["photos"]))
    assert summary.skipped_done == 1 and (photos / "img00.txt").read_text() == "my own caption\n"


def test_stdin_path_list(photos):
    listing = "photos/img02.png\nphotos/sub\nphotos/notes.md\n"
    summary, printed, _ = run(BatchConfig(["-"], fmt="jsonl"), stdin=io.StringIO(listing))
    assert [json.loads(line)["path"] for line in printed] == [
        os.path.join("photos", "img02.png"),
        os.path.join("photos", "sub", "img00.jpg"),
        os.path.join("photos", "sub", "img01.jpg"),
    ]


@pytest.mark.parametrize("batch_size", [2, 4])
def test_batched_equals_one_by_one(photos, batch_size):
    add_bad_files(photos)  # failures in the middle of batches
    run(BatchConfig(["photos"], fmt="jsonl", output="one.jsonl"))
    _, _, vlm = run(BatchConfig(["photos"], fmt="jsonl", output="many.jsonl"), batch_size=batch_size)
    assert max(vlm.calls) == batch_size

    def key(path):
        return sorted((r["path"], r["caption"], r["error"]) for r in read_jsonl(Path(path)))

    assert key("one.jsonl") == key("many.jsonl")


def test_inference_error_fails_only_its_image(photos):
    vlm = FakeVLM(fail_on="img01")
    summary, _, _ = run(BatchConfig(["photos"], prompt="{filename}", fmt="jsonl", output="o.jsonl"), vlm, batch_size=3)
    assert (summary.done, summary.failed) == (4, 2)  # photos/img01.png and photos/sub/img01.jpg
    errors = [r for r in read_jsonl(Path("o.jsonl")) if r["error"]]
    assert all("inference blew up" in r["error"] for r in errors)


def test_inputs_that_do_not_fit_never_stop_the_run(photos):
    """Three images whose own prompt cannot run (here: too long for the context) at the start
    of a run were taken for a broken model, and the run stopped before the images that fit."""
    from smolvlm_cli.errors import InputError

    class TooLong(FakeVLM):
        def _answer(self, prepared):
            if prepared.prompt in ("img00", "img01", "img02"):
                raise InputError(f"the prompt {prepared.prompt} needs more than the context")
            return super()._answer(prepared)

    summary, _, _ = run(BatchConfig(["photos"], prompt="{stem}", fmt="jsonl", output="o.jsonl"), TooLong())
    assert (summary.done, summary.failed) == (1, 5)  # photos/img03.png done; sub/img00, img01 too long
    errors = [r["error"] for r in read_jsonl(Path("o.jsonl")) if r["error"]]
    assert len(errors) == 5 and all("needs more than the context" in e for e in errors)


def test_broken_model_stops_the_run(photos):
    with pytest.raises(RuntimeError, match="blew up"):
        run(BatchConfig(["photos"], fmt="jsonl", output="o.jsonl"), FakeVLM(broken=True))
    # the failures written before giving up are whole records
    assert all(r["error"] for r in read_jsonl(Path("o.jsonl")))


@pytest.mark.parametrize("batch_size", [2, 3])
def test_continuous_batching_keeps_job_order(photos, batch_size):
    add_bad_files(photos)
    run(BatchConfig(["photos"], fmt="jsonl", output="one.jsonl"))
    _, _, vlm = run(BatchConfig(["photos"], fmt="jsonl", output="many.jsonl"), FakeManyVLM(), batch_size=batch_size)
    assert max(vlm.in_flight) == batch_size and vlm.calls == []

    def key(path):
        return [(r["path"], r["caption"], r["error"]) for r in read_jsonl(Path(path))]

    assert key("one.jsonl") == key("many.jsonl")  # not sorted: the same order
    assert all(r["seconds"] > 0 for r in read_jsonl(Path("many.jsonl")) if not r["error"])


def test_continuous_batching_failures(photos):
    vlm = FakeManyVLM(fail_on="img01", step_fails_once=True)
    summary, _, _ = run(BatchConfig(["photos"], prompt="{filename}", fmt="jsonl", output="o.jsonl"), vlm, batch_size=3)
    assert (summary.done, summary.failed) == (4, 2)
    assert vlm.calls == [1, 1, 1]  # the images of the failed step, retried one by one
    with pytest.raises(RuntimeError, match="blew up"):
        run(
            BatchConfig(["photos"], fmt="jsonl", output="b.jsonl", overwrite=True),
            FakeManyVLM(broken=True),
            batch_size=2,
        )


def test_continuous_batching_stop_signal_finishes_in_flight(photos):
    summary, _, _ = run(
        BatchConfig(["photos"], fmt="jsonl", output="o.jsonl"), FakeManyVLM(), batch_size=3, stop_after=2
    )
    assert summary.signal == 15 and summary.exit_code == 143 and summary.done == 3  # 3 in flight
    summary, _, _ = run(BatchConfig(["photos"], fmt="jsonl", output="o.jsonl"), FakeManyVLM(), batch_size=3)
    assert (summary.done, summary.skipped_done) == (3, 3)
    paths = [r["path"] for r in read_jsonl(Path("o.jsonl"))]
    assert len(paths) == len(set(paths)) == 6


def test_stop_signal_finishes_in_flight_and_resumes(photos):
    summary, _, _ = run(BatchConfig(["photos"], fmt="jsonl", output="o.jsonl"), stop_after=2)
    assert summary.signal == 15 and summary.exit_code == 143 and summary.done == 2
    assert len(read_jsonl(Path("o.jsonl"))) == 2
    summary, _, _ = run(BatchConfig(["photos"], fmt="jsonl", output="o.jsonl"))
    assert (summary.done, summary.skipped_done, summary.exit_code) == (4, 2, 0)
    paths = [r["path"] for r in read_jsonl(Path("o.jsonl"))]
    assert len(paths) == len(set(paths)) == 6


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_rerun_from_another_folder_resumes(photos, tmp_path, monkeypatch, fmt):
    """Records keep paths as typed (`photos/a.png`); run again from the parent folder, naming
    the same images and output another way, the run still knows which images are done."""
    out = f"o.{fmt}"
    summary, _, _ = run(BatchConfig(["photos"], fmt=fmt, output=out), stop_after=2)
    assert summary.done == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = BatchConfig([str(Path("..") / "photos")], fmt=fmt, output=str(Path("..") / out))
    summary, _, _ = run(config)
    assert (summary.done, summary.skipped_done, summary.exit_code) == (4, 2, 0)
    summary, _, _ = run(config)  # both spellings of the records name the same images
    assert (summary.done, summary.skipped_done) == (0, 6)
    assert len((tmp_path / out).read_text().splitlines()) == 6 + (fmt == "csv")


def test_stop_flag_second_signal_interrupts():
    flag = StopFlag()
    flag._handle(2, None)
    assert flag() and flag.signum == 2
    with pytest.raises(KeyboardInterrupt):
        flag._handle(2, None)


def test_nothing_to_do_does_not_load_the_model(photos):
    run(BatchConfig(["photos"]))
    loads = []
    summary = run_batch(BatchConfig(["photos"]), lambda: loads.append(1), reporter=Reporter(quiet=True))
    assert loads == [] and summary.skipped_done == 6 and summary.exit_code == 0


def test_videos_left_out_for_want_of_pyav_are_counted(photos, monkeypatch):
    """Without the video extra, `batch folder/` skipped its videos without a word."""
    import io

    from smolvlm_cli.video import decode

    (photos / "clip.mp4").write_bytes(b"not decoded")
    (photos / "sub" / "b.MOV").write_bytes(b"not decoded")
    for available, warned in ((False, True), (True, False)):
        monkeypatch.setattr(decode, "av_available", lambda: available)
        said = io.StringIO()
        vlm = FakeVLM()
        engine = LocalEngine(vlm, None, model_name="fake/model", batch_size=1, workers=1)
        config = BatchConfig(["photos"], fmt="jsonl", output=f"o-{available}.jsonl")
        summary = run_batch(config, lambda: engine, reporter=Reporter(quiet=True, stream=said))
        assert summary.done == 6  # the images, as before
        assert ("Warning: 2 video file(s) left out: video needs PyAV" in said.getvalue()) is warned
    said = io.StringIO()
    run_batch(
        BatchConfig(["photos"], fmt="jsonl", output="o-ext.jsonl", extensions=("png",)),
        lambda: engine,
        reporter=Reporter(quiet=True, stream=said),
    )
    assert "video" not in said.getvalue()  # --ext png: a choice, not an accident


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmolVLMError, match="no images found"):
        run_batch(BatchConfig([str(tmp_path / "empty")]), lambda: None, reporter=Reporter(quiet=True))


# -- the command line, with the fake in place of the model ---------------------------------------


@pytest.fixture
def cli(monkeypatch, photos):
    from smolvlm_cli import model as model_module
    from smolvlm_cli.cli.main import app

    monkeypatch.setattr(model_module.SmolVLM, "from_pretrained", classmethod(lambda cls, *a, **k: FakeVLM()))
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, ["batch", *args], input=input)

    return invoke


def test_cli_formats_and_exit_codes(cli, photos):
    result = cli("photos", "-o", "-", "-q")
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 6
    add_bad_files(photos)
    result = cli("photos", "-o", "out.csv", "--prefix", "ohwx")
    assert result.exit_code == 1
    assert "5 failed" in result.stderr and "Error:" in result.stderr and result.stdout == ""
    with open("out.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["img00.png"]["caption"].startswith("ohwx A ") and rows["empty.jpg"]["error"]
    result = cli("-", "--ext", "png", "--exclude", "img03*", "-o", "-", input="photos\n")
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == [
        "huge.png",
        "img00.png",
        "img01.png",
        "img02.png",
        "text.png",
    ]


def test_cli_usage_errors(cli):
    assert cli("photos", "-o", "x.parquet").exit_code == 2
    assert cli("photos", "--format", "txt", "-o", "x.jsonl").exit_code == 2
    assert cli("photos", "--batch-size", "0").exit_code == 2


def test_progress_bar_on_a_terminal_leaves_stdout_to_results(capsys):
    from smolvlm_cli.batch.records import ImageRecord

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    reporter = Reporter(stream=err)
    reporter.start(2)
    print('{"path": "a.jpg"}')  # a result written while the bar is up
    reporter.advance(ImageRecord("a.jpg", caption="x"))
    reporter.advance(ImageRecord.failure("b.jpg", "cannot read image b.jpg: truncated"))
    reporter.stop()
    assert capsys.readouterr().out == '{"path": "a.jpg"}\n'
    assert "2/2" in err.getvalue() and "images/min" in err.getvalue()
    assert "Error: cannot read image b.jpg: truncated" in err.getvalue()
    assert Reporter(quiet=True, stream=Terminal()).interactive is False
