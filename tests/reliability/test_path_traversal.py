"""Path traversal in every name-like field, through the API and the CLI.

Each hostile name (``../``, ``..\\``, absolute paths, NUL, ``%2e%2e%2f``, lookalike
slashes and dots, Windows device names, very long names, ...) goes into every field
that may become part of a path or a file name: batch names, task keys, output
``filename_prefix``, upload file names, imported batch files' names, export names,
preset titles, contact-sheet ``z`` values, project ids and ``images_dir`` in a projects
config, and the URL of the static files. The data folder sits in a box of its own; the
box is listed before and after: nothing appears outside the data folder (or the
projects folder a run writes into), every name written inside is one
:func:`~pixelkiln.storage.safe_name` keeps as it is, every ZIP entry and
``Content-Disposition`` file name is a plain name, and each field answers a clear 4xx
(exit 2 for the CLI) or takes the name sanitised; never a 5xx or a traceback. A file
beside the data folder named as an input image, a table's reference or a wildcard list
is refused or never read. The API on SQLite and PostgreSQL; the CLI on SQLite.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from typer.testing import CliRunner

from pixelkiln.cli import app as cli_app
from pixelkiln.storage import safe_name
from tests.integration.api.apikit import SMALL, Api, api_settings, png_bytes, running_api
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.anyio

ESCAPE = "pwned"  #: the last part of every hostile path: found anywhere outside, an escape
SECRET = "secret-beside-0c1d"  #: in a file beside the data folder: read back, an escape


def reads(box: Path) -> list[str]:
    """Names of a file outside the data folder, as input images and wildcard lists."""
    beside = box / "beside.txt"
    return [str(beside), "../beside.txt", "../../beside.txt", f"file://{beside}", "~/.bashrc"]


def payloads(box: Path, soak_long: int) -> dict[str, str]:
    """The hostile names, by what they try."""
    return {
        "dot-dot": f"../../../{ESCAPE}",
        "dot-dot deep": f"a/../../../../{ESCAPE}.png",
        "backslash": f"..\\..\\..\\{ESCAPE}",
        "absolute": str(box / ESCAPE),
        "absolute windows": f"C:\\Windows\\{ESCAPE}",
        "unc": f"\\\\server\\share\\{ESCAPE}",
        "home": f"~/{ESCAPE}",
        "NUL": f"a\x00/../../{ESCAPE}",
        "url-encoded": f"%2e%2e%2f%2e%2e%2f{ESCAPE}",
        "double-encoded": f"%252e%252e%252f{ESCAPE}",
        "division slash": f"..\u2215..\u2215{ESCAPE}",
        "fullwidth": f"\uff0e\uff0e\uff0f\uff0e\uff0e\uff0f{ESCAPE}",
        "dots and slashes": f"....//....//{ESCAPE}",
        "dot": ".",
        "dot-dot alone": "..",
        "hidden": ".htaccess",
        "device CON": "CON",
        "device NUL.png": "NUL.png",
        "device com1": "com1.txt",
        "newline": f"a\r\n{ESCAPE}",
        "right-to-left": f"{ESCAPE}\u202egnp.exe",
        "long": "x" * soak_long,
        "long multibyte": "图" * (soak_long // 3),
    }


# -- the box ---------------------------------------------------------------------------------


def listing(box: Path, inside: tuple[Path, ...]) -> set[str]:
    """Every path under ``box`` but those under the folders ``inside`` (the data folder)."""
    found: set[str] = set()
    for path in box.rglob("*"):
        if not any(path == f or f in path.parents for f in inside):
            found.add(str(path.relative_to(box)))
    return found


def unsafe_names(folder: Path) -> list[str]:
    """Names below ``folder`` that safe_name would change (a traversal, a control
    character, a device name, a name past 255 bytes)."""
    return [
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if safe_name(path.name, "", limit=255) != path.name
    ]


def plain_file_name(name: str) -> bool:
    """Whether a name from a ZIP entry or a Content-Disposition is one plain file name."""
    return bool(name) and name == safe_name(name, "", limit=255)


def disposition_names(response: httpx.Response) -> list[str]:
    """The file names a Content-Disposition header gives (``filename`` and ``filename*``)."""
    header = response.headers.get("content-disposition", "")
    names = re.findall(r'filename="([^"]*)"', header)
    names += [unquote(n) for n in re.findall(r"filename\*=UTF-8''([^;\s]+)", header)]
    return names


@dataclass
class Tried:
    """What the hostile inputs got back."""

    inputs: int = 0
    server_errors: int = 0
    problems: list[str] = field(default_factory=list)

    def answer(self, where: str, r: httpx.Response, ok: tuple[int, ...] = (200, 201)) -> bool:
        """A clear 4xx with one message, or accepted; True when accepted."""
        self.inputs += 1
        if r.status_code >= 500:
            self.server_errors += 1
            self.problems.append(f"{where}: {r.status_code} {r.text[:300]}")
            return False
        if r.status_code in ok:
            return True
        if not 400 <= r.status_code < 500:
            self.problems.append(f"{where}: {r.status_code} {r.text[:300]}")
            return False
        message = _message(r)
        if not message or "Traceback" in r.text:
            self.problems.append(f"{where}: {r.status_code} without a clear message: {r.text}")
        return False

    def names(self, where: str, names: list[str]) -> None:
        bad = [n for n in names if not plain_file_name(n)]
        if bad:
            self.problems.append(f"{where}: names that are not plain file names: {bad}")


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(body.get("message") or error or body.get("detail") or "")


async def raw_get(app: Any, raw_path: str) -> tuple[int, bytes]:
    """GET ``raw_path`` as a client that does not tidy paths sends it (``curl
    --path-as-is``): straight to the ASGI app, dot segments and all."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def _ours(body: bytes) -> bool:
    """Whether a 200 from /static/ is one of the UI's own files (not the database, not
    a file beside the data folder)."""
    static = Path(__import__("pixelkiln.web", fromlist=["x"]).__file__).parent / "static"
    return any(body == f.read_bytes() for f in static.rglob("*") if f.is_file())


