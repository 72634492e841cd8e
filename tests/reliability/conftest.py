"""The reliability suite: faults injected, crashes survived, inputs tried, and what they cost.

Every test here records what it did in the session's :class:`Tally` (the ``tally``
fixture), one row per area: faults injected, crashes survived, inputs tried, 5xx
answers, tasks lost, tasks duplicated and credit-ledger drift. At the end of the
session one table is printed (and written as JSON where ``KILN_SOAK_REPORT`` names a
file; tests/reliability/tally.py): the release figure is that the last four columns
are all 0.

``KILN_SOAK=quick`` (the default, what ``.ci/run`` runs) keeps each test bounded;
``KILN_SOAK=full`` (``python -m bench.soak --full``) runs the issue's full sizes. A test
asks ``soak.pick(quick, full)`` for its size. The tests choose their databases
themselves (SQLite and PostgreSQL, by name), so a ``KILN_TEST_DATABASE=postgres`` pass
skips this folder: the default pass already ran it on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from tests.conftest import TEST_DATABASE
from tests.reliability.tally import MODE, TALLY, Tally

__all__ = ["MODE", "Soak", "Tally"]  # what the tests import from here

T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TEST_DATABASE == "sqlite":
        return
    skip = pytest.mark.skip(reason="tests/reliability picks its databases; the default pass ran it")
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)


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
    yield TALLY
