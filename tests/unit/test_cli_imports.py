"""What every ``kiln`` command pays at start: ``import pixelkiln.cli`` leaves out what no
command but one needs (the HTTP client, the fake generators and their web stack, cron
parsing, the retention rules), and the commands that need them still find them."""

from __future__ import annotations

from typer.testing import CliRunner

from pixelkiln.cli import app
from tests.processes import loaded_after

#: imported by ``kiln dev`` (pixelkiln.testing), ``kiln schedule`` (croniter), ``kiln gc`` or
#: client code, when they run: never by the other commands
NOT_AT_START = (
    "pixelkiln.client",
    "pixelkiln.testing",
    "starlette",
    "uvicorn",
    "fastapi",
    "croniter",
    "pixelkiln.service.retention",
)


def test_import_pixelkiln_cli_leaves_out_the_client_and_the_fakes() -> None:
    # every command module, as the app once imported them all (now each when it runs)
    loaded = loaded_after(
        "from pixelkiln.cli import COMMANDS, load_command; [load_command(n) for n in COMMANDS]"
    )
    assert "pixelkiln.cli.plan" in loaded  # the import really happened
    assert [m for m in loaded if m.startswith(NOT_AT_START)] == []


def test_import_pixelkiln_imports_the_client_when_it_is_named() -> None:
    assert "pixelkiln.client" not in loaded_after("import pixelkiln")
    assert "pixelkiln.client" in loaded_after("import pixelkiln; pixelkiln.AsyncClient")
    import pixelkiln
    from pixelkiln.client import ApiError, Client

    assert (pixelkiln.Client, pixelkiln.ApiError) == (Client, ApiError)
    assert {"Client", "AsyncClient", "ApiError"} <= set(dir(pixelkiln))


def test_kiln_dev_still_lists_and_checks_its_commands() -> None:
    listed = CliRunner().invoke(app, ["dev", "--help"])
    assert listed.exit_code == 0 and "fake-backend" in listed.output
    bad = CliRunner().invoke(app, ["dev", "fake-backend", "--port", "0", "--error-rates", "x"])
    assert bad.exit_code == 2 and "--error-rates" in bad.output
    unknown = CliRunner().invoke(app, ["dev", "nope"])
    assert unknown.exit_code == 2 and "No such command 'nope'" in unknown.output
