"""The reliability suite's tally: what its tests did and what it cost, one row per area.

Kept apart from ``tests/reliability/conftest.py`` because the session's one table is
printed by ``tests/conftest.py``: under pytest-xdist only the controller prints, and it
loads the root conftest alone. Each worker hands its rows over at the end of its session
(``workeroutput``); the controller merges them (:meth:`Tally.merge`), so the table is
printed once with every worker's rows, as in a run in one process.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pytest

MODE = os.environ.get("KILN_SOAK", "quick")
if MODE not in ("quick", "full"):
    raise pytest.UsageError(f"KILN_SOAK={MODE!r}: quick or full")


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

    def merge(self, rows: dict[str, dict[str, int]]) -> None:
        """Add another process's rows (:meth:`as_json`'s ``rows``) to this tally's."""
        for area, row in rows.items():
            self.add(area, **{f.name: int(row.get(f.name, 0)) for f in fields(Row)})

    def report(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the table (nothing without rows) and write ``KILN_SOAK_REPORT``'s file."""
        if not self.rows:
            return
        terminalreporter.write_sep("=", "reliability")
        terminalreporter.write_line(self.table())
        report = os.environ.get("KILN_SOAK_REPORT")
        if report:
            Path(report).write_text(json.dumps(self.as_json(), indent=2))


#: the tally of this process (a worker's own rows; the controller's merged ones)
TALLY = Tally()
