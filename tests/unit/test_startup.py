"""What starting ``kiln`` imports: the guard behind its start-up time (bench/startup.py).

``import pixelkiln.cli`` builds the command list from a table and imports no command; a
command imports its own module when it runs. These run a fresh interpreter and read
``sys.modules`` (no timing): a module-level import of the web stack, the spreadsheets or
the engine where a command does not need them fails here by name.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from pixelkiln.cli import COMMANDS, app, load_command
from tests.processes import loaded_after

#: what no ``kiln`` command but ``serve`` and ``dev`` (or an export) needs
WEB_AND_SHEETS = ("fastapi", "starlette", "uvicorn", "jinja2", "openpyxl")
#: what ``import pixelkiln.cli`` needs none of: the command modules and what they use
NOT_AT_START = (
    *WEB_AND_SHEETS,
    "sqlalchemy",
    "httpx",
    "pydantic_settings",
    "PIL",
    "pixelkiln.app",
    "pixelkiln.config",
    "pixelkiln.db",
    "pixelkiln.engine",
    "pixelkiln.service.",
    "pixelkiln.cli.",
)


def test_import_pixelkiln_cli_imports_no_command() -> None:
    loaded = loaded_after("import pixelkiln.cli")
    assert "pixelkiln.cli" in loaded and "typer" in loaded  # the import really happened
    assert [m for m in loaded if m.startswith(NOT_AT_START)] == []


def test_kiln_help_lists_every_command_without_importing_one() -> None:
    code = (
        "import sys\nfrom pixelkiln.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    loaded = loaded_after(code)
    assert [m for m in loaded if m.startswith(NOT_AT_START)] == []
    shown = CliRunner().invoke(app, ["--help"])
    assert shown.exit_code == 0
    listed = shown.output.split("Commands:")[1].split()
    assert [name for name in COMMANDS if name not in listed] == []


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("pixelkiln.cli.batches", ()),  # kiln status, report, cancel, export, init
        ("pixelkiln.cli.plan", ()),
        ("pixelkiln.cli.run", ()),  # kiln run, resume, retry, regenerate
        ("pixelkiln.cli.submit", ()),
        ("pixelkiln.cli.worker", ()),
    ],
)
def test_a_command_module_leaves_out_the_web_stack_and_the_spreadsheets(
    module: str, allowed: tuple[str, ...]
) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    banned = tuple(m for m in WEB_AND_SHEETS if m not in allowed)
    assert [m for m in loaded if m.startswith(banned)] == []


def test_kiln_status_runs_without_the_engine_or_the_inputs(tmp_path: object) -> None:
    """``kiln status`` on an empty data dir: the database and the reports, nothing else."""
    code = (
        "import sys\nfrom pixelkiln.cli import app\n"
        "try:\n    app(['status'])\nexcept SystemExit as exc:\n"
        "    assert not exc.code, exc.code"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(tmp_path),
    )
    assert "No batches yet" in done.stdout
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    assert "pixelkiln.db.batches" in loaded  # it really read the database
    heavy = (*WEB_AND_SHEETS, "httpx", "pixelkiln.engine", "pixelkiln.app", "pixelkiln.inputs")
    assert [m for m in loaded if m.startswith(heavy)] == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_listed_line_is_the_commands_own_help(name: str) -> None:
    """The table's one-line help is what the command says of itself (so `kiln --help`
    shows what it showed when it imported every command), and the command loads under its
    own name."""
    command = load_command(name)
    assert command.name == name
    assert command.get_short_help_str(1000) == COMMANDS[name].summary


def test_an_unknown_command_is_refused_with_a_suggestion() -> None:
    assert CliRunner().invoke(app, ["nope"]).exit_code == 2
    suggested = CliRunner().invoke(app, ["statu"])
    assert suggested.exit_code == 2 and "Did you mean 'status'?" in suggested.output


def test_the_docs_and_tests_still_see_every_command_through_typer() -> None:
    """``typer.main.get_command(app).commands`` (read by tests/unit/test_docs_truth.py)
    builds each command when asked, subcommands included."""
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert list(commands) == list(COMMANDS)
    assert "add" in commands["users"].commands and "fake-backend" in commands["dev"].commands
