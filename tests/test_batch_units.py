"""`smolvlm batch` building blocks without a model: discovery, templates, records, crash-safe
files, writers and resume state."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from conftest import Killed
from smolvlm_cli.batch.discover import PathFilter, discover, parse_extensions, read_path_list
from smolvlm_cli.batch.files import AppendLog, atomic_write, complete_records, repair_tail, sweep_temps, temp_path
from smolvlm_cli.batch.records import FIELDS, ImageRecord, csv_line
from smolvlm_cli.batch.resume import LEDGER_NAME, State, plan
from smolvlm_cli.batch.templates import CaptionStyle, render, unknown_fields
from smolvlm_cli.batch.writers import CsvWriter, JsonlWriter, SidecarWriter, safe_join
from smolvlm_cli.errors import SmolVLMError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(found) -> list[str]:
    return [item.rel for item in found.items]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "photos"
    for name in (
        "b.jpg",
        "A.PNG",
        "c.Tiff",
        "notes.txt",
        "x.heic",
        "y.AVIF",
        "sub/d.webp",
        "sub/deep/e.gif",
        ".hidden/h.jpg",
        "sub/.dot.jpg",
        "raw/r.jpg",
        "thumbs/t.jpg",
    ):
        touch(root / name)
    return root


# -- discovery ---------------------------------------------------------------------------------


def test_discover_recursive_sorted_filtered(tree):
    found = discover(["photos"])
    assert rels(found) == [
        "A.PNG",
        "b.jpg",
        "c.Tiff",
        "raw/r.jpg",
        "sub/d.webp",
        "sub/deep/e.gif",
        "thumbs/t.jpg",
        "y.AVIF",
    ]
    assert found.items[0].path == os.path.join("photos", "A.PNG")  # as the user spelled it
    assert rels(discover(["photos"], recursive=False)) == ["A.PNG", "b.jpg", "c.Tiff", "y.AVIF"]


def test_discover_extensions_and_globs(tree):
    assert rels(discover(["photos"], extensions=parse_extensions(["heic, .JPG"]))) == [
        "b.jpg",
        "raw/r.jpg",
        "thumbs/t.jpg",
        "x.heic",
    ]
    assert rels(discover(["photos"], include=["*.jpg", "*.png"])) == ["A.PNG", "b.jpg", "raw/r.jpg", "thumbs/t.jpg"]
    assert rels(discover(["photos"], exclude=["thumbs", "raw/**"])) == [
        "A.PNG",
        "b.jpg",
        "c.Tiff",
        "sub/d.webp",
        "sub/deep/e.gif",
        "y.AVIF",
    ]
    assert rels(discover(["photos"], include=["sub/**"])) == ["sub/d.webp", "sub/deep/e.gif"]
    assert rels(discover(["photos"], include=["**/e.gif"])) == ["sub/deep/e.gif"]
    f = PathFilter(include=["[ab].*"])
    assert f.accepts("a.jpg") and not f.accepts("c.jpg")


def test_discover_explicit_files_and_common_base(tree):
    found = discover(["photos/notes.txt", "photos/sub"])  # a named file is always taken
    assert rels(found) == ["notes.txt", "sub/d.webp", "sub/deep/e.gif"]
    assert found.base == str(tree)
    found = discover(["photos/sub", "photos/raw"])  # two folders: relative to their common parent
    assert rels(found) == ["raw/r.jpg", "sub/d.webp", "sub/deep/e.gif"]
    with pytest.raises(SmolVLMError, match="no such file"):
        discover(["photos/missing.jpg"])
    with pytest.raises(SmolVLMError, match="only once"):
        discover(["-", "-"], stdin=io.StringIO(""))


def test_discover_stdin_list(tree):
    listing = "photos/b.jpg\nphotos/notes.txt\r\n\nphotos/sub\nphotos/gone.jpg\nphotos/b.jpg\n"
    found = discover(["-"], stdin=io.StringIO(listing))
    # folders walked, non-images filtered, missing images kept (they fail later), duplicates once
    assert rels(found) == ["b.jpg", "gone.jpg", "sub/d.webp", "sub/deep/e.gif"]
    found = discover(["-"], stdin=io.StringIO("photos/b.jpg\0photos/A.PNG\0"), null=True)
    assert rels(found) == ["A.PNG", "b.jpg"]
    assert read_path_list(io.StringIO("a b.jpg\n\n c.jpg\n")) == ["a b.jpg", " c.jpg"]


def test_discover_symlinks_without_loops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "d/real/a.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d/real/loop")  # a cycle
    os.symlink(tmp_path / "d/real", tmp_path / "d/alias")  # the same folder twice
    os.symlink(tmp_path / "d/real/a.jpg", tmp_path / "d/link.jpg")  # a file link: its own image
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "d/broken.jpg")  # reported when read
    found = discover(["d"])
    assert rels(found) == ["alias/a.jpg", "broken.jpg", "link.jpg"]
    # a folder and one of its files through a link to it: one image, captioned once
    paths = [item.path for item in discover(["d/real", "d/alias/a.jpg"]).items]
    assert [p for p in paths if p.endswith("a.jpg")] == [os.path.join("d/real", "a.jpg")]


def test_discover_unreadable_folder_is_a_warning(tree, monkeypatch):
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover(["photos"])
    assert "sub/d.webp" not in rels(found) and "b.jpg" in rels(found)
    assert found.warnings == [f"cannot read folder {os.path.join('photos', 'sub')}: Permission denied"]


def test_discover_rel_never_escapes(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    touch(tmp_path / "elsewhere/x.jpg")
    found = discover(["-"], stdin=io.StringIO("../elsewhere/x.jpg\n"))
    assert rels(found) == ["x.jpg"] and ".." not in found.items[0].rel


# -- templates and caption style -----------------------------------------------------------------


def test_templates():
    path = os.path.join("trips", "rome", "day1.jpg")
    assert render("{filename} | {stem} | {parent}", path) == "day1.jpg | day1 | rome"
    assert render('JSON like {"a": 1} for {stem} {other}', path) == 'JSON like {"a": 1} for day1 {other}'
    assert unknown_fields("{stem} {fname} {}") == ["fname"]


def test_caption_style():
    assert CaptionStyle().apply("  A cat.\n", "x.jpg") == "A cat."
    assert CaptionStyle(prefix="ohwx,").apply("a cat", "x.jpg") == "ohwx, a cat"
    assert CaptionStyle(prefix="ohwx, ").apply("a cat", "x.jpg") == "ohwx, a cat"
    assert CaptionStyle(suffix=", {parent}").apply("a cat", "pets/x.jpg") == "a cat, pets"
    assert CaptionStyle(suffix="photo").apply("a cat", "x.jpg") == "a cat photo"
    assert CaptionStyle(single_line=True).apply("Line one.\n\nLine  two.", "x.jpg") == "Line one. Line two."


# -- records --------------------------------------------------------------------------------------


def test_record_json_and_csv_round_trip():
    record = ImageRecord(
        'a/b, "c".jpg',
        caption='He said "hi",\nthen left.\u2028',
        model="m",
        prompt="p",
        prompt_tokens=5,
        generated_tokens=7,
        image_tiles=1,
        stop_reason="stop",
        seconds=1.25,
    )
    assert "\n" not in record.to_json()
    assert ImageRecord.from_dict(json.loads(record.to_json())) == record
    line = csv_line(record.to_row())
    records, end = complete_records(line.encode(), "csv")
    assert len(records) == 1 and end == len(line.encode())
    import csv

    row = next(csv.reader(io.StringIO(line, newline="")))
    assert ImageRecord.from_row(list(FIELDS), row) == record
    failed = ImageRecord.failure("x.jpg", "bad file")
    assert not failed.ok and ImageRecord.from_row(list(FIELDS), failed.to_row()) == failed


# -- crash-safe files -----------------------------------------------------------------------------


def test_complete_records_finds_torn_tails():
    assert complete_records(b'{"a":1}\n{"b":2}\n{"c"', "jsonl") == ([b'{"a":1}\n', b'{"b":2}\n'], 16)
    data = b'h1,h2\r\nx,"multi\nline"\r\ny,"torn\nquot'
    records, end = complete_records(data, "csv")
    assert records == [b"h1,h2\r\n", b'x,"multi\nline"\r\n'] and data[end:] == b'y,"torn\nquot'


def test_repair_tail_truncates(tmp_path):
    path = touch(tmp_path / "r.jsonl", b'{"path": "a"}\n{"path": "b", "capt')
    records, torn = repair_tail(path)
    assert torn and records == [b'{"path": "a"}\n'] and path.read_bytes() == b'{"path": "a"}\n'
    assert repair_tail(path) == ([b'{"path": "a"}\n'], False)
    assert repair_tail(tmp_path / "missing.jsonl") == ([], False)


def test_atomic_write_and_sweep(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]
    stale = tmp_path / "sub" / ".b.txt.999999999.smolvlm-tmp"  # a dead process's temp file
    stale.write_bytes(b"half")
    live = tmp_path / "sub" / f".c.txt.{os.getppid()}.smolvlm-tmp"  # a live process's: kept
    live.write_bytes(b"busy")
    assert temp_path(target).name.endswith(f".{os.getpid()}.smolvlm-tmp")
    assert sweep_temps(tmp_path / "sub") == 1
    assert not stale.exists() and live.exists()


def test_append_log_lock(tmp_path):
    log = AppendLog(tmp_path / "out.jsonl").open()
    log.append(b"one\n")
    with pytest.raises(SmolVLMError, match="another smolvlm batch"):
        AppendLog(tmp_path / "out.jsonl").open()
    log.close()
    AppendLog(tmp_path / "out.jsonl").open().close()
    assert (tmp_path / "out.jsonl").read_bytes() == b"one\n"


# -- writers and resume state ---------------------------------------------------------------------


def ok(path: str, caption: str = "a caption") -> ImageRecord:
    return ImageRecord(path, caption=caption, model="m", prompt="p", generated_tokens=3)


def test_sidecars_next_to_images_and_ledger(tree):
    items = discover(["photos"]).items
    writer = SidecarWriter()
    writer.open(items)
    by_rel = {item.rel: item for item in items}
    assert writer.sidecars[by_rel["sub/d.webp"]] == Path("photos/sub/d.txt")
    writer.write(by_rel["b.jpg"], ok(by_rel["b.jpg"].path, "ohwx, a dog"))
    writer.write(by_rel["A.PNG"], ImageRecord.failure(by_rel["A.PNG"].path, "truncated"))
    writer.close()
    assert (tree / "b.txt").read_text() == "ohwx, a dog\n" and not (tree / "A.txt").exists()
    ledger = [json.loads(line) for line in (tree / LEDGER_NAME).read_text().splitlines()]
    assert [(e["image"], e["error"]) for e in ledger] == [("b.jpg", None), ("A.PNG", "truncated")]

    again = SidecarWriter()
    again.open(items)
    states = {item.rel: again.state(item) for item in items}
    assert states["b.jpg"] is State.DONE and states["A.PNG"] is State.FAILED
    assert states["c.Tiff"] is State.NEW
    assert [i.rel for i in plan(items, again.state).todo] == [
        "c.Tiff",
        "raw/r.jpg",
        "sub/d.webp",
        "sub/deep/e.gif",
        "thumbs/t.jpg",
        "y.AVIF",
    ]
    assert "A.PNG" in [i.rel for i in plan(items, again.state, retry_errors=True).todo]
    assert len(plan(items, again.state, overwrite=True).todo) == len(items)
    (tree / "b.txt").unlink()  # a deleted sidecar: the image is to do again
    assert again.state(by_rel["b.jpg"]) is State.NEW


@pytest.mark.parametrize("replacing", [False, True], ids=["first-caption", "overwrite"])
@pytest.mark.parametrize("dies_in", ["unlink", "ledger line", "sidecar"])
def test_a_run_killed_inside_a_sidecar_write_leaves_nothing_unknown(tree, monkeypatch, dies_in, replacing):
    """Killed at any step of writing a caption (a first one, or one replacing a caption made
    with another prompt, as --overwrite does): the next run either does the image again or
    knows which prompt made the caption on disk. Never a sidecar the ledger does not know (it
    would pass for another tool's file) or an old caption under the new prompt. The kill -9
    test of test_batch_e2e caught the first case."""
    from smolvlm_cli.batch import resume, writers

    items = discover(["photos"]).items
    item = next(i for i in items if i.rel == "b.jpg")
    made = {"old caption\n": ("m", "old"), "new caption\n": ("m", "new")}
    if replacing:
        first = SidecarWriter()
        first.open(items)
        first.write(item, ImageRecord(item.path, caption="old caption", model="m", prompt="old"))
        first.close()
    writer = SidecarWriter()
    writer.open(items)

    def die(*args, **kwargs):
        raise Killed

    target = {
        "unlink": (writers.os, "unlink"),
        "ledger line": (resume, "append_once"),
        "sidecar": (writers, "atomic_write"),
    }
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(*target[dies_in], die)
        writer.write(item, ImageRecord(item.path, caption="new caption", model="m", prompt="new"))
        raise Killed  # a step that did not run (nothing to unlink): killed just after

    again = SidecarWriter()
    again.open(items)
    if again.state(item) is State.DONE:
        assert again.made_with(item) == made[(tree / "b.txt").read_text()]
    else:
        assert again.state(item) is State.NEW and not (tree / "b.txt").exists()
        again.write(item, ImageRecord(item.path, caption="new caption", model="m", prompt="new"))
        again.close()
        ledger = [json.loads(line) for line in (tree / LEDGER_NAME).read_text().splitlines()]
        assert [e["image"] for e in ledger] == ["b.jpg"]  # one line per image after the re-run
        assert again.made_with(item) == ("m", "new") and (tree / "b.txt").read_text() == "new caption\n"


def test_sidecars_mirrored_and_collisions(tree, tmp_path):
    touch(tree / "b.png")  # same stem as b.jpg
    items = discover(["photos"]).items
    writer = SidecarWriter(tmp_path / "out")
    writer.open(items)
    names = {item.rel: str(writer.sidecars[item].relative_to(tmp_path / "out")) for item in items}
    assert names["b.jpg"] == "b.txt" and names["b.png"] == "b.png.txt"
    assert names["sub/deep/e.gif"] == os.path.join("sub", "deep", "e.txt")
    item = next(i for i in items if i.rel == "sub/deep/e.gif")
    writer.write(item, ok(item.path))
    assert (tmp_path / "out/sub/deep/e.txt").is_file()
    assert (tmp_path / "out/sub/deep" / LEDGER_NAME).is_file()
    assert not (tree / "sub/deep/e.txt").exists()
    # an explicitly named text file "image" must never be overwritten by its own caption
    writer = SidecarWriter()
    items = discover(["photos/notes.txt"]).items
    writer.open(items)
    assert writer.sidecars[items[0]] == Path("photos/notes.txt.txt")


@pytest.mark.parametrize("rel", ["../x", "/abs", "a/../../b", "a//b", ""])
def test_safe_join_refuses_escapes(tmp_path, rel):
    with pytest.raises(SmolVLMError):
        safe_join(tmp_path, rel)


@pytest.mark.parametrize("cls", [JsonlWriter, CsvWriter])
def test_record_file_resume_and_compaction(tree, tmp_path, cls):
    items = discover(["photos"]).items[:3]
    out = tmp_path / f"out.{cls.kind}"
    writer = cls(out)
    writer.open(items)
    writer.write(items[0], ok(items[0].path, 'first,\n"quoted"'))
    writer.write(items[1], ImageRecord.failure(items[1].path, "truncated"))
    writer.close()
    text = out.read_bytes().decode()
    if cls is CsvWriter:
        assert text.startswith(",".join(FIELDS) + "\r\n")

    retry = cls(out)
    retry.open(items)
    assert [retry.state(i) for i in items] == [State.DONE, State.FAILED, State.NEW]
    retry.write(items[1], ok(items[1].path, "now fine"))
    retry.write(items[2], ok(items[2].path, "third"))
    retry.close()  # the failure is superseded: compacted to one record per image, in place
    final = cls(out)
    final.open(items)
    assert [final.state(i) for i in items] == [State.DONE] * 3
    assert final.index.superseded == 0 and len(final.index.last) == 3
    final.close()
    if cls is JsonlWriter:
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["caption"] for r in records] == ['first,\n"quoted"', "now fine", "third"]


@pytest.mark.parametrize("cls", [JsonlWriter, CsvWriter])
def test_record_file_torn_tail_repaired_not_duplicated(tree, tmp_path, cls):
    items = discover(["photos"]).items[:2]
    out = tmp_path / f"out.{cls.kind}"
    writer = cls(out)
    writer.open(items)
    writer.write(items[0], ok(items[0].path))
    writer.close()
    whole = out.read_bytes()
    record = cls(None).format_record(ok(items[1].path, "a long caption\nwith a line break")).encode()
    out.write_bytes(whole + record[: len(record) // 2])  # killed mid-write
    again = cls(out)
    again.open(items)
    assert again.notices and "torn" in again.notices[0]
    assert out.read_bytes() == whole
    assert [again.state(i) for i in items] == [State.DONE, State.NEW]
    again.write(items[1], ok(items[1].path))
    again.close()
    paths = [r.path for r in _read(out, cls)]
    assert paths == [items[0].path, items[1].path]


def _read(path: Path, cls) -> list[ImageRecord]:
    records, _ = repair_tail(path, cls.kind)
    writer = cls(path)
    if cls is CsvWriter:
        records = records[1:]
    return [writer.parse_record(raw) for raw in records]


def test_foreign_files_are_refused_and_junk_lines_kept(tree, tmp_path):
    out = touch(tmp_path / "x.csv", b"path,text\r\na.jpg,hello\r\n")
    with pytest.raises(SmolVLMError, match="other columns"):
        CsvWriter(out).open([])
    # the refusal released the lock:
    AppendLog(out).open().close()
    out = touch(tmp_path / "x.jsonl", b'{"id": 1}\n{"id": 2}\n')
    with pytest.raises(SmolVLMError, match="does not look like"):
        JsonlWriter(out).open([])
    # a user's file given by mistake is refused untouched, torn-looking tail and all
    image = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(image, "PNG")
    for cls, data in (
        (JsonlWriter, image.getvalue()),
        (CsvWriter, image.getvalue()),
        (JsonlWriter, b"no newline at all"),
        (CsvWriter, b"a,b\r\n1,2\r\n3,"),
    ):
        victim = touch(tmp_path / "victim", data)
        with pytest.raises(SmolVLMError):
            cls(victim).open([])
        assert victim.read_bytes() == data
    # but a file holding only a torn first write of ours is repaired
    for cls, data in ((JsonlWriter, b'{"path": "photos/b.j'), (CsvWriter, b"path,capt")):
        torn = touch(tmp_path / f"torn.{cls.kind}", data)
        writer = cls(torn)
        writer.open([])
        writer.close()
        assert torn.read_bytes() == b"" and "torn" in writer.notices[0]
    items = discover(["photos"]).items[:1]
    junk = b"\x00\x00garbage\n"
    out = touch(tmp_path / "y.jsonl", (ok(items[0].path, "old").to_json() + "\n").encode() + junk)
    writer = JsonlWriter(out)
    writer.open(items)
    assert writer.index.unreadable == 1 and "unreadable" in writer.notices[0]
    writer.write(items[0], ok(items[0].path, "new"))
    writer.close()  # compacted: the superseded record goes, the junk line stays
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[1] == junk and json.loads(lines[0])["caption"] == "new" and len(lines) == 2


def test_stdout_writer_has_no_state(tree):
    items = discover(["photos"]).items[:1]
    lines = []
    writer = CsvWriter(None, out=lines.append)
    writer.open(items)
    assert writer.state(items[0]) is State.NEW
    writer.write(items[0], ok(items[0].path))
    writer.write(items[0], ok(items[0].path))
    writer.close()
    assert lines[0].startswith(",".join(FIELDS) + "\r\n") and len(lines) == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/null and /dev/full")
def test_device_outputs_are_written_not_read(tree):
    items = discover(["photos"]).items[:1]
    writer = JsonlWriter(Path("/dev/null"))  # never read back (/dev/zero would never end)
    writer.open(items)
    assert writer.state(items[0]) is State.NEW
    writer.write(items[0], ok(items[0].path))
    writer.close()
    full = CsvWriter(Path("/dev/full"))
    full.open(items)
    with pytest.raises(OSError):  # a full disk stops the run with an error
        full.write(items[0], ok(items[0].path))
    full.close()


@pytest.mark.skipif(os.name == "nt", reason="POSIX byte file names")
@pytest.mark.parametrize("cls", [JsonlWriter, CsvWriter, SidecarWriter])
def test_file_names_that_are_not_utf8_resume(tmp_path, monkeypatch, cls):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "photos" / os.fsdecode(b"\xffodd\nname.jpg"))
    items = discover(["photos"]).items
    writer = cls(None) if cls is SidecarWriter else cls(tmp_path / f"out.{cls.kind}")
    writer.open(items)
    writer.write(items[0], ok(items[0].path))
    writer.close()
    again = cls(None) if cls is SidecarWriter else cls(tmp_path / f"out.{cls.kind}")
    again.open(items)
    assert again.state(items[0]) is State.DONE


def test_long_names_and_deep_trees(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_stem = "x" * 250  # 254-byte image name: its sidecar fits, its temp file must too
    touch(tmp_path / "a" / f"{long_stem}.jpg")
    touch(tmp_path / "a" / f"{long_stem}.png")  # would need "{stem}.png.txt": too long
    deep = tmp_path / "a" / "/".join(["d"] * 300)  # deeper than the recursion limit / 4
    touch(deep / "deep.jpg")
    items = discover(["a"]).items
    assert len(items) == 3 and items[0].rel.endswith("deep.jpg")
    writer = SidecarWriter()
    writer.open(items)
    jpg, png = items[1], items[2]
    assert png.rel.endswith(".png") and "too long" in writer.problem(png)
    writer.write(jpg, ok(jpg.path))
    assert (tmp_path / "a" / f"{long_stem}.txt").read_text() == "a caption\n"


def test_a_failed_write_is_rolled_back_and_names_the_file(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "o.jsonl"
    log = AppendLog(path).open()
    log.append(b"one\n")
    real_write = os.write
    calls = []

    def full_disk(fd, data):  # room for 3 bytes, then ENOSPC
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as caught:
        log.append(b"two two\n")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "a.txt", b"caption\n")
    assert caught.value.filename == str(tmp_path / "a.txt")
    monkeypatch.undo()
    log.close()
    assert path.read_bytes() == b"one\n"  # no torn record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]  # no temp file


def test_path_list_bytes_are_file_names():
    class Stdin(io.StringIO):  # a text stream with the raw bytes underneath, like sys.stdin
        def __init__(self, data: bytes):
            super().__init__()
            self.buffer = io.BytesIO(data)

    names = read_path_list(Stdin(b"caf\xe9.jpg\r\nb c.png\n\n"))
    assert names == [os.fsdecode(b"caf\xe9.jpg"), "b c.png"]
    assert read_path_list(Stdin(b"a\nb.jpg\0c.jpg\0"), null=True) == ["a\nb.jpg", "c.jpg"]


def test_a_prompt_given_is_every_files_even_the_default_one():
    """Without -p a video gets the video prompt; `-p 'Describe this image in detail.'` given on
    purpose used to be taken for no prompt, and videos still got the video one."""
    from smolvlm_cli.batch.runner import BatchConfig, item_prompt
    from smolvlm_cli.options import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT

    assert item_prompt(BatchConfig(["x"]), "a/clip.mp4") == DEFAULT_VIDEO_PROMPT
    assert item_prompt(BatchConfig(["x"]), "a/photo.jpg") == DEFAULT_PROMPT
    assert item_prompt(BatchConfig(["x"], prompt=DEFAULT_PROMPT), "a/clip.mp4") == DEFAULT_PROMPT
    assert item_prompt(BatchConfig(["x"], prompt="What is {stem}?"), "a/clip.mp4") == "What is clip?"


def test_a_failure_line_is_one_line_whatever_the_name():
    from smolvlm_cli.batch.progress import failure_line

    line = failure_line("t/broken\nname.jpg", "cannot read image t/broken\nname.jpg: truncated")
    assert "\n" not in line and line == "cannot read image t/broken\\nname.jpg: truncated"
    assert failure_line("café.jpg", "empty file") == "café.jpg: empty file"  # printable stays as is
