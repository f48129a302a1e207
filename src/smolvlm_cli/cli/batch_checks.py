"""`smolvlm batch`'s usage checks (exit 2, before any work): inputs, resume options, output
targets and formats."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

FORMATS = ("txt", "jsonl", "csv", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def check_inputs(paths: list[str], manifest, null: bool, overwrite: bool, retry_errors: bool, resume_any: bool) -> None:
    """Usage errors among the inputs and resume options (exit 2, before any work)."""
    if not paths and manifest is None:
        raise typer.BadParameter("give images (folders, files, '-') or --manifest", param_hint="'PATH...'")
    if paths.count("-") > 1:
        raise typer.BadParameter("'-' (paths on stdin) can be given only once", param_hint="'PATH...'")
    if null and "-" not in paths:
        raise typer.BadParameter("-0 is for a path list on stdin: give '-' too", param_hint="'--null'")
    if overwrite and (retry_errors or resume_any):
        raise typer.BadParameter(
            "--overwrite redoes every image: it takes neither --retry-errors nor --resume-any",
            param_hint="'--overwrite'",
        )


def extensions(values: Optional[list[str]]) -> tuple[str, ...]:
    from smolvlm_cli.batch.discover import parse_extensions

    try:
        return parse_extensions(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--ext'") from None


def resolve_format(fmt: Optional[str], out: Optional[str], output_dir: Optional[Path]) -> tuple[str, Optional[str]]:
    """(format, output target) from --format / --output / --output-dir."""
    if out is not None and output_dir is not None:  # one of them would be ignored
        raise typer.BadParameter(
            "give --output FILE, or --output-dir DIR (sidecars, or captions.jsonl/.csv inside it), not both",
            param_hint="'--output-dir'",
        )
    if fmt is None:
        if out is None:
            fmt = "txt"
        elif out == "-":
            fmt = "jsonl"
        else:
            fmt = SUFFIX_FORMATS.get(Path(out).suffix.lower())
            if fmt is None:
                raise typer.BadParameter(
                    f"cannot tell the format of {out!r} from its name: give --format jsonl or csv",
                    param_hint="'--output'",
                )
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="'--format'")
    if fmt == "txt":
        if out is not None:
            raise typer.BadParameter(
                "txt writes one sidecar per image (next to it, or under --output-dir): --output is for jsonl and csv",
                param_hint="'--output'",
            )
        return fmt, None
    if fmt == "parquet" and out == "-":
        raise typer.BadParameter("parquet is a folder of files: give --output DIR", param_hint="'--output'")
    if out is None:
        out = str(output_dir / f"captions.{fmt}") if output_dir else ("-" if fmt != "parquet" else "captions.parquet")
    elif fmt != "parquet" and out != "-" and Path(out).is_dir():
        raise typer.BadParameter(
            f"{out} is a folder: give a file name (or -d {out} for sidecars there)", param_hint="'--output'"
        )
    return fmt, out
