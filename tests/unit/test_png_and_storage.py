"""PNG helpers and the data folder: metadata chunks, names, path guards, input checks."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pixelkiln import png
from pixelkiln.exceptions import ServerError
from pixelkiln.storage import LocalStorage, infotext, read_input_image, safe_name, to_png


def _png(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "blue").save(out, format=fmt)
    return out.getvalue()


def test_encoded_rgb_decodes_to_the_same_pixels() -> None:
    raw = bytes(range(48)) * 4  # 8x8 RGB
    with Image.open(io.BytesIO(png.encode_rgb(raw, 8, 8))) as image:
        assert image.size == (8, 8) and image.tobytes() == raw
    with pytest.raises(ValueError):
        png.encode_rgb(raw, 9, 8)


def test_text_chunk_is_read_by_pillow_and_replaced_not_duplicated() -> None:
    first = png.with_text(_png(), "parameters", "a fox\nSteps: 20, Seed: 1")
    second = png.with_text(first, "parameters", "unicode é ✓")
    assert png.read_text(first) == {"parameters": "a fox\nSteps: 20, Seed: 1"}
    with Image.open(io.BytesIO(second)) as image:
        assert image.info["parameters"] == "unicode é ✓"
    assert second.count(b"parameters") == 1


def test_infotext_matches_the_webui_layout() -> None:
    text = infotext("a cat", "blurry", {"Steps": 20, "Sampler": "", "Seed": 7, "Size": "64x64"})
    assert text == "a cat\nNegative prompt: blurry\nSteps: 20, Seed: 7, Size: 64x64"
    assert infotext("a cat", "", {"Steps": 1}) == "a cat\nSteps: 1"


def test_jpeg_is_converted_and_garbage_is_a_server_error() -> None:
    assert png.is_png(to_png(_png(fmt="JPEG")))
    with pytest.raises(ServerError, match="not an image"):
        to_png(b"<html>error</html>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scene 01/intro", "scene_01_intro"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "task"),
        ("", "task"),
        ("ok-name.v2", "ok-name.v2"),
        ("场景1", "场景1"),  # letters of every script are kept
        ("场景 1/第二幕", "场景_1_第二幕"),
        ("cafe\u0301 crème", "café_crème"),  # composed (NFC), as every OS shows it
        ("a\\b\x00c\x1fd\u202ee", "a_b_c_d_e"),  # separators, NUL, controls, bidi
        ("a..b", "a.b"),
        (".hidden", "hidden"),
        ("表情😀", "表情"),
        ("nul.png", "nul_.png"),  # Windows device names
        ("COM1", "COM1_"),
        ("。、", "task"),
    ],
)
def test_names_are_sanitised(text: str, expected: str) -> None:
    assert safe_name(text, "task") == expected


def test_names_are_capped_in_bytes_never_inside_a_character() -> None:
    name = safe_name("场" * 100, limit=80)
    assert name == "场" * 26 and len(name.encode()) == 78
    assert safe_name("x" * 100, limit=80) == "x" * 80


def test_paths_cannot_leave_the_data_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.image_path(3, "../x", 7, 0) == "images/3/x_0007_0.png"
    with pytest.raises(ValueError, match="escapes"):
        storage.absolute("../outside.png")
    with pytest.raises(ValueError, match="escapes"):
        storage.absolute("/etc/passwd")


def test_writes_are_atomic_and_idempotent(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    relative = storage.image_path(1, "k", 1, 0)
    first = storage.write_image(relative, _png(), "p")
    second = storage.write_image(relative, _png(), "p")
    assert first == second and (first.width, first.height) == (8, 8)
    assert [p.name for p in (tmp_path / "images" / "1").iterdir()] == ["k_0001_0.png"]


def test_input_images_are_checked_by_content() -> None:
    assert read_input_image(_png(fmt="WEBP")).mime == "image/webp"
    with pytest.raises(ValueError, match="not a readable image"):
        read_input_image(b"GIF89a but not really")
    with pytest.raises(ValueError, match="damaged or truncated"):
        read_input_image(_png((64, 64))[:-40])
    with pytest.raises(ValueError, match="the limit is 20"):
        read_input_image(_png(), max_bytes=20)
    with pytest.raises(ValueError, match="pixels"):
        read_input_image(_png((100, 100)), max_pixels=5000)
    bmp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, format="BMP")
    with pytest.raises(ValueError, match="unsupported image type BMP"):
        read_input_image(bmp.getvalue())


def test_decompression_bombs_are_refused_without_decoding() -> None:
    # a tiny PNG that claims 20000×20000 pixels: refused from its header
    small = _png()
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bomb = small[:8] + chunk + small[33:]
    with pytest.raises(ValueError, match="pixels"):
        read_input_image(bomb)
