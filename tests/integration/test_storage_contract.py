"""The storage contract, run on both implementations: the local folder and an S3 bucket
(a real moto server on loopback, see tests/s3server.py).

Whatever a caller may ask of :class:`pixelkiln.storage.Storage` is asked here of
each: the same answers, the same errors.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pixelkiln import png
from pixelkiln.storage import LocalStorage, Storage, read_input_image
from pixelkiln.storage.s3 import S3Storage
from tests.s3server import REGION, S3Server

PARAMETERS = "a red fox\nNegative prompt: blur\nSteps: 20, Seed: 7, Size: 16x8"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    made: Storage
    if request.param == "local":
        made = LocalStorage(tmp_path / "data")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        made = S3Storage(bucket=bucket, prefix="kiln", endpoint=server.endpoint, region=REGION)
    made.check()
    yield made
    made.close()


def _picture(width: int = 16, height: int = 8, colour: str = "red", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, fmt)
    return out.getvalue()


def _paths(storage: Storage, folder: str) -> list[str]:
    return sorted(info.path for info in storage.list_files(folder))


def test_an_image_is_written_as_png_with_its_parameters_and_read_back(storage: Storage) -> None:
    relative = storage.image_path(3, "场景 1/fox", 7, 0)
    assert relative == "images/3/场景_1_fox_0007_0.png"
    stored = storage.write_image(relative, _picture(fmt="JPEG"), PARAMETERS)  # re-encoded
    data = storage.read(relative)
    assert png.is_png(data) and png.read_text(data)["parameters"] == PARAMETERS
    assert (stored.path, stored.width, stored.height, stored.bytes) == (relative, 16, 8, len(data))
    info = storage.stat(relative)
    assert info.size == len(data) and info.mtime > 0 and info.etag.startswith('"')


def test_writing_an_image_again_overwrites_it(storage: Storage) -> None:
    relative = storage.image_path(1, "k", 1, 0)
    first = storage.write_image(relative, _picture(colour="red"), "p")
    second = storage.write_image(relative, _picture(colour="red"), "p")
    assert first == second
    storage.write_image(relative, _picture(colour="blue"), "p")
    assert _paths(storage, "images/1") == ["images/1/k_0001_0.png"]  # no temp files, no copies
    with Image.open(io.BytesIO(storage.read(relative))) as image:
        assert image.getpixel((0, 0)) == (0, 0, 255)


def test_streams_read_in_blocks_and_ranges(storage: Storage) -> None:
    storage.write("thumbs/1/5_128.webp", bytes(range(256)) * 4)
    with storage.open("thumbs/1/5_128.webp") as whole:
        blocks = [whole.read(300), whole.read(300), whole.read(1000), whole.read(10)]
    assert b"".join(blocks) == bytes(range(256)) * 4 and blocks[-1] == b""
    with storage.open("thumbs/1/5_128.webp", 250, 10) as part:
        assert part.read() == bytes(range(250, 256)) + bytes(range(4))
    with storage.open("thumbs/1/5_128.webp", 1020) as tail:
        assert tail.read() == bytes(range(252, 256))
    with storage.open("thumbs/1/5_128.webp", 0, 0) as empty:
        assert empty.read() == b""


def test_missing_files_are_file_not_found(storage: Storage) -> None:
    for call in (storage.read, storage.open, storage.stat, storage.open_image):
        with pytest.raises(FileNotFoundError):
            call("images/9/nothing.png")
    assert not storage.exists("images/9/nothing.png")
    storage.delete("images/9/nothing.png")  # gone already: no error
    storage.delete_folder("images/9")
    assert list(storage.list_files("images/9")) == []


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "images/../../x", "", "."])
def test_paths_cannot_leave_the_root(storage: Storage, path: str) -> None:
    for call in (storage.read, storage.stat, storage.delete):
        with pytest.raises(ValueError, match="escapes"):
            call(path)
    with pytest.raises(ValueError, match="escapes"):
        storage.write(path, b"x")


def test_uploads_are_stored_by_content_and_touched_when_stored_again(storage: Storage) -> None:
    image = read_input_image(_picture(colour="green"))
    path = storage.write_asset(image)
    assert path == f"assets/{image.sha256[:2]}/{image.sha256}.png"
    first = storage.stat(path).mtime
    # an object store keeps whole seconds: wait for the clock, not for a race
    deadline = time.monotonic() + 5
    while time.time() < first + 1.05 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert storage.write_asset(image) == path
    assert storage.stat(path).mtime > first  # retention reads this as the upload's age
    assert storage.read(path) == image.data
    assert _paths(storage, "assets") == [path]


def test_listing_is_recursive_with_sizes(storage: Storage) -> None:
    storage.write("images/4/a_0000_0.png", b"a" * 10)
    storage.write("images/4/b_0001_0.png", b"b" * 20)
    storage.write("images/40/c_0000_0.png", b"c")  # another batch: a sibling, not below
    storage.write("thumbs/4/1_128.webp", b"t" * 5)
    found = {i.path: i.size for i in storage.list_files("images/4")}
    assert found == {"images/4/a_0000_0.png": 10, "images/4/b_0001_0.png": 20}
    assert {i.path for i in storage.list_files("thumbs")} == {"thumbs/4/1_128.webp"}


def test_deleting_an_image_takes_its_thumbnails_only(storage: Storage) -> None:
    storage.write("images/2/a_0000_0.png", b"a")
    storage.write("images/2/b_0001_0.png", b"b")
    for name in ("5_128.webp", "5_256.webp", "51_128.webp", "6_128.webp"):
        storage.write(f"thumbs/2/{name}", b"t")
    storage.delete_image("images/2/a_0000_0.png", 2, 5)
    assert _paths(storage, "images/2") == ["images/2/b_0001_0.png"]
    assert _paths(storage, "thumbs/2") == ["thumbs/2/51_128.webp", "thumbs/2/6_128.webp"]


def test_deleting_a_folder_takes_everything_below(storage: Storage) -> None:
    for n in range(3):
        storage.write(f"images/8/x_{n:04d}_0.png", b"x")
    storage.write("images/80/keep_0000_0.png", b"k")
    storage.delete_folder("images/8")
    assert _paths(storage, "images/8") == []
    assert _paths(storage, "images/80") == ["images/80/keep_0000_0.png"]


def test_a_stored_file_is_copied_out_and_opened_as_an_image(
    storage: Storage, tmp_path: Path
) -> None:
    relative = storage.image_path(5, "k", 0, 0)
    storage.write_image(relative, _picture(24, 12), "p")
    target = tmp_path / "out" / "copy.png"
    target.parent.mkdir()
    storage.save_to(relative, target)
    assert target.read_bytes() == storage.read(relative)
    assert [p.name for p in target.parent.iterdir()] == ["copy.png"]  # no partial left
    with storage.open_image(relative) as image:
        assert image.size == (24, 12)


def test_where_names_the_place(storage: Storage, tmp_path: Path) -> None:
    where = storage.where("images/1")
    if isinstance(storage, S3Storage):
        assert where == f"s3://{storage.bucket}/kiln/images/1"
    else:
        assert where == str((tmp_path / "data" / "images" / "1").resolve())


def test_s3_keys_are_the_local_paths_below_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    storage = S3Storage(bucket=s3_bucket, prefix="/team/kiln/", endpoint=s3_server.endpoint)
    relative = storage.image_path(1, "fox", 0, 0)
    storage.write_image(relative, _picture(), PARAMETERS)
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["team/kiln/images/1/fox_0000_0.png"]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=listed[0]["Key"])
    assert head["ContentType"] == "image/png"
    assert [i.path for i in storage.list_files("images")] == [relative]
