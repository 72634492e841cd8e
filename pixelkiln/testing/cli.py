"""``kiln dev fake-backend``: run a fake generator in the foreground.

For demos, manual testing and benchmarks against something that behaves like
the real server, failures included::

    kiln dev fake-backend --kind sdwebui --port 7860 --latency 0.2 --fail-rate 0.1
    kiln dev fake-backend --kind openai --port 5100 --api-key sk-test --error-rates 429:0.05

``dev_app`` is a Typer sub-app; the main CLI mounts it as ``kiln dev``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from pixelkiln.testing import FAKES
from pixelkiln.testing.faults import Faults, parse_error_rates

dev_app = typer.Typer(
    help="Developer tools: fake generators for demos, tests and benchmarks.",
    no_args_is_help=True,
)


@dev_app.callback()
def dev() -> None:
    """Developer tools: fake generators for demos, tests and benchmarks."""
    # a callback keeps `dev` a command group even while it has a single command


class Kind(StrEnum):
    """The fake generators there are."""

    sdwebui = "sdwebui"
    comfyui = "comfyui"
    openai = "openai"
    openrouter = "openrouter"


@dev_app.command("fake-backend")
def fake_backend(
    kind: Annotated[Kind, typer.Option(help="Which generator to imitate.")] = Kind.sdwebui,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 7860,
    latency: Annotated[float, typer.Option(help="Seconds each generation takes.")] = 0.0,
    fail_rate: Annotated[float, typer.Option(help="Share of requests answered 500.")] = 0.0,
    error_rates: Annotated[
        str, typer.Option(help="More statuses and shares, e.g. '429:0.05,503:0.02'.")
    ] = "",
    hang_rate: Annotated[float, typer.Option(help="Share of requests never answered.")] = 0.0,
    reset_rate: Annotated[float, typer.Option(help="Share of connections reset.")] = 0.0,
    malformed_rate: Annotated[
        float, typer.Option(help="Share of requests answered with broken JSON.")
    ] = 0.0,
    retry_after: Annotated[
        float, typer.Option(help="Retry-After seconds sent with 429 and 503.")
    ] = 1.0,
    api_key: Annotated[
        str | None,
        typer.Option(help="Required key: bearer token, or 'user:password' for sdwebui."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the random faults.")] = None,
    workers: Annotated[int, typer.Option(help="comfyui: prompts run at once.")] = 1,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
) -> None:
    """Serve a protocol-faithful fake generator that returns real PNGs."""
    try:
        rates = parse_error_rates(error_rates)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--error-rates") from exc
    if fail_rate:
        rates[500] = rates.get(500, 0.0) + fail_rate
    faults = Faults(
        latency=latency,
        error_rates=rates,
        hang_rate=hang_rate,
        reset_rate=reset_rate,
        malformed_rate=malformed_rate,
        retry_after=retry_after,
        seed=seed,
    )
    server = FAKES[kind.value](
        host=host, port=port, faults=faults, **_kind_options(kind, api_key, workers)
    )
    server.start()
    typer.echo(
        f"fake {kind.value} listening on {server.url} "
        f"(latency {latency:g}s, errors {rates or 'none'}); Ctrl-C stops it"
    )
    try:
        _wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.down()
        typer.echo(f"served {len(server.requests)} request(s)")


def _kind_options(kind: Kind, api_key: str | None, workers: int) -> dict[str, Any]:
    if kind is Kind.sdwebui:
        return {"auth": api_key}
    if kind is Kind.comfyui:
        return {"workers": workers}
    return {"api_key": api_key}


def _wait(duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
