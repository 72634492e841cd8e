"""The docs name only commands the `kiln` CLI has and files the repository holds.

The commands are read from the CLI itself (its Typer app), so a command added
later is known here without editing this test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from pixelkiln.cli import app

REPO = Path(__file__).resolve().parents[2]
#: every page a user reads: the README, the guides, the examples, the samples `kiln init`
#: writes, and their comments
PAGES = sorted(
    [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *(REPO / "docs").rglob("*.md"),
        *(p for p in (REPO / "examples").rglob("*") if p.is_file()),
        *(p for p in (REPO / "pixelkiln" / "samples").rglob("*") if p.is_file()),  # kiln init
    ]
)
#: "kiln run", "kiln backends check": `kiln` as a word (not pixelkiln, kiln.toml, kiln-data)
COMMAND = re.compile(r"(?<![\w./-])kiln((?: [a-z][a-z0-9-]*){1,2})(?![\w.-]*/)")
#: a path inside the repository, named from its root
REPO_PATH = re.compile(r"(?<![\w./-])((?:examples|docs|pixelkiln|tests|bench)/[\w./-]*\w)")
#: a relative link of a Markdown page: [text](other.md#part)
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)")


def cli_commands() -> dict[str, set[str]]:
    """Each top-level command, with its subcommands when it is a group."""
    root = typer.main.get_command(app)
    groups: dict[str, Any] = getattr(root, "commands", {})  # a group's click commands
    assert groups, "the kiln app has no subcommands?"
    return {name: set(getattr(command, "commands", ())) for name, command in groups.items()}


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8", errors="replace")
        for match in pattern.finditer(text):
            found.append((str(page.relative_to(REPO)), match.group(1)))
    return found


def test_the_pages_are_found() -> None:
    assert REPO / "README.md" in PAGES and len(PAGES) >= 5
    assert len(mentions(COMMAND)) > 20 and len(mentions(REPO_PATH)) > 5


def test_every_kiln_command_in_the_docs_exists() -> None:
    commands = cli_commands()
    unknown = []
    for page, words in mentions(COMMAND):
        name, *rest = words.split()
        if name not in commands:
            unknown.append(f"{page}: kiln {name}")
        elif commands[name] and rest and rest[0] not in commands[name]:
            unknown.append(f"{page}: kiln {name} {rest[0]}")
    assert unknown == []


def test_every_repository_path_in_the_docs_exists() -> None:
    found = mentions(REPO_PATH)
    missing = [f"{page}: {path}" for page, path in found if not (REPO / path).exists()]
    assert missing == []


def test_every_relative_link_leads_to_a_file() -> None:
    missing = [
        f"{page}: {target}"
        for page, target in mentions(LINK)
        if not ((REPO / page).parent / target).exists()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("run `kiln worker --id 2` on each machine", [" worker"]),
        ("then `kiln backends check`", [" backends check"]),
        ("pixelkiln reads kiln.toml from kiln-data/", []),
    ],
)
def test_the_command_pattern(text: str, found: list[str]) -> None:
    assert [m.group(1) for m in COMMAND.finditer(text)] == found
