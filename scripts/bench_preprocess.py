#!/usr/bin/env python
"""Time image preprocessing: smolvlm_cli's ImageProcessor vs transformers' PIL image processor.

    scripts/bench_preprocess.py [MODEL_DIR] [--size 4000x3000] [--runs 5]

MODEL_DIR is a model directory with preprocessor_config.json (default: the
SmolVLM2-256M-Video-Instruct fixture in ../shared/fixtures). A photo-like JPEG of --size is
generated in a temporary directory; both sides start from the file (decode included), in this
process, with splitting on and off. Prints the median of --runs runs and checks the outputs
are identical. Needs transformers (the `torch` extra) for the reference side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _script_common import fail, log  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "fixtures" / "SmolVLM2-256M-Video-Instruct"


def photo_jpeg(path: Path, width: int, height: int, seed: int = 0) -> None:
    """Smooth colour fields, shapes and sensor noise: compresses and resamples like a photo."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 96 + 3, width // 96 + 3, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, x1 = sorted(rng.integers(0, width + 1, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height + 1, 2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x1, y1), outline=colour, width=int(rng.integers(2, 30)))
    pixels = np.asarray(image, dtype=np.int16)
    pixels += rng.integers(-8, 9, pixels.shape, dtype=np.int8)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def median_seconds(fn, runs: int) -> tuple[float, object]:
    out = fn()  # warm-up (also the output compared below)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", type=Path, nargs="?", default=DEFAULT_MODEL, help="model directory with preprocessor_config.json"
    )
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the test JPEG")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (median)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        return fail(f"--size must look like 4000x3000, got {args.size!r}")
    pre_path = args.model_dir / "preprocessor_config.json"
    if not pre_path.is_file():
        return fail(f"preprocessor_config.json not found in {args.model_dir}")

    import numpy as np
    from PIL import Image, ImageOps

    from smolvlm_cli.image_processing import ImageProcessor

    try:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    except ImportError as exc:
        return fail(f"transformers is needed for the reference: {exc}", hint="pip install -e '.[torch]'")

    kind = json.loads(pre_path.read_text()).get("image_processor_type", "")
    ref_cls = Idefics3ImageProcessorPil if kind.startswith("Idefics3") else SmolVLMImageProcessorPil
    reference = ref_cls.from_pretrained(str(args.model_dir))
    ours = ImageProcessor.from_dir(args.model_dir)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"photo_{width}x{height}.jpg"
        log(f"generating {path.name} ...")
        photo_jpeg(path, width, height)
        log(f"{path.stat().st_size / 1e6:.1f} MB; timing {args.runs} runs per case ...")

        def ref_run(split: bool):
            image = ImageOps.exif_transpose(Image.open(path))
            return reference(images=[image], return_tensors="np", return_row_col_info=True, do_image_splitting=split)

        def decode_only():
            with Image.open(path) as image:
                image.load()

        rows = []
        decode_s, _ = median_seconds(decode_only, args.runs)
        for split in (True, False):
            ref_s, expected = median_seconds(lambda: ref_run(split), args.runs)
            our_s, got = median_seconds(lambda: ours.preprocess([path], split=split), args.runs)
            same = (
                np.array_equal(got["pixel_values"], expected["pixel_values"])
                and np.array_equal(got["pixel_attention_mask"], expected["pixel_attention_mask"])
                and got["rows"] == expected["rows"]
                and got["cols"] == expected["cols"]
            )
            tiles = got["pixel_values"].shape[1]
            rows.append((f"split {'on' if split else 'off'}", tiles, ref_s, our_s, same))

    print(
        f"model: {args.model_dir.name}  image: {width}x{height} JPEG  "
        f"(decode alone: {decode_s * 1e3:.0f} ms)  median of {args.runs}"
    )
    print(f"{'case':<10} {'tiles':>5} {'transformers':>13} {'smolvlm_cli':>12} {'speed-up':>9} {'identical':>9}")
    for case, tiles, ref_s, our_s, same in rows:
        print(
            f"{case:<10} {tiles:>5} {ref_s * 1e3:>10.0f} ms {our_s * 1e3:>9.0f} ms "
            f"{ref_s / our_s:>8.2f}x {'yes' if same else 'NO':>9}"
        )
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