# -- through the API -------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> Path:
    folder = tmp_path / "box"
    (folder / "data").mkdir(parents=True)
    (folder / "beside.txt").write_text(SECRET)
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def api(request: pytest.FixtureRequest, box: Path) -> AsyncIterator[Api]:
    """The API on SQLite (its file in the data folder) and on PostgreSQL."""
    data = box / "data"
    url = f"sqlite:///{data / 'kiln.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    settings = api_settings(
        data, storage={"data_dir": str(data), "database_url": url}, compat={"img2img_service": True}
    )
    async with running_api(settings) as running:
        yield running


@pytest.mark.slow
async def test_hostile_names_through_the_api_stay_inside(
    api: Api, box: Path, soak: Any, tally: Tally
) -> None:
    data = box / "data"
    before = listing(box, (data,))
    tried = Tried()
    client = api.client
    made: list[int] = []
    for label, name in payloads(box, soak.pick(300, 5000)).items():
        for where, body in _batch_bodies(name):
            r = await client.post("/api/v1/batches?wait=true", json=body)
            if tried.answer(f"batch {where} {label!r}", r):
                made.append(r.json()["id"])
        files = {"files": (name, png_bytes(), "image/png")}
        r = await client.post("/api/v1/assets", files=files)
        tried.answer(f"asset file name {label!r}", r, ok=(201,))
        r = await client.post("/api/v1/batches/upload?wait=true", files=files, data={"prompt": "p"})
        if tried.answer(f"upload batch file name {label!r}", r):
            made.append(r.json()["id"])
        csv = f"key,prompt,filename_prefix\n{_csv(name)},a fox,{_csv(name)}\n".encode()
        r = await client.post(
            "/api/v1/batches/import?wait=true",
            files={"file": (f"{name}.csv", csv, "text/csv")},
            data={"name": name},
        )
        if tried.answer(f"imported batch file {label!r}", r):
            made.append(r.json()["id"])
        r = await client.post(
            "/api/batch/create", data={"prompt": "p"}, files=[("images", files["files"])]
        )
        tried.answer(f"img2img service image name {label!r}", r)
        r = await client.post("/api/v1/tables/export", json={"name": name, "rows": [{}]})
        if tried.answer(f"table export name {label!r}", r):
            tried.names(f"table export name {label!r}", disposition_names(r))
        r = await client.post("/api/v1/presets", json={"title": name, "content": "c"})
        tried.answer(f"preset title {label!r}", r, ok=(201,))
        for path in (f"/static/{quote(name, safe='/%.')}", f"/static/{quote(name, safe='')}"):
            status, body = await raw_get(api.app, path)
            tried.inputs += 1
            if status >= 500 or (status == 200 and not _ours(body)):
                tried.problems.append(f"static file {label!r} {path}: {status} {body[:100]!r}")
        await _in_paths(api, name, label, tried)
    await _sheets_and_webhooks(client, box, tried)
    await _reads(client, box, tried)
    await _downloads(client, made, tried)
    tally.add("path traversal", inputs=tried.inputs, server_errors=tried.server_errors)
    assert not tried.problems, "\n".join(tried.problems)
    assert listing(box, (data,)) == before, "written outside the data folder"
    assert not unsafe_names(data), unsafe_names(data)
    assert len(made) > 20  # most names were taken, sanitised


