"""Fake servers in a child process, controlled from the parent.

In-process fakes share the interpreter lock with the code under test, so their
work (parsing, drawing, encoding PNGs) slows the client down in a way no real
deployment sees: real generators run on other machines. Benchmarks therefore
run their fakes in a :class:`FakeFleet`::

    with FakeFleet([("sdwebui", {"latency": 0.2}), ("sdwebui", {"latency": 0.2})]) as fleet:
        urls = fleet.urls
        fleet.down(0)                      # connections refused, in-flight ones reset
        fleet.set_faults(1, error_rates={500: 0.1})
        fleet.hold(1)                      # generations wait until fleet.release(1)
        fleet.up(0)
        print(fleet.outcomes(1))           # {"ok": 97, "500": 11}

Each entry is ``(kind, keyword arguments of the fake's constructor)``;
``latency``, ``error_rates`` and the other :class:`Faults` fields may be given
directly and build the fake's faults (functions cannot cross the process
boundary, so ``latency`` must be a number).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import Any, Self

from pixelkiln.testing.faults import Faults

#: seconds to wait for the child to start its servers or answer a command
REPLY_TIMEOUT = 60.0
_FAULT_FIELDS = {f.name for f in fields(Faults) if not f.name.startswith("_")}


class FakeFleet:
    """Fake generators served by a child process; see the module docstring."""

    def __init__(self, servers: list[tuple[str, dict[str, Any]]]) -> None:
        self.servers = servers
        self.urls: list[str] = []
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> Self:
        context = multiprocessing.get_context("spawn")  # no inherited threads or loops
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self.servers), daemon=True, name="pixelkiln-fake-fleet"
        )
        self._process.start()
        child.close()
        self._conn = parent
        self.urls = list(self._ask("urls"))
        return self

    def stop(self) -> None:
        if self._conn is not None:
            self._ask("stop")
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(REPLY_TIMEOUT)
            self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def down(self, index: int) -> None:
        """Take server ``index`` down (see :meth:`FakeServer.down`)."""
        self._ask("down", index)

    def up(self, index: int) -> None:
        """Bring server ``index`` back on its port."""
        self._ask("up", index)

    def set_faults(self, index: int, **values: Any) -> None:
        """Change fields of server ``index``'s :class:`Faults` while it runs."""
        self._ask("faults", index, values)

    def hold(self, index: int) -> None:
        """Hold server ``index``'s generations (see :meth:`FakeServer.hold`)."""
        self._ask("hold", index)

    def release(self, index: int, count: int | None = None) -> None:
        """Let ``count`` of server ``index``'s generations go on; without it, stop holding."""
        self._ask("release", index, count)

    def held(self, index: int) -> int:
        """How many of server ``index``'s generations are held now."""
        result: int = self._ask("held", index)
        return result

    def outcomes(self, index: int) -> dict[str, int]:
        """How the generation requests of server ``index`` went: outcome → count."""
        result: dict[str, int] = self._ask("outcomes", index)
        return result

    def _ask(self, *command: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("the fleet is not running")
        self._conn.send(command)
        if not self._conn.poll(REPLY_TIMEOUT):
            raise RuntimeError(f"the fake fleet did not answer {command[0]!r}")
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"the fake fleet failed {command[0]!r}: {value}")
        return value


def _build(kind: str, options: dict[str, Any]) -> Any:
    from pixelkiln.testing import FAKES  # the child imports what it serves

    fault_values = {k: v for k, v in options.items() if k in _FAULT_FIELDS}
    rest = {k: v for k, v in options.items() if k not in _FAULT_FIELDS}
    return FAKES[kind](faults=Faults(**fault_values), **rest)


def _serve(conn: Connection, servers: list[tuple[str, dict[str, Any]]]) -> None:
    """The child: start the fakes, then obey commands until told to stop."""
    fakes = [_build(kind, dict(options)).start() for kind, options in servers]
    try:
        while True:
            command, *args = conn.recv()
            try:
                value = _obey(fakes, command, args)
            except Exception as exc:  # reported to the parent, which raises
                conn.send((False, f"{type(exc).__name__}: {exc}"))
                continue
            conn.send((True, value))
            if command == "stop":
                return
    finally:
        for fake in fakes:
            fake.down()


def _obey(fakes: list[Any], command: str, args: list[Any]) -> Any:
    if command == "urls":
        return [f.url for f in fakes]
    if command == "stop":
        return None
    fake = fakes[args[0]]
    if command == "down":
        fake.down()
    elif command == "up":
        fake.up()
    elif command == "faults":
        for name, value in args[1].items():
            setattr(fake.faults, name, value)
    elif command == "hold":
        fake.hold()
    elif command == "release":
        fake.release(args[1])
    elif command == "held":
        return fake.held
    elif command == "outcomes":
        return dict(Counter(r.outcome for r in fake.requests if r.path in fake.fault_paths))
    else:
        raise ValueError(f"unknown command {command!r}")
    return None
