"""A one-line warning before a batch run that the default tiling would make slow.

The model's own preprocessing (`--detail auto`) upscales every image to a 2048-px side: a
thumbnail costs 13 tiles like a photo, ~14x the work of `--detail low`. Users who do not know
find out after hours; one line on stderr, from the image headers alone, tells them first.
"""

from __future__ import annotations

from collections.abc import Sequence

from smolvlm_cli.batch.discover import ImageItem
from smolvlm_cli.errors import SmolVLMError

# Seconds per tile of a caption (vision, prefill and a short reply) on a 2-core AVX2 laptop with
# the 256M model, int8: 3.3 images/min at 13 tiles (issue #19). Newer CPUs are up to 2-3x
# faster (README, Performance): a cautious guide, not a promise.
SECONDS_PER_TILE = 1.4
SLOW_RUN_S = 600.0  # warn when the run would take longer than this
SAMPLE = 24  # image headers read for the estimate


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def mean_tiles(items: Sequence[ImageItem], config, longest_edge=None, split=None) -> float | None:
    """Average tiles an image over an even sample of `items` (unreadable ones left out)."""
    from smolvlm_cli.image_processing import image_size, num_tiles, tile_grid

    step = max(1, len(items) // SAMPLE)
    tiles = []
    for item in list(items)[::step][:SAMPLE]:
        try:
            width, height = image_size(item.path)
        except (SmolVLMError, OSError, ValueError):
            continue
        tiles.append(num_tiles(*tile_grid(width, height, config, longest_edge=longest_edge, split=split)))
    return sum(tiles) / len(tiles) if tiles else None


def slow_run_line(items: Sequence[ImageItem], config) -> str | None:
    """The warning for a default-tiling run of `items`, None when it would not take long."""
    tiles = mean_tiles(items, config)
    if tiles is None or tiles <= 1:
        return None
    total = tiles * SECONDS_PER_TILE * len(items)
    if total < SLOW_RUN_S:
        return None
    return (
        f"~{tiles:.0f} tiles an image: about {_duration(total)} for these {len(items)} "
        f"images on a 2-core laptop CPU (~{_duration(tiles * SECONDS_PER_TILE * 100)} per 100); "
        f"--detail low (1 tile) is ~{tiles:.0f}x faster"
    )
