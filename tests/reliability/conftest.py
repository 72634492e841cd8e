"""The reliability suite: faults injected, crashes survived, inputs tried, and what they cost.

Every test here records what it did in the session's :class:`Tally` (the ``tally``
fixture), one row per area: faults injected, crashes survived, inputs tried, 5xx
answers, tasks lost, tasks duplicated and credit-ledger drift. At the end of the
session one table is printed (and written as JSON where ``KILN_SOAK_REPORT`` names a
file): the release figure is that the last four columns are all 0.

``KILN_SOAK=quick`` (the default, what ``.ci/run`` runs) keeps each test bounded;
``KILN_SOAK=full`` (``python -m bench.soak --full``) runs the issue's full sizes. A test
asks ``soak.pick(quick, full)`` for its size. The tests choose their databases
themselves (SQLite and PostgreSQL, by name), so a ``KILN_TEST_DATABASE=postgres`` pass
skips this folder: the default pass already ran it on both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import TEST_DATABASE

T = TypeVar("T")

MODE = os.environ.get("KILN_SOAK", "quick")
if MODE not in ("quick", "full"):
    raise pytest.UsageError(f"KILN_SOAK={MODE!r}: quick or full")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_DATABASE == "sqlite":
        return
    skip = pytest.mark.skip(reason="tests/reliability picks its databases; the default pass ran it")
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)


@dataclass
class Row:
    """What one area of the suite did and what it cost."""

    faults: int = 0  #: faults injected (a SIGKILL, a full disk, a killed connection, ...)
    crashes: int = 0  #: crashes survived: the process or database came back and went on
    inputs: int = 0  #: hostile or generated inputs tried (requests, files, cases)
    server_errors: int = 0  #: 5xx answers (must be 0)
    lost: int = 0  #: tasks that never succeeded (must be 0)
    duplicated: int = 0  #: tasks run twice to success, or images beyond tasks × n (must be 0)
    drift: int = 0  #: credit ledger minus (charges - refunds) (must be 0)


COLUMNS = {
    "faults": "faults injected",
    "crashes": "crashes survived",
    "inputs": "inputs tried",
    "server_errors": "5xx",
    "lost": "lost",
    "duplicated": "duplicated",
    "drift": "ledger drift",
}
MUST_BE_ZERO = ("server_errors", "lost", "duplicated", "drift")


@dataclass
class Tally:
    """The session's rows, by area (``"SIGKILL kiln serve (SQLite)"``, ``"schemathesis
    (PostgreSQL)"``); a test adds to its area's row, so repeated tests sum."""

    rows: dict[str, Row] = field(default_factory=dict)

    def add(
        self,
        area: str,
        *,
        faults: int = 0,
        crashes: int = 0,
        inputs: int = 0,
        server_errors: int = 0,
        lost: int = 0,
        duplicated: int = 0,
        drift: int = 0,
    ) -> None:
        row = self.rows.setdefault(area, Row())
        row.faults += faults
        row.crashes += crashes
        row.inputs += inputs
        row.server_errors += server_errors
        row.lost += lost
        row.duplicated += duplicated
        row.drift += drift

    def table(self) -> str:
        heads = ["area", *COLUMNS.values()]
        lines = [
            [area, *(str(getattr(row, c)) for c in COLUMNS)] for area, row in self.rows.items()
        ]
        total = Row()
        for row in self.rows.values():
            for column in COLUMNS:
                setattr(total, column, getattr(total, column) + getattr(row, column))
        lines.append(["total", *(str(getattr(total, c)) for c in COLUMNS)])
        widths = [max(len(r[i]) for r in [heads, *lines]) for i in range(len(heads))]

        def show(cells: list[str]) -> str:
            first, *rest = cells
            return "  ".join(
                [
                    first.ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)),
                ]
            )

        rule = "-" * len(show(heads))
        verdict = "PASS" if all(getattr(total, c) == 0 for c in MUST_BE_ZERO) else "FAIL"
        return "\n".join(
            [f"reliability ({MODE} mode): {verdict}", show(heads), rule]
            + [show(line) for line in lines[:-1]]
            + [rule, show(lines[-1])]
        )

    def as_json(self) -> dict[str, object]:
        return {"mode": MODE, "rows": {area: asdict(row) for area, row in self.rows.items()}}


_TALLY = Tally()


@dataclass(frozen=True)
class Soak:
    """The suite's mode: how large each test runs."""

    full: bool

    def pick(self, quick: T, full: T) -> T:
        return full if self.full else quick


@pytest.fixture(scope="session")
def soak() -> Soak:
    return Soak(full=MODE == "full")


@pytest.fixture(scope="session")
def tally() -> Iterator[Tally]:
    yield _TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLY.rows:
        return
    terminalreporter.write_sep("=", "reliability")
    terminalreporter.write_line(_TALLY.table())
    report = os.environ.get("KILN_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps(_TALLY.as_json(), indent=2))
