#!/usr/bin/env python
"""Put a checkpoint folder into a Hugging Face home in the Hub cache's layout, for offline runs.

    scripts/fake_hub_cache.py CHECKPOINT_DIR HF_HOME [--repo org/name]

writes `HF_HOME/hub/models--org--name/` as huggingface_hub leaves a download: `blobs/` (each file
under its content hash; weights hard-linked when the file system allows, else copied),
`snapshots/<40-hex revision>/` (relative symlinks to the blobs) and `refs/main`. Only the
checkpoint's top-level config, tokenizer and processor files and its safetensors go in (no
onnx/), like the default path's download. Then, with HF_HOME=HF_HOME and HF_HUB_OFFLINE=1,
`smolvlm describe img.jpg -m org/name` (or `SmolVLM.from_pretrained("org/name")`) finds it.
Prints the snapshot folder on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402

DEFAULT_REPO = "smolvlm-bench/SmolVLM-random"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _place(src: Path, blob: Path) -> None:
    if blob.is_file():
        return
    tmp = blob.with_name(blob.name + ".incomplete")  # huggingface_hub's own suffix for partial blobs
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or no hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, blob)


def make_hub_cache(checkpoint: Path, hf_home: Path, repo: str) -> Path:
    from smolvlm_cli.export.checkpoint import config_files

    files = config_files(checkpoint) + sorted(checkpoint.glob("*.safetensors"))
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        files.append(index)
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    hashes = {}
    for path in files:
        log(f"  {path.name}")
        hashes[path.name] = _sha256(path)
        _place(path, root / "blobs" / hashes[path.name])
    revision = hashlib.sha1("".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
    snapshot = root / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    for name, digest in hashes.items():
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision, encoding="utf-8")  # no newline, like the Hub's
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="folder with config.json and *.safetensors")
    parser.add_argument("hf_home", type=Path, help="the Hugging Face home to write (HF_HOME)")
    parser.add_argument("--repo", default=DEFAULT_REPO, help=f"the repo id (default {DEFAULT_REPO})")
    args = parser.parse_args(argv)

    if not (args.checkpoint / "config.json").is_file():
        return fail(f"no config.json in {args.checkpoint}", hint="pass a SmolVLM checkpoint folder")
    if not any(args.checkpoint.glob("*.safetensors")):
        return fail(f"no *.safetensors in {args.checkpoint}")
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        return fail(f"--repo {args.repo!r} is not of the form org/name")
    if args.hf_home.exists() and not args.hf_home.is_dir():
        return fail(f"{args.hf_home} exists and is not a directory")
    log(f"writing {args.repo} into {args.hf_home}/hub")
    try:
        snapshot = make_hub_cache(args.checkpoint, args.hf_home, args.repo)
    except OSError as exc:
        return fail(str(exc))
    print(snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
