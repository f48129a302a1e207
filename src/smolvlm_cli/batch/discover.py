"""Which images a batch run covers, in a deterministic order (no model, no engine).

Inputs are folders (walked recursively unless `recursive=False`), files, and `-`: a list of paths
on stdin, one per line (or NUL-separated), so `find ... | smolvlm batch -` works.

- Files found in folders or read from stdin must have an image extension (case-insensitive) and
  pass the `include` / `exclude` globs; files named on the command line are always taken.
- Hidden folders and files (a name starting with `.`) inside a walked folder are skipped.
- Symbolic links are followed; a folder reached twice (a link loop, or two links to one
  folder) is walked once. A broken link with an image name is kept: it is reported as unreadable.
- Globs: a pattern without `/` matches any single path component (`thumbs`, `*.png`); one with
  `/` matches the whole path relative to the folder given (`raw/**`, `*/drafts/*.jpg`), where
  `**` spans folders. Matching ignores case.
- Every item gets `rel`, its path relative to the deepest folder holding all the inputs: where
  `--output-dir` mirrors it. `rel` never contains `..` nor is absolute.
- The result is sorted by `rel` (folder by folder, ignoring case first) and holds each path once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TextIO

from smolvlm_cli.errors import SmolVLMError
from smolvlm_cli.formats import IMAGE_EXTENSIONS

STDIN = "-"
DEFAULT_EXTENSIONS = IMAGE_EXTENSIONS


def default_extensions() -> tuple[str, ...]:
    """The image extensions, and the video ones when video support (PyAV) is installed."""
    from smolvlm_cli.formats import VIDEO_EXTENSIONS
    from smolvlm_cli.video.decode import av_available

    return DEFAULT_EXTENSIONS + (VIDEO_EXTENSIONS if av_available() else ())


@dataclass(frozen=True)
class ImageItem:
    """One image to caption: `path` as found (for reading and for records), `rel` for mirroring."""

    path: str
    rel: str  # posix, relative to the common base of the inputs

    @property
    def abspath(self) -> str:
        return os.path.abspath(self.path)

    @property
    def name(self) -> str:
        return PurePosixPath(self.rel).name


@dataclass
class Discovery:
    items: list[ImageItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # unreadable folders, ...
    base: str = ""  # the folder `rel` is relative to
    videos_left_out: int = 0  # files in walked folders with a video extension not asked for


def parse_extensions(values: Iterable[str] | None) -> tuple[str, ...]:
    """`["jpg,png", ".WEBP"]` -> `("jpg", "png", "webp")`; empty or None gives the defaults
    (`default_extensions()`: videos too when PyAV is installed)."""
    found = []
    for value in values or ():
        for part in value.split(","):
            part = part.strip().lstrip(".").lower()
            if any(c.isspace() or c in "*?[]/\\" for c in part):  # `jpg png`, `*.png`: nothing would match
                raise ValueError(f"{part!r} is not an extension: give a comma-separated list such as jpg,png")
            if part and part not in found:
                found.append(part)
    return tuple(found) or default_extensions()


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


class PathFilter:
    """Extension, include and exclude rules for files found in folders or read from stdin."""

    def __init__(
        self, extensions: Sequence[str] = DEFAULT_EXTENSIONS, include: Sequence[str] = (), exclude: Sequence[str] = ()
    ):
        self.extensions = {"." + e.lower().lstrip(".") for e in extensions}
        self.include = [self._compile(p) for p in include]
        self.exclude = [self._compile(p) for p in exclude]

    @staticmethod
    def _compile(pattern: str):
        pattern = pattern.replace(os.sep, "/").strip("/")
        return ("/" in pattern, _glob_regex(pattern))

    @staticmethod
    def _matches(rule, rel: str) -> bool:
        whole, regex = rule
        if whole:
            return bool(regex.match(rel))
        return any(regex.match(part) for part in rel.split("/"))

    def has_image_extension(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    def accepts(self, rel: str) -> bool:
        """`rel`: the file's path relative to the folder it was found in (posix)."""
        if not self.has_image_extension(rel):
            return False
        if self.include and not any(self._matches(r, rel) for r in self.include):
            return False
        return not any(self._matches(r, rel) for r in self.exclude)

    def prunes(self, rel_dir: str) -> bool:
        """Skip a whole folder: an exclude pattern matches it (or one of its components)."""
        return any(self._matches(r, rel_dir) for r in self.exclude)


def read_path_list(stream: TextIO, null: bool = False) -> list[str]:
    """Paths from a `find`-style list: one per line (or NUL-separated), blank entries skipped.

    Read as bytes when the stream has them: file names need not be UTF-8 (decoded like
    `os.fsdecode`, so they open again byte for byte), whatever the stdin encoding says.
    """
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        data = buffer.read()
        parts = data.split(b"\0") if null else data.split(b"\n")
        names = [os.fsdecode(p if null else p.rstrip(b"\r")) for p in parts]
    else:
        text = stream.read()
        names = text.split("\0") if null else [p.rstrip("\r") for p in text.split("\n")]
    return [name for name in names if name.strip()]


