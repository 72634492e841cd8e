"""Names kept from uploads, and the size an img2img output gets from its input's shape."""

from __future__ import annotations

import pytest

from pixelkiln import params
from pixelkiln.naming import (
    MAX_NAME_BYTES,
    file_name,
    image_stem,
    unique_name,
    unique_stem,
    with_image_suffix,
)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("photo_00.png", "photo_00.png"),
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\me\\cat.JPG", "cat.JPG"),
        ("CON.png", "CON_.png"),
        ("lpt9", "lpt9_"),
        ("照片 1.png", "照片_1.png"),
        ("evil\x00.png", "evil.png"),
        ("...", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("archive.tar.gz", "archive.tar.gz"),
    ],
)
def test_file_names_are_made_safe_and_keep_their_extension(raw: str | None, kept: str) -> None:
    assert file_name(raw) == kept


@pytest.mark.parametrize("stem", ["a" * 300, "照" * 300, "é" * 300])
def test_long_names_are_cut_to_the_limit_keeping_the_extension(stem: str) -> None:
    name = file_name(stem + ".png")
    assert name.endswith(".png") and len(name.encode()) <= MAX_NAME_BYTES
    assert name.encode().decode() == name  # never half a character
    assert unique_name(name, {name.casefold()}).endswith("-2.png")


def test_unique_names_ignore_case_and_count_on() -> None:
    taken: set[str] = set()
    got = [unique_name(n, taken) for n in ("a.png", "A.png", "a-2.png", "a.png", "b")]
    assert got == ["a.png", "A-2.png", "a-2-2.png", "a-3.png", "b"]
    assert unique_stem("a.b", {"a.b.png"}) == "a.b-2"


def test_only_image_file_names_give_an_output_stem() -> None:
    assert image_stem("photo_00.png") == "photo_00"
    assert image_stem("Scan.JPEG") == "Scan"
    assert image_stem("CON_.png") == "CON_"
    assert image_stem("slide-3") is None and image_stem("17") is None
    assert image_stem("notes.txt") is None


def test_a_name_without_an_image_extension_gets_its_types() -> None:
    assert with_image_suffix("scan", "image/jpeg") == "scan.jpg"
    assert with_image_suffix("photo.PNG", "image/webp") == "photo.PNG"
    assert with_image_suffix("x", "application/octet-stream") == "x"


@pytest.mark.parametrize(
    ("shape", "ratio"),
    [
        ((1600, 900), "16:9"),
        ((900, 1600), "9:16"),
        ((500, 500), "1:1"),
        ((600, 800), "3:4"),
        ((800, 600), "4:3"),
        ((1200, 800), "3:2"),
        ((800, 1200), "2:3"),
        ((5000, 100), "16:9"),  # past the table's ends: its widest
        ((100, 5000), "9:16"),
        ((1030, 1000), "1:1"),
    ],
)
def test_the_nearest_supported_ratio(shape: tuple[int, int], ratio: str) -> None:
    assert params.nearest_ratio(*shape) == ratio


def test_an_input_shape_keeps_its_ratio_at_the_resolution() -> None:
    assert params.size_like(1600, 900, None) == (1344, 768)
    assert params.size_like(1600, 900, "2k") == (2688, 1536)
    assert params.size_like(600, 800, "4k") == (3456, 4736)
    with pytest.raises(ValueError, match="1K, 2K, 4K"):
        params.size_like(10, 10, "8k")
