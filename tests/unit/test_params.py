"""Aspect ratio and resolution to width and height, and the limits on each side."""

from __future__ import annotations

import pytest

from pixelkiln import params
from pixelkiln.params import check_side, normalize_aspect_ratio, normalize_resolution, resolve_size

# The table in params' docstring, written out again so a change to it is deliberate.
SIZES_1K = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}


@pytest.mark.parametrize("ratio", SIZES_1K)
@pytest.mark.parametrize(("resolution", "scale"), [("1k", 1), ("2K", 2), ("4k", 4)])
def test_sizes_follow_the_table(ratio: str, resolution: str, scale: int) -> None:
    width, height = SIZES_1K[ratio]
    assert resolve_size(ratio, resolution, None, None) == (width * scale, height * scale)


def test_documented_corners_of_the_table() -> None:
    assert resolve_size("16:9", "2K", None, None) == (2688, 1536)
    assert resolve_size("2:3", "4K", None, None) == (3328, 4992)
    assert resolve_size("9:16", "4k", None, None) == (3072, 5376)


def test_nothing_given_is_one_megapixel_square() -> None:
    assert resolve_size(None, None, None, None) == (1024, 1024)


def test_ratio_without_resolution_is_1k() -> None:
    assert resolve_size("4:3", None, None, None) == (1184, 864)


def test_explicit_size_wins_over_ratio_and_resolution() -> None:
    assert resolve_size("16:9", "4k", 640, 480) == (640, 480)


@pytest.mark.parametrize(
    ("ratio", "width", "height", "expected"),
    [
        ("3:2", 768, None, (768, 512)),
        ("16:9", None, 768, (1368, 768)),  # exact 16:9, not the 1k table's 1344
        (None, 512, None, (512, 512)),  # no ratio means 1:1
        (None, None, 320, (320, 320)),
        ("9:16", 576, None, (576, 1024)),
    ],
)
def test_one_side_gives_the_other_from_the_ratio(
    ratio: str | None, width: int | None, height: int | None, expected: tuple[int, int]
) -> None:
    assert resolve_size(ratio, None, width, height) == expected


@pytest.mark.parametrize("ratio", SIZES_1K)
@pytest.mark.parametrize("side", [64, 200, 512, 1000, 1336, 4096])
def test_derived_side_is_a_multiple_of_8(ratio: str, side: int) -> None:
    width, height = resolve_size(ratio, None, side, None)
    assert width == side
    assert height % params.SIZE_MULTIPLE == 0
    width, height = resolve_size(ratio, None, None, side)
    assert width % params.SIZE_MULTIPLE == 0


def test_derived_side_is_rounded_to_the_nearest_multiple() -> None:
    # 1000 * 9 / 16 = 562.5 → 560, the nearest multiple of 8
    assert resolve_size("16:9", None, 1000, None) == (1000, 560)


def test_derived_side_is_clamped_to_the_bounds() -> None:
    assert resolve_size("16:9", None, 64, None) == (64, params.MIN_SIDE)
    assert resolve_size("9:16", None, 8192, None) == (8192, params.MAX_SIDE)


@pytest.mark.parametrize("side", [64, 72, 1024, 8192])
def test_sides_within_bounds_pass(side: int) -> None:
    assert check_side(side) == side


@pytest.mark.parametrize("side", [0, 56, 8200, -64])
def test_sides_out_of_bounds_fail(side: int) -> None:
    with pytest.raises(ValueError, match="between 64 and 8192"):
        check_side(side)


def test_side_not_a_multiple_of_8_fails() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        check_side(1001)


def test_explicit_size_is_checked() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        resolve_size(None, None, 640, 481)
    with pytest.raises(ValueError, match="between"):
        resolve_size("1:1", None, 32, None)


def test_aspect_ratio_is_normalized() -> None:
    assert normalize_aspect_ratio(" 16 : 9 ") == "16:9"


def test_unknown_aspect_ratio_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"1:1, 2:3, 3:2, 3:4, 4:3, 16:9, 9:16 \(got '5:4'\)"):
        normalize_aspect_ratio("5:4")


def test_resolution_is_case_insensitive() -> None:
    assert normalize_resolution(" 2K ") == "2k"


def test_unknown_resolution_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="1K, 2K, 4K"):
        resolve_size("1:1", "8k", None, None)
