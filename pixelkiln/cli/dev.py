"""``kiln dev``: developer tools, mounted without importing them.

Its commands live in :mod:`pixelkiln.testing.cli` (the fake generators, with their web
server stack: starlette, uvicorn, multiprocessing). Every ``kiln`` command imports this
package's command groups to build its parser, so ``kiln dev`` is a group whose commands
are imported when one of them is listed or run, not when ``kiln plan`` starts.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import typer
from typer.core import TyperGroup


class _DevCommands(TyperGroup):
    """A group whose commands are :data:`pixelkiln.testing.cli.dev_app`'s, imported on
    first use (click reads ``commands`` to list, find and suggest them)."""

    _found: MutableMapping[str, Any] | None = None

    @property
    def commands(self) -> MutableMapping[str, Any]:
        if self._found is None:
            from pixelkiln.testing.cli import dev_app

            self._found = typer.main.get_group(dev_app).commands
        return self._found

    @commands.setter
    def commands(self, given: MutableMapping[str, Any]) -> None:
        self._found = dict(given) or None  # none given here: they are dev_app's


dev_app = typer.Typer(
    cls=_DevCommands,
    help="Developer tools: fake generators for demos, tests and benchmarks.",
    no_args_is_help=True,
)
