"""Hostile uploads through every upload path, on SQLite and PostgreSQL: a clean stored
image or a clear 4xx, never a 5xx; and what is stored holds nothing but the picture.

The paths: ``POST /api/v1/assets`` (the web UI's drop on the generate page),
``POST /api/v1/batches/upload`` (the img2img page's Start), the img2img service's
``POST /api/batch/create`` and a workbook's cell pictures (``POST /api/v1/tables/parse``).
No drop-in API takes an image as base64 in its body: every image enters through one of
these, and all of them check and clean it in ``pixelkiln.storage.read_input_image``.

What is decided (proposed for docs/security.md): an animated GIF or WebP is stored as
its first frame; an EXIF-rotated photo is stored upright (the rotation applied, the tag
gone); CMYK is stored as RGB, 16-bit samples as 8-bit; a file's name and declared type count for
nothing (a PNG named ``.jpg`` is stored as the PNG it is). Everything after the image's
end (a PNG+HTML or PNG+ZIP polyglot), EXIF, comments, private chunks and text (but a
PNG's ``parameters``) are gone.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps

from pixelkiln import png
from pixelkiln.config import load_settings
from pixelkiln.db.users import add_user
from pixelkiln.storage import open_storage
from pixelkiln.web.headers import CONTENT_CSP
from tests.integration.api.apikit import Api, api_settings, running_api, serving
from tests.reliability.conftest import Soak, Tally
from tests.sheet_sweeps import mark_sweep, plain_spec
from tests.sheets import ZH_HEADER, with_media, workbook_bytes

pytestmark = pytest.mark.anyio

RED, BLUE = (220, 20, 20), (20, 20, 220)
#: bytes that must never be found in a stored file: the other halves of polyglots
FOREIGN = (b"<script", b"<html", b"<svg", b"alert(", b"PK\x03\x04", b"PK\x05\x06")


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: a rotation shows where the halves went."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def claimed_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        png.SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def zip_of(name: str, text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name, text)
    return out.getvalue()


def exif_rotated(fmt: str, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(halves(), fmt, exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, (0, 200, 0))]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def html_in_text_chunk() -> bytes:
    text = png.text_chunk("Comment", "<html><script>alert(1)</script></html>")
    plain = encoded(halves(), "PNG")
    return plain[:33] + text + chunk(b"prVt", b"<svg onload=alert(1)>") + plain[33:]


def jpeg_with_comment() -> bytes:
    return encoded(halves(), "JPEG", comment=b"<script>alert(1)</script>")


def pixels_bomb() -> bytes:
    """100 million pixels of zeros: ~100 kB of PNG, 100 MB decoded."""
    return encoded(Image.new("L", (10_000, 10_000)), "PNG", compress_level=9)


def gif_screen_bomb() -> bytes:
    """A GIF whose logical screen is 65535 × 65535."""
    small = encoded(Image.new("P", (4, 4)), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


def lying_header() -> bytes:
    """An HTML page that starts like a GIF (what a browser sniffing content would run)."""
    return b"GIF89a<html><body><script>alert(document.domain)</script></body></html>"


#: how a stored image is checked, beyond what every stored image must be
Check = Callable[[Image.Image, bytes], None]


def upright(original: bytes) -> Check:
    """Stored as Pillow shows the original once its EXIF orientation is applied."""

    def check(stored: Image.Image, _: bytes) -> None:
        with Image.open(io.BytesIO(original)) as image:
            shown = ImageOps.exif_transpose(image).convert("RGB")
        assert stored.size == shown.size
        for x, y in ((1, 1), (shown.width - 2, shown.height - 2)):
            near(stored.convert("RGB").getpixel((x, y)), shown.getpixel((x, y)))
        assert stored.getexif().get(0x0112, 1) == 1

    return check


def first_frame(stored: Image.Image, _: bytes) -> None:
    assert getattr(stored, "n_frames", 1) == 1
    near(stored.convert("RGB").getpixel((8, 8)), RED)


def rgb_red(stored: Image.Image, _: bytes) -> None:
    assert stored.mode == "RGB"
    near(stored.getpixel((2, 2)), (255, 0, 0))


def eight_bit(stored: Image.Image, data: bytes) -> None:
    assert data[24] == 8  # IHDR bit depth
    assert stored.mode in ("L", "RGB")


def see_through(stored: Image.Image, _: bytes) -> None:
    assert stored.convert("RGBA").getpixel((0, 0))[3] == 0


def near(found: Any, wanted: Any, slack: int = 40) -> None:
    assert all(abs(a - b) <= slack for a, b in zip(found, wanted, strict=True)), (found, wanted)


@dataclass(frozen=True)
class Case:
    """A hostile file and what must become of it."""

    name: str
    data: bytes
    filename: str
    mime: str = "application/octet-stream"
    #: "stored" (a clean image), "refused" (a 4xx) or "either"
    outcome: str = "stored"
    check: Check | None = None


def corpus() -> list[Case]:
    plain_png = encoded(halves(), "PNG")
    plain_jpeg = encoded(halves(), "JPEG")
    palette = Image.new("P", (8, 8))
    gray16 = Image.new("I;16", (8, 8), 40_000)
    rgb48 = claimed_png_rgb48()
    return [
        Case("png+html", plain_png + b"<html><script>alert(1)</script></html>", "p.png"),
        Case("png+zip", plain_png + zip_of("x.html", "<script>alert(1)</script>"), "p.png"),
        Case("gif+js", encoded(palette, "GIF") + b"*/=1;alert(1)//", "g.gif", "image/gif"),
        Case("gif+zip", encoded(palette, "GIF") + zip_of("a.js", "alert(1)"), "g.gif"),
        Case("jpeg+html", plain_jpeg + b"<html><script>alert(1)</script>", "j.jpg"),
        Case("webp+html", encoded(halves(), "WEBP") + b"<script>alert(1)</script>", "w.webp"),
        Case("png text chunks", html_in_text_chunk(), "t.png", "image/png"),
        Case("jpeg comment", jpeg_with_comment(), "c.jpg", "image/jpeg"),
        Case("jpeg exif 6", exif_rotated("JPEG"), "r.jpg", check=upright(exif_rotated("JPEG"))),
        Case(
            "jpeg exif 3", exif_rotated("JPEG", 3), "r.jpg", check=upright(exif_rotated("JPEG", 3))
        ),
        Case("png exif 8", exif_rotated("PNG", 8), "r.png", check=upright(exif_rotated("PNG", 8))),
        Case(
            "cmyk jpeg",
            encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
            "k.jpg",
            check=rgb_red,
        ),
        Case("16-bit grey png", encoded(gray16, "PNG"), "g16.png", check=eight_bit),
        Case("48-bit rgb png", rgb48, "c48.png", check=eight_bit),
        Case("animated gif", animated("GIF"), "a.gif", check=first_frame),
        Case("animated webp", animated("WEBP"), "a.webp", check=first_frame),
        Case(
            "palette+alpha png",
            encoded(palette, "PNG", transparency=0),
            "pa.png",
            check=see_through,
        ),
        Case(
            "grey+alpha png",
            encoded(Image.new("LA", (8, 8), (0, 0)), "PNG"),
            "la.png",
            check=see_through,
        ),
        Case("1-bit png", encoded(Image.new("1", (8, 8)), "PNG"), "b.png"),
        Case("png named .jpg", plain_png, "photo.jpg", "image/jpeg"),
        Case("jpeg named .gif", plain_jpeg, "anim.gif", "image/gif"),
        Case("zero bytes", b"", "empty.png", "image/png", "refused"),
        Case("truncated png", plain_png[: len(plain_png) // 2], "half.png", outcome="refused"),
        Case("png cut before IEND", plain_png[:-12], "noend.png", outcome="either"),
        Case("truncated jpeg", noisy_jpeg()[:700], "half.jpg", outcome="refused"),
        Case("zero-width png", claimed_png(0, 10), "z.png", outcome="refused"),
        Case("claims 30000x30000", claimed_png(30_000, 30_000), "big.png", outcome="refused"),
        Case("100 Mpx of zeros", pixels_bomb(), "bomb.png", outcome="refused"),
        Case("gif screen 65535²", gif_screen_bomb(), "bomb.gif", outcome="either"),
        Case(
            "html as png",
            b"<html><script>alert(1)</script></html>",
            "x.png",
            "image/png",
            "refused",
        ),
        Case(
            "svg as png",
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
            "x.png",
            "image/svg+xml",
            "refused",
        ),
        Case("html behind GIF89a", lying_header(), "x.gif", "image/gif", "refused"),
        Case("bmp", encoded(halves(), "BMP"), "x.bmp", "image/bmp", "refused"),
        Case("tiff", encoded(halves(), "TIFF"), "x.tiff", "image/tiff", "refused"),
        Case("zip", zip_of("a.png", "not really"), "a.png", "image/png", "refused"),
    ]


def claimed_png_rgb48() -> bytes:
    """A real 48-bit (16 bits a sample) RGB PNG: Pillow writes none, so made by hand."""
    row = b"\x00" + struct.pack(">3H", 60_000, 1_000, 1_000) * 8
    header = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
    return (
        png.SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * 8))
        + chunk(b"IEND", b"")
    )


def noisy_jpeg() -> bytes:
    return encoded(Image.effect_noise((160, 160), 60).convert("RGB"), "JPEG")


def mutations(count: int, seed: int) -> list[Case]:
    """Valid files cut short, bit-flipped or with bytes spliced in: stored clean or 4xx."""
    rng = random.Random(seed)
    sources = [
        encoded(halves(), "PNG"),
        encoded(halves(), "JPEG"),
        encoded(Image.new("P", (8, 8)), "GIF"),
        encoded(halves(), "WEBP"),
        animated("GIF"),
    ]
    cases = []
    for i in range(count):
        data = bytearray(rng.choice(sources))
        how = rng.choice(("cut", "flip", "splice"))
        if how == "cut":
            data = data[: rng.randrange(1, len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.choice((b"<script>alert(1)</script>", b"\x00" * 64, b"\xff\xd9"))
        cases.append(Case(f"mutation {i} ({how})", bytes(data), f"m{i}.bin", outcome="either"))
    return cases


# -- what a stored file must be ------------------------------------------------------------


def assert_clean(data: bytes, mime: str, where: str) -> Image.Image:
    """A stored upload: one whole image of the type it is served as, nothing else in it."""
    for foreign in FOREIGN:
        assert foreign not in data, (where, foreign)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        kind = Image.MIME.get(image.format or "", "")
        assert kind == mime, (where, kind, mime)
        if image.format == "PNG":
            chunks = [kind for kind, _, _ in png._chunks(data, 8)]
            assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", where
            assert png.is_whole(data) and png.cleaned(data) == data, where  # nothing after IEND
            assert set(chunks) <= png.KEPT_CHUNKS, (where, chunks)
        elif image.format == "JPEG":
            assert data.endswith(b"\xff\xd9"), where
            assert not image.getexif() and "comment" not in image.info, where
        elif image.format == "GIF":
            assert data.endswith(b"\x3b") and getattr(image, "n_frames", 1) == 1, where
        return image.copy()


def assert_user_content_headers(response: httpx.Response, where: str) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("content-security-policy") == CONTENT_CSP, where


# -- the upload paths ------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    assets: list[int]  #: the assets stored by this request (for /assets; else found later)


async def via_assets(client: httpx.AsyncClient, case: Case) -> Outcome:
    r = await client.post(
        "/api/v1/assets", files=[("files", (case.filename, case.data, case.mime))]
    )
    return Outcome(r.status_code, [a["id"] for a in r.json()] if r.status_code == 201 else [])


async def via_upload_batch(client: httpx.AsyncClient, case: Case) -> Outcome:
    r = await client.post(
        "/api/v1/batches/upload",
        files=[("files", (case.filename, case.data, case.mime))],
        data={"prompt": "a fox", "width": "64", "height": "64", "name": case.name[:40]},
    )
    return Outcome(r.status_code, [])


async def via_img2img_service(client: httpx.AsyncClient, case: Case) -> Outcome:
    r = await client.post(
        "/api/batch/create",
        files=[("images", (case.filename, case.data, case.mime))],
        data={"prompt": "a fox"},
    )
    return Outcome(r.status_code, [])


async def via_workbook_picture(client: httpx.AsyncClient, case: Case) -> Outcome:
    placeholder = encoded(Image.new("RGB", (8, 8), RED), "PNG")
    book = with_media(workbook_bytes([ZH_HEADER, ["a fox"]], {"E2": placeholder}), case.data)
    r = await client.post("/api/v1/tables/parse", files={"file": ("shots.xlsx", book)})
    # a refused picture is one of the table's problems (422); a table is read as a whole
    return Outcome(r.status_code, [])


PATHS = {
    "POST /api/v1/assets": via_assets,
    "POST /api/v1/batches/upload": via_upload_batch,
    "POST /api/batch/create": via_img2img_service,
    "POST /api/v1/tables/parse (cell picture)": via_workbook_picture,
}


def fuzz_settings(data_dir: Path, database_url: str | None) -> Any:
    storage: dict[str, Any] = {"database_url": database_url} if database_url else {}
    return api_settings(
        data_dir,
        storage=storage,
        auth={"enabled": True},
        compat={"img2img_service": True},
    )


DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


@pytest.mark.parametrize("database", DATABASES)
async def test_hostile_uploads_are_stored_clean_or_refused_on_every_path(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    cases = corpus() + mutations(soak.pick(12, 400), seed=14)
    tried = server_errors = 0
    surprises: list[str] = []
    async with running_api(fuzz_settings(tmp_path / "data", url)) as api:
        _, alice = await api.add_user("alice")
        for path, send in PATHS.items():
            for case in cases:
                outcome = await send(alice, case)
                tried += 1
                server_errors += outcome.status >= 500
                stored = outcome.status < 300
                if outcome.status >= 500 or not (200 <= outcome.status < 500):
                    surprises.append(f"{path} {case.name}: {outcome.status}")
                elif case.outcome == "stored" and not stored:
                    surprises.append(f"{path} {case.name}: refused ({outcome.status})")
                elif case.outcome == "refused" and stored:
                    surprises.append(f"{path} {case.name}: stored")
                if path == "POST /api/v1/assets" and stored:
                    await check_stored(alice, outcome.assets, case)
        checked = await every_asset_is_clean(alice)
        batches, lost = await upload_batches_lost(api, alice)
    tally.add(f"uploads ({LABELS[database]})", inputs=tried, server_errors=server_errors, lost=lost)
    assert server_errors == 0, surprises
    assert not surprises, surprises
    assert lost == 0
    assert checked >= 10 and batches > 0  # (equal files, cleaned, are one asset)


async def check_stored(client: httpx.AsyncClient, assets: list[int], case: Case) -> None:
    for asset_id in assets:
        record = (await client.get(f"/api/v1/assets/{asset_id}")).json()
        r = await client.get(f"/api/v1/assets/{asset_id}/file")
        assert r.status_code == 200, (case.name, r.status_code)
        assert_user_content_headers(r, case.name)
        image = assert_clean(r.content, r.headers["content-type"], case.name)
        assert (record["width"], record["height"]) == image.size, case.name
        if case.check is not None:
            case.check(image, r.content)


async def every_asset_is_clean(client: httpx.AsyncClient) -> int:
    """Every file the user has stored, whichever path stored it; and its thumbnail."""
    offset, seen = 0, 0
    while True:
        page = (await client.get("/api/v1/assets", params={"limit": 100, "offset": offset})).json()
        for asset in page["items"]:
            r = await client.get(asset["url"])
            assert r.status_code == 200
            assert_user_content_headers(r, asset["name"])
            assert_clean(r.content, r.headers["content-type"], asset["name"])
            thumb = await client.get(f"/api/v1/assets/{asset['id']}/thumbnail")
            assert thumb.status_code == 200, (asset["name"], thumb.status_code)
            assert_user_content_headers(thumb, asset["name"])
            seen += 1
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return seen


async def upload_batches_lost(api: Api, client: httpx.AsyncClient) -> tuple[int, int]:
    """The stored inputs feed img2img: (batches, tasks that did not succeed) once every
    batch made from them has finished."""
    listed = (await client.get("/api/v1/batches", params={"limit": 200})).json()["items"]
    lost = 0
    for batch in listed:
        done = await api.wait_finished(batch["id"], client, timeout=60)
        counts = done["counts"]
        lost += counts["total"] - counts["succeeded"]
        assert counts["images"] == counts["succeeded"], batch["name"]
    return len(listed), lost


# -- generated images --------------------------------------------------------------------------


def test_a_generators_png_with_html_appended_is_stored_without_it(
    tmp_path: Path, tally: Tally
) -> None:
    """A generator (a remote server) is not trusted either: what follows IEND, and private
    chunks, are not stored; a PNG cut short is refused (the task fails, nothing is kept)."""
    storage = open_storage(load_settings(None, storage={"data_dir": str(tmp_path)}).storage)
    picture = encoded(halves(), "PNG")
    hostile = [
        picture + b"<html><script>alert(1)</script></html>",
        picture + zip_of("a.html", "<script>alert(1)</script>"),
        html_in_text_chunk(),
    ]
    for i, data in enumerate(hostile):
        stored = storage.write_image(f"images/1/k{i}_0.png", data, "a fox")
        kept = storage.read(stored.path)
        if i < 2:  # the appended file is gone
            assert not any(foreign in kept for foreign in FOREIGN), i
        # a generator's own text chunks are kept (its workflow, say): as text, in a PNG
        # served with nosniff and a sandbox policy, where nothing reads it as a page
        assert png.is_whole(kept) and png.cleaned(kept) == kept
        assert b"prVt" not in kept and png.read_text(kept)["parameters"] == "a fox"
        assert stored.sha256 and (stored.width, stored.height) == (40, 20)
    with pytest.raises(Exception, match="not an image"):
        storage.write_image("images/1/cut_0.png", picture[: len(picture) // 2], "a fox")
    tally.add("uploads (SQLite)", inputs=len(hostile) + 1)


# -- the headers of user content, on every route ------------------------------------------------


@dataclass
class Seeded:
    """Ids to put in the schema's paths: an upload batch's, a sweep's, an asset's."""

    values: dict[str, Any]
    sweep_batch: int
    link: httpx.URL  #: a signed link to an image (drop-in APIs' ``image_url``)


async def seed(api: Api, admin: httpx.AsyncClient) -> Seeded:
    files = [("files", ("fox.png", encoded(halves(), "PNG"), "image/png"))]
    made = await admin.post(
        "/api/v1/batches/upload?wait=true",
        files=files,
        data={"prompt": "a fox", "width": "64", "height": "64"},
    )
    assert made.status_code == 201, made.text
    batch = made.json()
    task = batch["tasks"][0]
    sweep = (await admin.post("/api/v1/batches?wait=true", json=plain_spec(name="grid"))).json()
    await api.ctx.write(mark_sweep, sweep["id"])
    preset = await admin.post("/api/v1/presets", json={"title": "ink", "content": "{prompt}"})
    assert preset.status_code == 201, preset.text
    asset = (await admin.get("/api/v1/assets")).json()["items"][0]
    deck = {"slides": [{"id": 1, "title": "Cover"}], "aspect_ratio": "1:1", "resolution": "1k"}
    slides = (await admin.post("/api/slide/batch/generate", json=deck)).json()
    values = {
        "batch_id": batch["id"],
        "queue_id": batch["id"],
        "task_id": task["id"],
        "image_id": task["images"][0]["id"],
        "asset_id": asset["id"],
        "preset_id": preset.json()["id"],
        "n": 0,
        "z": "m1",
    }
    return Seeded(values, sweep["id"], httpx.URL(slides["results"][0]["image_url"]))


def concrete(path: str, operation: dict[str, Any], seeded: Seeded) -> list[tuple[str, Any]]:
    """(url, query) for each way to call a GET operation of the schema (each ``kind``)."""
    values = dict(seeded.values)
    if "sheet" in path:
        values["batch_id"] = seeded.sweep_batch
    query: dict[str, Any] = {}
    choices: list[dict[str, Any]] = [{}]
    for parameter in operation.get("parameters", []):
        name, schema = parameter["name"], parameter.get("schema", {})
        if parameter["in"] == "path" and "enum" in schema:
            choices = [{name: value} for value in schema["enum"]]
        elif parameter["in"] == "path":
            assert name in values, f"{path}: no value for {{{name}}}; add it to seed()"
        elif parameter.get("required"):
            assert name in values, f"{path}: no value for ?{name}; add it to seed()"
            query[name] = values[name]
    return [(path.format(**values, **choice), query) for choice in choices]


def serves_content(operation: dict[str, Any]) -> bool:
    """Whether an operation answers something other than JSON (a file, a stream, text)."""
    answered = operation.get("responses", {}).get("200", {}).get("content", {})
    return not answered or any(kind != "application/json" for kind in answered)


async def test_every_get_route_sends_nosniff_and_the_sandbox_policy(
    tmp_path: Path, tally: Tally
) -> None:
    """Generated from the live OpenAPI schema, so a new route is checked without a line
    here: every answer (files, thumbnails, inputs, ZIPs, exports, sheets, JSON, event
    streams, errors) is sent with ``nosniff`` and the sandbox policy; every route that
    serves content answers 200 with the ids seeded; and so do signed links, ranges, 304s,
    HEADs and the 401 of a link tampered with."""
    settings = api_settings(
        tmp_path / "data", auth={"enabled": True}, compat={"img2img_service": True, "slides": True}
    )
    tried = 0
    async with serving(settings) as live:
        _, token = await live.app.state.ctx.write(add_user, "root", is_admin=True)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=30) as admin:
            api = Api(live.app, admin, settings)
            seeded = await seed(api, admin)
            schema = (await admin.get("/openapi.json")).json()
            content_routes = 0
            for path, operations in schema["paths"].items():
                if "get" not in operations:
                    continue
                operation = operations["get"]
                for url, query in concrete(path, operation, seeded):
                    status, answer = await head_of(admin, url, query)
                    tried += 1
                    assert status < 500, (url, status)
                    assert_user_content_headers(answer, url)
                    if serves_content(operation):
                        assert status == 200, (url, status)
                        content_routes += 1
            assert content_routes >= 12  # files, thumbnails, inputs, zip, exports, sheet, ...
            tried += await signed_links_and_conditionals(live.url, admin, seeded)
    tally.add("uploads: headers (SQLite)", inputs=tried)


async def head_of(
    client: httpx.AsyncClient, url: str, query: dict[str, Any]
) -> tuple[int, httpx.Response]:
    """The status and headers of a GET (an event stream is left once its headers came)."""
    async with client.stream("GET", url, params=query) as answer:
        return answer.status_code, answer


async def signed_links_and_conditionals(base: str, admin: httpx.AsyncClient, seeded: Seeded) -> int:
    link = seeded.link
    image = f"/api/v1/images/{seeded.values['image_id']}"
    tried = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as anonymous:
        for path in (link.path, link.path.replace("/file", "/thumbnail")):
            opened = await anonymous.get(path, params=link.params)
            assert opened.status_code == 200, (path, opened.status_code)
            assert_user_content_headers(opened, path)
            tampered = await anonymous.get(path, params=dict(link.params) | {"sig": "0" * 64})
            assert tampered.status_code == 401
            assert_user_content_headers(tampered, "a tampered link")
            tried += 2
        ranged = await admin.get(f"{image}/file", headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and len(ranged.content) == 10
        etag = ranged.headers["etag"]
        cached = await admin.get(f"{image}/file", headers={"If-None-Match": etag})
        assert cached.status_code == 304  # the client holds this version: no body
        head = await admin.head(f"{image}/file")
        assert (head.status_code, head.content) == (200, b"")  # the GET's headers only
        for answer, what in ((ranged, "206"), (cached, "If-None-Match"), (head, "HEAD")):
            assert_user_content_headers(answer, what)
    return tried + 3


async def test_the_host_check_answers_with_the_same_headers(tmp_path: Path, tally: Tally) -> None:
    """With auth off, a request for another host name (DNS rebinding) is refused before the
    app: that answer too is nosniff and sandboxed."""
    async with running_api(api_settings(tmp_path / "data")) as api:
        r = await api.client.get("/api/v1/batches", headers={"Host": "evil.example"})
    assert r.status_code == 421
    assert_user_content_headers(r, "421")
    tally.add("uploads: headers (SQLite)", inputs=1)