def _batch_bodies(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    task = {"prompt": "a fox", "key": "k"}
    yield "name", {"name": name, "defaults": SMALL, "tasks": [task]}
    yield "key", {"name": "b", "defaults": SMALL, "tasks": [{**task, "key": name}]}
    prefix = {**SMALL, "filename_prefix": name}
    yield "filename_prefix", {"name": "b", "defaults": prefix, "tasks": [task]}


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


async def _sheets_and_webhooks(client: httpx.AsyncClient, box: Path, tried: Tried) -> None:
    """Contact sheets of a sweep whose z values are hostile names; webhooks at files."""
    z = [f"../../{ESCAPE}", "CON", "..\\x"]
    body = {
        "name": "sweep",
        "defaults": SMALL,
        "tasks": [{"key": "s", "prompt": "a fox"}],
        "sweep": {"x": {"steps": [10, 20]}, "z": {"model": z}},
    }
    r = await client.post("/api/v1/batches?wait=true", json=body)
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    for value in [*z, f"../../../{ESCAPE}", "%2e%2e%2f"]:
        r = await client.get(f"/api/v1/batches/{batch_id}/sheet.png", params={"z": value})
        tried.answer(f"sheet z {value!r}", r, ok=(200,))
        tried.names(f"sheet z {value!r}", disposition_names(r))
    for url in (f"file://{box}/{ESCAPE}", f"file:///{ESCAPE}", f"../../{ESCAPE}"):
        r = await client.post(
            "/api/v1/batches", json={"name": "w", "webhook": url, "tasks": [{"prompt": "p"}]}
        )
        tried.answer(f"webhook {url!r}", r, ok=())


#: routes whose path takes a name or a number, the hostile name put in its place
IN_PATHS = (
    "/api/v1/batches/1/export.{}",
    "/api/v1/images/1/inputs/{}",
    "/api/v1/batches/{}/images.zip",
    "/api/v1/assets/{}/file",
    "/batches/{}",
)


async def _in_paths(api: Api, name: str, label: str, tried: Tried) -> None:
    """The name in the path of routes that read files: a 4xx (or the page saying it is
    not there), never a file from outside."""
    for template in IN_PATHS:
        for part in (quote(name, safe="/%."), quote(name, safe="")):
            path = template.format(part)
            status, body = await raw_get(api.app, path)
            tried.inputs += 1
            tried.server_errors += status >= 500
            outside = SECRET.encode() in body or body.startswith(b"SQLite format")
            if status >= 500 or outside or (status < 400 and template.startswith("/api")):
                tried.problems.append(f"{template} {label!r}: {status} {body[:100]!r}")


async def _reads(client: httpx.AsyncClient, box: Path, tried: Tried) -> None:
    """A file outside the data folder named as an input image, a table's reference or a
    wildcard list: refused (the API takes uploads only), never read."""
    for name in reads(box):
        for where, value in (("init_image", name), ("reference_images", [name])):
            task = {"prompt": "p", where: value}
            r = await client.post("/api/v1/batches", json={"name": "r", "tasks": [task]})
            tried.answer(f"{where} {name!r}", r, ok=())
        csv = f"prompt,init_image\np,{_csv(name)}\n".encode()
        r = await client.post("/api/v1/batches/import", files={"file": ("r.csv", csv, "text/csv")})
        tried.answer(f"imported init_image {name!r}", r, ok=())
    for prompt in ("__../../beside__", "__../beside__", f"__{box}/beside__"):
        body = {"name": "w", "defaults": SMALL, "tasks": [{"prompt": prompt}]}
        r = await client.post("/api/v1/batches?wait=true", json=body)
        if tried.answer(f"wildcard {prompt!r}", r) and SECRET in r.text:
            tried.problems.append(f"wildcard {prompt!r} read a file outside: {r.text[:200]}")


async def _downloads(client: httpx.AsyncClient, made: list[int], tried: Tried) -> None:
    """Every batch taken: its ZIP's entries and its exports' file names are plain names."""
    for batch_id in made:
        r = await client.get(f"/api/v1/batches/{batch_id}/images.zip")
        tried.answer(f"images.zip of batch {batch_id}", r, ok=(200,))
        tried.names(f"images.zip of batch {batch_id}", disposition_names(r))
        entries = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        tried.names(f"images.zip entries of batch {batch_id}", entries)
        for kind in ("csv", "xlsx"):
            r = await client.get(f"/api/v1/batches/{batch_id}/export.{kind}")
            tried.answer(f"export.{kind} of batch {batch_id}", r, ok=(200,))
            tried.names(f"export.{kind} of batch {batch_id}", disposition_names(r))
        r = await client.get(f"/api/v1/batches/{batch_id}")
        for task in r.json()["tasks"]:
            for image in task["images"]:
                file = await client.get(image["url"])
                tried.answer(f"image {image['id']}", file, ok=(200,))
                tried.names(f"image {image['id']}", disposition_names(file))


# -- through the CLI -------------------------------------------------------------------------


@dataclass
class Kiln:
    """`kiln` in this process (Typer's runner), on a data folder in the box."""

    box: Path
    tried: Tried
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def config(self) -> Path:
        return self.box / "kiln.toml"

    def __call__(self, where: str, *args: str) -> tuple[int, str]:
        """Exit status and output; 0, or 2 with one clear line (never a traceback)."""
        result = self.runner.invoke(cli_app, [*args, "--config", str(self.config)])
        _close_log_files()  # a `kiln` process would, on exit
        out = result.stdout + result.stderr
        self.tried.inputs += 1
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if crashed or "Traceback" in out or result.exit_code not in (0, 1, 2):
            self.tried.server_errors += 1
            self.tried.problems.append(
                f"kiln {where}: exit {result.exit_code} {result.exception!r}"
            )
        elif result.exit_code != 0 and not out.strip():
            self.tried.problems.append(f"kiln {where}: exit {result.exit_code} and not a word")
        return result.exit_code, out


def _close_log_files() -> None:
    logger = logging.getLogger("pixelkiln")
    for handler in logger.handlers:
        handler.close()
    logger.handlers = []


@pytest.fixture
def kiln_logging() -> Iterator[None]:
    """The "pixelkiln" logger as it was before `kiln` (in this process) set it up."""
    logger = logging.getLogger("pixelkiln")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    _close_log_files()
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.mark.slow
@pytest.mark.usefixtures("kiln_logging")
def test_hostile_names_through_the_cli_stay_inside(box: Path, soak: Any, tally: Tally) -> None:
    data, out, projects = box / "data", box / "out", box / "projects"
    box.joinpath("kiln.toml").write_text(
        f'[storage]\ndata_dir = "{data.as_posix()}"\n\n'
        "[scheduler]\npoll_interval = 0.02\nretry_base_delay = 0.01\n\n"
        '[[backends]]\nname = "placeholder"\ntype = "placeholder"\nconcurrency = 4\n'
    )
    tried = Tried()
    kiln = Kiln(box, tried)
    names = payloads(box, soak.pick(300, 5000))
    before = listing(box, (data, out, projects))
    made: list[str] = []
    for label, name in names.items():
        spec = box / "specs" / f"{len(list(box.glob('specs/*')))}.json"
        spec.parent.mkdir(exist_ok=True)
        task = {"key": name, "prompt": "a fox", "filename_prefix": name[:100]}
        spec.write_text(json.dumps({"name": name[:200], "defaults": SMALL, "tasks": [task]}))
        code, said = kiln(f"run, every name {label!r}", "run", str(spec), "--yes", "--quiet")
        batch = re.search(r"Batch ([0-9]+)", said)
        if code == 0 and batch:
            made.append(batch[1])
    assert len(made) > 10, "most names are taken, sanitised"
    for batch in made:
        kiln(f"export {batch} to a folder", "export", str(batch), "--to", str(out / f"f{batch}"))
        kiln(f"export {batch} to a ZIP", "export", str(batch), "--to", str(out / f"{batch}.zip"))
        tried.names(f"kiln export {batch}.zip", zipfile.ZipFile(out / f"{batch}.zip").namelist())
    _cli_sheets(kiln, box, out)
    _cli_reads(kiln, box, out)
    _cli_projects(kiln, box, projects, names)
    tally.add("path traversal", inputs=tried.inputs, server_errors=tried.server_errors)
    assert not tried.problems, "\n".join(tried.problems)
    after = listing(box, (data, out, projects))
    written = {"specs", "specs/wildcards", "specs/wildcards/ok.txt"}  # by this test
    assert after - before <= written | {f"specs/{p.name}" for p in box.glob("specs/*.json")}
    assert not unsafe_names(data), unsafe_names(data)
    assert not unsafe_names(out), unsafe_names(out)


def _cli_sheets(kiln: Kiln, box: Path, out: Path) -> None:
    """`kiln sheet`: one PNG per z value, the values hostile names."""
    spec = box / "specs" / "sweep.json"
    z = [f"../../{ESCAPE}", "CON", "..\\x", "\uff0e\uff0e\uff0fy"]
    sweep = {"x": {"steps": [10, 20]}, "z": {"model": z}}
    task = {"key": "s", "prompt": "a fox"}
    spec.write_text(json.dumps({"name": "sw", "defaults": SMALL, "tasks": [task], "sweep": sweep}))
    code, said = kiln("run a sweep", "run", str(spec), "--yes", "--quiet")
    assert code == 0, said
    batch = re.search(r"Batch ([0-9]+)", said)
    assert batch, said
    kiln("sheet of hostile z values", "sheet", batch[1], "--out", str(out / "sheets"), "--quiet")
    assert len(list((out / "sheets").glob("*.png"))) == len(z)


def _cli_reads(kiln: Kiln, box: Path, out: Path) -> None:
    """A batch file whose wildcards name lists outside its ``wildcards`` folder: refused
    (exit 2) before any file is opened, or taken as text; the file beside is never read."""
    specs = box / "specs"
    (specs / "wildcards").mkdir(exist_ok=True)
    (specs / "wildcards" / "ok.txt").write_text("red\nblue\n")
    for prompt in ("__../../beside__", "__../beside__", f"__{box}/beside__", "__ok__ fox"):
        spec = specs / "wild.json"
        spec.write_text(json.dumps({"name": "w", "defaults": SMALL, "tasks": [{"prompt": prompt}]}))
        code, said = kiln(f"run, wildcard {prompt!r}", "run", str(spec), "--yes", "--quiet")
        batch = re.search(r"Batch ([0-9]+)", said)
        if prompt.startswith("__ok__"):
            assert code == 0 and batch, said  # the folder is read: the refusals mean something
        if code != 0 or batch is None:
            continue
        table = out / f"wild-{batch[1]}.csv"
        kiln(f"export wildcard {prompt!r}", "export", batch[1], "--to", str(table))
        if SECRET in table.read_text(encoding="utf-8"):
            kiln.tried.problems.append(f"wildcard {prompt!r} read the file beside")


def _cli_projects(kiln: Kiln, box: Path, projects: Path, names: dict[str, str]) -> None:
    """`kiln projects run` with hostile project ids and images_dir patterns: each refused
    with a located message, or kept inside the projects folder."""
    folder = projects / "p1"
    folder.mkdir(parents=True)
    (folder / "p1_scenes.json").write_text(json.dumps([{"id": "s1", "prompt": "a fox"}]))
    for label, name in names.items():
        for entry in ({"pid": name}, {"pid": "p1", "images_dir": name}):
            config = box / "specs" / "projects.json"
            config.write_text(
                json.dumps(
                    {
                        "data_dir": str(projects),
                        "logs_dir": str(projects / "logs"),
                        "required_files": [],
                        "output": "project",
                        "default_settings": SMALL,
                        "projects": [entry],
                    }
                )
            )
            what = "pid" if "images_dir" not in entry else "images_dir"
            kiln(f"projects run, {what} {label!r}", "projects", "run", str(config), "-y", "-q")
    copied = list(projects.rglob("*.png"))
    assert copied, "no project ran: the refusals above prove nothing"
    assert all(projects in p.parents for p in copied)
    # a name that leaves the folder on Windows (``..\\x``, ``C:\\x``) is refused on every system
    assert not [p for p in projects.rglob("*") if "\\" in p.name or ":" in p.name]