def _walk(root: str, recursive: bool, filt: PathFilter, seen_dirs: set, result: Discovery) -> Iterable[str]:
    """Files under `root` passing `filt` (depth first, no recursion limit), each folder (by
    identity: links and loops) once; unreadable folders and video files left out noted in
    `result`."""
    from smolvlm_cli.formats import VIDEO_EXTENSIONS

    videos = {"." + e for e in VIDEO_EXTENSIONS}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else root
        try:
            st = os.stat(folder)
            ident = (st.st_dev, st.st_ino)
            if ident in seen_dirs:
                continue
            seen_dirs.add(ident)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.warnings.append(f"cannot read folder {folder}: {exc.strerror or exc}")
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
                broken = not is_dir and not is_file and entry.is_symlink() and not os.path.exists(entry.path)
            except OSError:
                is_dir = is_file = False
                broken = True
            if is_dir:
                if recursive and not filt.prunes(rel):
                    subdirs.append(rel)
            elif (is_file or broken) and filt.accepts(rel):
                yield rel
            elif is_file and os.path.splitext(entry.name)[1].lower() in videos and not filt.has_image_extension(rel):
                result.videos_left_out += 1
        stack.extend(reversed(subdirs))


def _common_base(paths: Sequence[str]) -> str:
    try:
        return os.path.commonpath(paths) if paths else os.getcwd()
    except ValueError:  # different drives
        return ""


def _relative(abspath: str, base: str) -> str:
    if base:
        rel = os.path.relpath(abspath, base)
    else:
        rel = os.path.splitdrive(abspath)[1].lstrip("\\/")
    rel = rel.replace(os.sep, "/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:  # cannot happen for paths under base; refuse rather than escape
        raise SmolVLMError(f"cannot place {abspath} under {base or 'the output folder'}")
    return "/".join(parts)


def discover(
    inputs: Sequence[str],
    *,
    recursive: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    stdin: TextIO | None = None,
    null: bool = False,
) -> Discovery:
    """Find the images named by `inputs` (folders, files, `-` for a path list on `stdin`)."""
    if list(inputs).count(STDIN) > 1:
        raise SmolVLMError("'-' (paths on stdin) can be given only once")
    filt = PathFilter(extensions, include, exclude)
    result = Discovery()
    found: list[str] = []  # lexical paths as the user spelled them (joined with walked names)
    anchors: list[str] = []  # absolute folders the base must contain
    seen_dirs: set = set()

    def add_dir(folder: str) -> None:
        anchors.append(os.path.abspath(folder))
        for rel in _walk(folder, recursive, filt, seen_dirs, result):
            found.append(os.path.join(folder, *rel.split("/")))

    def add_file(path: str) -> None:
        anchors.append(os.path.dirname(os.path.abspath(path)))
        found.append(path)

    for arg in inputs:
        if arg == STDIN:
            if stdin is None:
                raise SmolVLMError("'-' needs a list of paths on standard input")
            for line in read_path_list(stdin, null):
                if os.path.isdir(line):
                    add_dir(line)
                elif filt.accepts(_listed_rel(line)):
                    add_file(line)
        elif os.path.isdir(arg):
            add_dir(arg)
        elif os.path.lexists(arg):
            add_file(arg)
        else:
            raise SmolVLMError(
                f"no such file or folder: {arg}", hint="give image files, folders, or '-' to read paths from stdin"
            )

    base = _common_base(anchors)
    result.base = base
    by_abs: dict[str, ImageItem] = {}
    for path in found:
        abspath = os.path.abspath(path)
        # one file reached through a linked folder too (`t/a.jpg`, `link-to-t/a.jpg`) is one
        # image: its sidecar is one file. A linked file under another name stays an image.
        folder, name = os.path.split(abspath)
        key = os.path.join(os.path.realpath(folder), name)
        if key not in by_abs:
            by_abs[key] = ImageItem(path=path, rel=_relative(abspath, base))
    result.items = sorted(by_abs.values(), key=lambda item: sort_key(item.rel))
    return result


def sort_key(rel: str) -> tuple:
    """Folder by folder, case-insensitively first (`a.jpg` < `B.png`), then exactly."""
    return tuple((part.casefold(), part) for part in rel.split("/"))


def _listed_rel(line: str) -> str:
    """A stdin path as matched by the globs: relative to the current folder when under it."""
    rel = os.path.relpath(os.path.abspath(line)) if not os.path.isabs(line) else line
    return rel.replace(os.sep, "/").lstrip("/")
