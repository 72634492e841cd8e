"""Fuzzed batch files in every format: a clear refusal (exit 2, 422) naming where, or a batch.

Hostile files (formula cells, NUL and control characters, deep nesting, YAML "billion
laughs" and self-containing aliases, huge cells, 100k rows, wrong encodings, truncated
and corrupt workbooks, zip and XML entity bombs) go through the reader, ``kiln run`` and
``kiln submit`` (exit 2, the problems listed, no traceback) and through the API's batch
import and table parse endpoints and the JSON create, on SQLite and PostgreSQL (a 4xx,
never a 5xx). Generated tables and specs (hypothesis, derandomized, bounded by the soak
mode) either load with no control character left in them or are refused with one.
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelkiln.exceptions import SpecError
from pixelkiln.inputs import load_batch_file
from pixelkiln.wire.text import CONTROL
from tests.integration.api.apikit import api_settings, running_api
from tests.processes import KILN, env
from tests.reliability.conftest import Soak, Tally
from tests.sheets import workbook_bytes

CONFIG = '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
MB = 1024 * 1024


def _deep_json(levels: int) -> bytes:
    return (
        '{"name": "d", "vars": {"a": '
        + "[" * levels
        + "]" * levels
        + '}, "tasks": [{"prompt": "a"}]}'
    ).encode()


def _laughs() -> bytes:
    text = "name: lol\nvars:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    return (text + "tasks:\n- prompt: a\n").encode()


def _rewritten(files: dict[str, bytes | Callable[[zipfile.ZipFile, str], None]]) -> bytes:
    """A one-row workbook with some parts replaced (bytes, or written by a function)."""
    base = workbook_bytes([["prompt"], ["a fox"]])
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(base)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename not in files:
                target.writestr(info, source.read(info.filename))
        for name, content in files.items():
            if isinstance(content, bytes):
                target.writestr(name, content)
            else:
                content(target, name)
    return out.getvalue()


def _zip_bomb() -> bytes:
    """A workbook of 300 KB whose sheet inflates to 300 MB (blank padding)."""

    def padded(archive: zipfile.ZipFile, name: str) -> None:
        with archive.open(name, "w") as part:
            part.write(
                b'<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
            )
            for _ in range(300):
                part.write(b" " * MB)
            part.write(b"</sheetData></worksheet>")

    return _rewritten({"xl/worksheets/sheet1.xml": padded})


def _entity_bomb() -> bytes:
    """A workbook whose sheet's XML defines entities that expand a billionfold."""
    entities = '<!ENTITY a "lollollollollol">' + "".join(
        f'<!ENTITY {n} "{("&" + p + ";") * 10}">'
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    sheet = (
        f'<?xml version="1.0"?><!DOCTYPE worksheet [{entities}]><worksheet xmlns='
        '"http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData><row r="1">'
        '<c r="A1" t="inlineStr"><is><t>prompt</t></is></c></row><row r="2"><c r="A2" '
        't="inlineStr"><is><t>&i;</t></is></c></row></sheetData></worksheet>'
    )
    return _rewritten({"xl/worksheets/sheet1.xml": sheet.encode()})


def _rows_csv(count: int) -> bytes:
    return ("prompt,key\n" + "".join(f"a fox {i},k{i}\n" for i in range(count))).encode()


#: name → (file bytes, what the refusal says; None: it loads)
CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "formula.xlsx": (
        lambda: workbook_bytes([["prompt", "key"], ['=B2&" at dusk"', "k"]]),
        'cell A2 holds a formula (=B2&" at dusk"): formula cells are not supported; paste values',
    ),
    "formula-header.xlsx": (
        lambda: workbook_bytes([['="prompt"'], ["a"]]),
        "formula cells are not supported; paste values",
    ),
    "nul.csv": (lambda: b"prompt,key\na\x00fox,k1\n", "cell A2 contains a NUL character"),
    "bell.csv": (
        lambda: b"prompt,key\na fox,k\x07\n",
        "cell B2 contains a control character (U+0007)",
    ),
    "c1.csv": (
        lambda: "prompt\na\x85fox\n".encode(),
        "cell A2 contains a control character (U+0085)",
    ),
    "escape.json": (
        lambda: json.dumps({"name": "e", "tasks": [{"prompt": "a\x1b[31mfox"}]}).encode(),
        "contains a control character (U+001B)",
    ),
    "nul.yaml": (lambda: b'name: n\ntasks:\n- prompt: "a\\0fox"\n', "contains a NUL character"),
    "deep.json": (lambda: _deep_json(10_000), "nested too deeply"),
    "deep-900.json": (
        lambda: _deep_json(900),
        "levels deep (lists and mappings inside each other)",
    ),
    "deep.yaml": (
        lambda: (
            "name: d\nvars: " + "[" * 10_000 + "]" * 10_000 + "\ntasks:\n- prompt: a\n"
        ).encode(),
        "nested too deeply",
    ),
    "deep.toml": (
        lambda: ("name = 'd'\nvars = {a = " + "[" * 10_000 + "]" * 10_000 + "}\n").encode(),
        "nested too deeply",
    ),
    "laughs.yaml": (_laughs, "once its YAML aliases (*name) repeat what they name"),
    "endless.yaml": (
        lambda: b"name: x\ntasks: &t\n- prompt: a\n- *t\n",
        "a batch file cannot be endless",
    ),
    "huge-cell.csv": (
        lambda: b'prompt\n"' + b"a" * 2_000_000 + b'"\n',
        "field larger than field limit",
    ),
    "huge-prompt.json": (
        lambda: json.dumps({"name": "h", "tasks": [{"prompt": "a" * 1_000_000}]}).encode(),
        "at most 20000 characters",
    ),
    "utf16.csv": (lambda: "提示词,编号\n雪中的狐狸,1\n".encode("utf-16"), None),
    "utf16.yaml": (lambda: "name: u\ntasks:\n- prompt: 狐狸\n".encode("utf-16"), None),
    "gbk.csv": (lambda: "提示词,编号\n雪中的狐狸,1\n".encode("gbk"), None),
    "gb18030.csv": (lambda: "提示词,负面提示词\n狐狸𠀀,模糊\n".encode("gb18030"), None),
    "cp1252.csv": (lambda: "prompt\ncafé au lait\n".encode("cp1252"), "is not UTF-8 text"),
    "broken-utf16.json": (lambda: "{}".encode("utf-16") + b"\x00\xd8", "is marked utf-16"),
    "truncated.xlsx": (
        lambda: workbook_bytes([["prompt"], ["a"]])[:700],
        "is not a readable .xlsx",
    ),
    "corrupt.xlsx": (
        lambda: bytes(
            b ^ 0x5A if 200 < i < 900 else b
            for i, b in enumerate(workbook_bytes([["prompt"], ["a"]]))
        ),
        "is not a readable .xlsx",
    ),
    "not-a-zip.xlsx": (lambda: b"PK\x03\x04 not a workbook", "is not a readable .xlsx"),
    "zip-bomb.xlsx": (_zip_bomb, "at most 268,435,456 are read"),
    "entity-bomb.xlsx": (_entity_bomb, "is not a readable .xlsx"),
    "rows.csv": (lambda: _rows_csv(1000), None),
}
#: what each face is shown: a few of every kind (the reader sees them all)
FACE_CASES = [
    "formula.xlsx",
    "nul.csv",
    "bell.csv",
    "laughs.yaml",
    "endless.yaml",
    "deep-900.json",
    "zip-bomb.xlsx",
    "utf16.csv",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    made = {}
    for name, (make, _) in CASES.items():
        made[name] = folder / name
        made[name].write_bytes(make())
    return made


def _refusal(path: Path) -> str | None:
    """The reader's answer: None when the file loads, else its problems in one text."""
    try:
        load_batch_file(path).resolve(default_backend="placeholder")
    except SpecError as exc:
        return " | ".join(str(p) for p in exc.problems)
    return None


def test_hostile_files_are_read_or_refused_with_what_and_where(
    files: dict[str, Path], tally: Tally
) -> None:
    for name, (_, expected) in CASES.items():
        refusal = _refusal(files[name])
        if expected is None:
            assert refusal is None, (name, refusal)
        else:
            assert refusal is not None and expected in refusal, (name, refusal)
            assert "\n" not in refusal, (name, refusal)
    tally.add("batch files (SQLite)", inputs=len(CASES))


def test_a_table_of_100k_rows_loads(tmp_path: Path, soak: Soak, tally: Tally) -> None:
    rows = soak.pick(20_000, 100_000)
    path = tmp_path / "rows.csv"
    path.write_bytes(_rows_csv(rows))
    batch = load_batch_file(path)
    assert len(batch.spec.tasks) == rows and batch.where(rows - 1) == f"row {rows + 1}"
    tally.add("batch files (SQLite)", inputs=1)


# -- generated ---------------------------------------------------------------------------------

#: cell text with the characters that break things: controls, NUL, quotes, separators, CJK
TEXT = st.text(
    st.sampled_from(
        [*"ab ,;\t\"'=+-@\n\r", "\x00", "\x07", "\x0b", "\x1b", "\x7f", "\x85", "狐", "é", "\u2028"]
    ),
    max_size=12,
)


def _control_left(value: Any) -> bool:
    if isinstance(value, str):
        return bool(CONTROL.search(value)) or "\x00" in value
    if isinstance(value, dict):
        return any(_control_left(k) or _control_left(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_control_left(v) for v in value)
    return False


def test_generated_files_load_clean_or_are_refused(
    tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    tried = 0

    @settings(
        max_examples=soak.pick(150, 3000),
        derandomize=True,  # the same cases every run: seeded by the test
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=5),
        st.sampled_from(["csv", "json", "yaml", "toml", "xlsx"]),
    )
    def check(rows: list[tuple[str, str]], kind: str) -> None:
        nonlocal tried
        tried += 1
        path = tmp_path / f"g.{kind}"
        tasks = [{"prompt": p, "key": k} for p, k in rows]
        if kind == "csv":
            out = io.StringIO(newline="")
            import csv

            csv.writer(out).writerows([["prompt", "key"], *rows])
            path.write_bytes(out.getvalue().encode())
        elif kind == "json":
            path.write_text(json.dumps({"name": "g", "tasks": tasks}))
        elif kind == "yaml":
            path.write_text(yaml.safe_dump({"name": "g", "tasks": tasks}, allow_unicode=True))
        elif kind == "toml":
            path.write_text(_toml(tasks))
        else:
            try:
                path.write_bytes(
                    workbook_bytes([["prompt", "key"], *map(list, rows)], formulas=False)
                )
            except Exception:  # openpyxl refuses to write what XML cannot hold
                return
        try:
            spec = load_batch_file(path).spec
        except SpecError as exc:
            assert exc.problems and all(str(p) for p in exc.problems)
            return
        assert not _control_left(spec.model_dump(mode="json")), spec

    check()
    tally.add("batch files (SQLite)", inputs=tried)


def _toml(tasks: list[dict[str, str]]) -> str:
    lines = ['name = "g"']
    for task in tasks:
        lines.append("[[tasks]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in task.items()]
    return "\n".join(lines) + "\n"


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "submit"])
def test_kiln_refuses_hostile_files_with_exit_2_and_no_traceback(
    command: str, tmp_path: Path, files: dict[str, Path], tally: Tally
) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    tried = 0
    for name in FACE_CASES:
        expected = CASES[name][1]
        if expected is None:
            continue
        done = subprocess.run(
            [*KILN, command, str(files[name])],
            cwd=tmp_path,
            env=env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        tried += 1
        err = " ".join(done.stderr.split())
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and expected.split("(")[0] in err, (name, err)
    tally.add("batch files (SQLite)", inputs=tried)


# -- the API, on both databases --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kiln.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


HOSTILE_SPECS: list[Any] = [
    {"name": "c", "tasks": [{"prompt": "a\x00fox"}]},
    {"name": "c\x00", "tasks": [{"prompt": "a fox", "key": "k\x00"}]},
    {"name": "d", "vars": {"a": json.loads("[" * 500 + "]" * 500)}, "tasks": [{"prompt": "a"}]},
    {
        "name": "i",
        "template": "{a}",
        "items": [{"id": "1", "a": json.loads("[" * 500 + "]" * 500)}],
    },
    {"name": "h", "tasks": [{"prompt": "a" * 100_000}]},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_api_answers_hostile_files_and_specs_with_4xx(
    database: str, tmp_path: Path, files: dict[str, Path], tally: Tally
) -> None:
    settings = api_settings(tmp_path / "data", storage={"database_url": database})
    answers: list[tuple[str, int, str]] = []
    async with running_api(settings, run_scheduler=False) as api:
        for name in FACE_CASES:
            data = files[name].read_bytes()
            for route in ("/api/v1/batches/import", "/api/v1/tables/parse"):
                r = await api.client.post(route, files={"file": (name, data)})
                answers.append((f"{route} {name}", r.status_code, r.text[:300]))
        for spec in HOSTILE_SPECS:
            r = await api.client.post("/api/v1/batches", json=spec)
            answers.append((f"create {json.dumps(spec)[:60]}", r.status_code, r.text[:300]))
        # the connection still serves after every refusal (PostgreSQL kept no broken one)
        ok = await api.client.post(
            "/api/v1/batches", json={"name": "ok", "tasks": [{"prompt": "a fox"}]}
        )
        assert ok.status_code == 201, ok.text
    server_errors = [a for a in answers if a[1] >= 500]
    kind = "PostgreSQL" if database.startswith("postgres") else "SQLite"
    tally.add(f"batch files ({kind})", inputs=len(answers), server_errors=len(server_errors))
    assert not server_errors, server_errors
    refused = {label: status for label, status, _ in answers if "utf16" not in label}
    assert all(status in (413, 422) for status in refused.values()), answers
    for label, _, body in answers:
        if "formula.xlsx" in label and "import" in label:
            assert "formula cells are not supported; paste values" in body, body


@pytest.mark.parametrize("kind", ["csv", "json", "yaml"])
def test_kiln_submit_refuses_a_file_over_the_task_limit_before_building_it(
    kind: str, tmp_path: Path, tally: Tally
) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG + "[limits]\nmax_tasks_per_batch = 100\n")
    tasks = [{"prompt": f"a fox {i}"} for i in range(101)]
    path = tmp_path / f"over.{kind}"
    if kind == "csv":
        path.write_bytes(_rows_csv(101))
    elif kind == "json":
        path.write_text(json.dumps({"name": "over", "tasks": tasks}))
    else:
        path.write_text(yaml.safe_dump({"name": "over", "tasks": tasks}))
    done = subprocess.run(
        [*KILN, "submit", path.name],
        cwd=tmp_path,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "101 tasks; at most 100 in one batch ([limits] max_tasks_per_batch)" in err, err
    assert "Traceback" not in done.stderr
    tally.add("batch files (SQLite)", inputs=1)
