"""``kiln backends check``: probe every server of the configured backends.

For each server: can we reach it, how long the probe took, which models it
offers, and what went wrong if anything. The probe is the backend's
``list_models`` call (WebUI ``sd-models``, ComfyUI ``models/checkpoints``,
``/models`` of the OpenAI-compatible APIs), so a wrong key shows up as an
error on a reachable server. Backends without servers (``placeholder``,
local pipelines) are reported as local.

>>> reports = await check_backends(settings, ["sd"])
>>> print_reports(reports)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table

from pixelkiln.backends import build_backend
from pixelkiln.backends.base import BackendDeps
from pixelkiln.backends.transport import shared_client
from pixelkiln.config import BackendSettings, Settings
from pixelkiln.exceptions import BackendError, ConfigError, RejectedInputError

#: longest a single probe may take, whatever the backend's own timeout
PROBE_TIMEOUT = 10.0
#: models listed per server in the table before "…"
SHOWN_MODELS = 3


@dataclass(frozen=True)
class ServerReport:
    """What probing one server found."""

    backend: str  #: backend name from the config
    type: str  #: backend type (sdwebui, comfyui, …)
    url: str  #: server base URL without credentials; "(local)" for serverless backends
    reachable: bool  #: it answered (even with an error such as a bad key)
    latency_ms: float | None  #: probe round trip; None when unreachable
    models: tuple[str, ...] = ()  #: models it offers, as the server names them
    error: str = ""  #: why it cannot be used, "" when it can

    @property
    def ok(self) -> bool:
        return self.reachable and not self.error


async def check_backends(
    settings: Settings, names: list[str] | None = None, *, http: httpx.AsyncClient | None = None
) -> list[ServerReport]:
    """Probe every server of the backends named (all when ``names`` is empty or None).

    Raises :class:`ConfigError` for a name that is not configured.
    """
    selected = _select(settings.effective_backends(), names)
    client = http or shared_client(timeout=PROBE_TIMEOUT)
    try:
        groups = await asyncio.gather(*(_check_one(s, BackendDeps(client)) for s in selected))
    finally:
        if http is None:
            await client.aclose()
    return [report for group in groups for report in group]


def _select(backends: list[BackendSettings], names: list[str] | None) -> list[BackendSettings]:
    if not names:
        return backends
    known = {b.name: b for b in backends}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(
            f"no backend named {', '.join(missing)}; configured: {', '.join(sorted(known))}"
        )
    return [known[n] for n in names]


async def _check_one(settings: BackendSettings, deps: BackendDeps) -> list[ServerReport]:
    try:
        backend = build_backend(settings, deps)
    except ConfigError as exc:
        return [ServerReport(settings.name, settings.type, "", False, None, error=str(exc))]
    try:
        pool = getattr(backend, "pool", None)
        list_models = getattr(backend, "list_models", None)
        if pool is None or list_models is None:
            return [ServerReport(settings.name, settings.type, "(local)", True, 0.0)]
        return list(
            await asyncio.gather(
                *(_probe(settings, server.url, list_models) for server in pool.servers)
            )
        )
    finally:
        await backend.aclose()


async def _probe(
    settings: BackendSettings, url: str, list_models: Callable[[str], Awaitable[list[str]]]
) -> ServerReport:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(min(PROBE_TIMEOUT, settings.timeout)):
            models = await list_models(url)
    except RejectedInputError as exc:  # it answered, but refuses us (bad key, no such route)
        return ServerReport(settings.name, settings.type, url, True, _ms(started), error=str(exc))
    except BackendError as exc:
        return ServerReport(settings.name, settings.type, url, False, None, error=str(exc))
    except TimeoutError:
        return ServerReport(
            settings.name,
            settings.type,
            url,
            False,
            None,
            error=f"no answer within {min(PROBE_TIMEOUT, settings.timeout):g}s",
        )
    return ServerReport(settings.name, settings.type, url, True, _ms(started), tuple(models))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def render_reports(reports: list[ServerReport]) -> Table:
    """A Rich table of the reports, one row per server."""
    table = Table(title="Backends", show_lines=False)
    for column in ("backend", "type", "server", "status", "latency", "models", "error"):
        table.add_column(column, overflow="fold")
    for r in reports:
        status = "[green]ok[/]" if r.ok else "[yellow]answers[/]" if r.reachable else "[red]down[/]"
        latency = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
        models = ", ".join(r.models[:SHOWN_MODELS])
        if len(r.models) > SHOWN_MODELS:
            models += f", … ({len(r.models)} in all)"
        table.add_row(r.backend, r.type, r.url, status, latency, models, r.error)
    return table


def print_reports(reports: list[ServerReport], console: Console | None = None) -> None:
    """Print :func:`render_reports` (to ``console``, default stdout)."""
    (console or Console()).print(render_reports(reports))


def all_ok(reports: list[ServerReport]) -> bool:
    """Whether every server is usable (for the command's exit status)."""
    return all(r.ok for r in reports)
