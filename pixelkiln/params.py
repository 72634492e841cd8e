"""Generation parameters: their limits, and aspect ratio × resolution → width × height.

Sizes follow the table that Gemini-class image models (and OpenRouter's
``image_config``) use, so a batch asking for ``16:9`` at ``1k`` gets the same
1344×768 from every backend. ``1k`` keeps about one megapixel; ``2k`` doubles
both sides and ``4k`` quadruples them::

    ratio   1k           2k           4k
    1:1     1024×1024    2048×2048    4096×4096
    2:3     832×1248     1664×2496    3328×4992
    3:2     1248×832     2496×1664    4992×3328
    3:4     864×1184     1728×2368    3456×4736
    4:3     1184×864     2368×1728    4736×3456
    16:9    1344×768     2688×1536    5376×3072
    9:16    768×1344     1536×2688    3072×5376

An explicit ``width`` and ``height`` always win. With only one of them, the
other follows from the exact aspect ratio (1:1 when none), rounded to a
multiple of 8: 16:9 at width 512 gives 512×288.
With neither and no resolution, the size is 1024×1024 scaled to the ratio (1k).

An img2img task that gives no size and no ratio keeps its input's shape
(:func:`size_like`): the supported ratio nearest to the input's, at the task's
resolution. A 1600×900 photo comes back 1344×768 at ``1k``. The table's sizes,
not the input's exact ratio scaled to a pixel budget: every backend takes them
(Gemini-class models and OpenRouter know only these ratios, and WebUI-style
backends take any multiple of 8), so a batch asks every backend the same.

>>> resolve_size("16:9", "2K", None, None)
(2688, 1536)
>>> resolve_size("3:2", None, 768, None)
(768, 512)
>>> size_like(1600, 900, "1k")
(1344, 768)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}
RESOLUTIONS: dict[str, int] = {"1k": 1, "2k": 2, "4k": 4}

MIN_SIDE = 64
MAX_SIDE = 8192
SIZE_MULTIPLE = 8
MAX_IMAGES_PER_TASK = 10
MAX_REFERENCE_IMAGES = 4
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1

DEFAULT_STEPS = 20
DEFAULT_CFG_SCALE = 7.0
DEFAULT_DENOISE = 0.75


def normalize_aspect_ratio(value: str) -> str:
    """``" 16:9 "`` → ``"16:9"``; raises ValueError naming the allowed ratios."""
    ratio = value.strip().replace(" ", "")
    if ratio not in ASPECT_RATIOS:
        raise ValueError(f"must be one of {', '.join(ASPECT_RATIOS)} (got '{value}')")
    return ratio


def normalize_resolution(value: str) -> str:
    """``"2K"`` → ``"2k"``; raises ValueError naming the allowed resolutions."""
    resolution = value.strip().lower()
    if resolution not in RESOLUTIONS:
        raise ValueError(f"must be one of 1K, 2K, 4K (got '{value}')")
    return resolution


def check_side(value: int) -> int:
    """A width or height: a multiple of 8 between 64 and 8192."""
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise ValueError(f"must be between {MIN_SIDE} and {MAX_SIDE} pixels (got {value})")
    if value % SIZE_MULTIPLE:
        raise ValueError(f"must be a multiple of {SIZE_MULTIPLE} (got {value})")
    return value


def _round_side(value: float) -> int:
    side = round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return max(MIN_SIDE, min(MAX_SIDE, side))


def resolve_size(
    aspect_ratio: str | None,
    resolution: str | None,
    width: int | None,
    height: int | None,
) -> tuple[int, int]:
    """Width and height in pixels for the given parameters (see the module docstring)."""
    ratio = normalize_aspect_ratio(aspect_ratio) if aspect_ratio else "1:1"
    base_w, base_h = ASPECT_RATIOS[ratio]
    ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
    if width is not None and height is not None:
        return check_side(width), check_side(height)
    if width is not None:
        return check_side(width), _round_side(width * ratio_h / ratio_w)
    if height is not None:
        return _round_side(height * ratio_w / ratio_h), check_side(height)
    scale = RESOLUTIONS[normalize_resolution(resolution)] if resolution else 1
    return base_w * scale, base_h * scale


def nearest_ratio(width: int, height: int, ratios: Iterable[str] = ASPECT_RATIOS) -> str:
    """The aspect ratio of ``ratios`` (the supported ones) closest to ``width``:``height``
    (ties: the first listed).

    Closeness is the distance of the logarithms, so 2:1 is as far from 1:1 as 1:2 is.
    """
    wanted = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(part) for part in ratio.split(":"))
        return abs(math.log(w / h) - wanted)

    return min(ratios, key=distance)


def size_like(width: int, height: int, resolution: str | None) -> tuple[int, int]:
    """The size an output of an input ``width`` × ``height`` gets when no size was asked:
    the nearest supported ratio at ``resolution`` (1k when None).
    """
    return resolve_size(nearest_ratio(width, height), resolution, None, None)
