"""Where modules may reach: the client stays light, the faces go through service/.

These read the source (imports as written) and run a fresh interpreter (imports
as they happen), so a new import that breaks a boundary fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pixelkiln
from tests.processes import loaded_after

PACKAGE = Path(pixelkiln.__file__).parent
SERVER_ONLY = ("fastapi", "starlette", "sqlalchemy")
#: ``kiln serve`` is the one place outside api/ that may reach it: to build the app it serves
SERVES_THE_API = {
    "cli/serve.py": {
        "pixelkiln.api",
        "pixelkiln.api.app",
        "pixelkiln.api.create_app",
        "pixelkiln.api.app.create_app",
        # where it may listen: the same loopback rule as the API's own host check
        "pixelkiln.api.hosts",
        "pixelkiln.api.hosts.is_loopback_host",
    }
}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # ``from pixelkiln import api`` names a module too
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(under: str = "") -> list[tuple[str, set[str]]]:
    root = PACKAGE / under
    return [
        (path.relative_to(PACKAGE).as_posix(), _imports(path))
        for path in sorted(root.rglob("*.py"))
    ]


def _reaches(imports: set[str], package: str) -> set[str]:
    return {name for name in imports if name == package or name.startswith(package + ".")}


def test_no_module_outside_api_imports_the_api() -> None:
    offenders = {
        name: sorted(reached - SERVES_THE_API.get(name, set()))
        for name, imports in _modules()
        if not name.startswith("api/") and (reached := _reaches(imports, "pixelkiln.api"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_compat_apis_call_the_service_not_another_router() -> None:
    """A drop-in API reuses a rule through service/, never by calling /api/v1's route functions."""
    found = {
        name: sorted(_reaches(imports, "pixelkiln.api.routes"))
        for name, imports in _modules("api/compat")
    }
    assert {name: names for name, names in found.items() if names} == {}


@pytest.mark.parametrize("folder", ["service", "wire"])
def test_the_core_and_the_wire_types_know_nothing_of_http(folder: str) -> None:
    banned = ("fastapi", "starlette", "pixelkiln.api", "pixelkiln.cli")
    if folder == "wire":
        banned += ("sqlalchemy", "pixelkiln.db", "pixelkiln.service", "pixelkiln.engine")
    found = {
        name: sorted(n for b in banned for n in _reaches(imports, b))
        for name, imports in _modules(folder)
    }
    assert {name: names for name, names in found.items() if names} == {}


def test_credits_are_charged_from_one_module() -> None:
    charging = ("charge", "set_task_costs", "set_costs", "set_own_key")
    users = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "db"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and node.module == "pixelkiln.db.credits"
        and any(alias.name in charging for alias in node.names)
    )
    assert users == ["service/pricing.py"]


@pytest.mark.parametrize(
    "statement",
    [
        "import pixelkiln.client",
        "import pixelkiln; pixelkiln.Client",  # imported when first named (PEP 562)
        "from pixelkiln import AsyncClient, Client",
    ],
)
def test_the_client_pulls_in_neither_fastapi_nor_sqlalchemy(statement: str) -> None:
    loaded = loaded_after(statement)
    assert "pixelkiln.client" in loaded  # the import really happened
    assert [m for m in loaded if m.split(".")[0] in SERVER_ONLY] == []
    assert [m for m in loaded if m.startswith(("pixelkiln.api", "pixelkiln.db"))] == []
