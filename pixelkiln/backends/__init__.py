"""Generator adapters, looked up by type name.

Built-in backends are registered exactly as a third-party one would be: a tuple
of defaults, plus whatever the ``pixelkiln.backends`` entry-point group adds.

What the API needs to know of a backend (its name, type, whether it takes
users' own keys) comes from :func:`describe_backends`, which builds nothing (no
pool, no HTTP client): it reads ``accepts_user_keys`` from the factory, or from
the class the factory's return annotation names. Only the process that runs
the scheduler builds backends.
"""

from __future__ import annotations

import asyncio
import importlib
import typing
from importlib.metadata import entry_points

import httpx

from pixelkiln.backends.base import Backend, BackendDeps, BackendFactory, BackendInfo
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import ConfigError

#: (type name, "module:factory") of the backends that ship with pixelkiln
DEFAULT_BACKENDS: tuple[tuple[str, str], ...] = (
    ("placeholder", "pixelkiln.backends.placeholder:create"),
    ("sdwebui", "pixelkiln.backends.sdwebui:create"),
    ("comfyui", "pixelkiln.backends.comfyui:create"),
    ("openai", "pixelkiln.backends.openai:create"),
    ("openrouter", "pixelkiln.backends.openrouter:create"),
)

ENTRY_POINT_GROUP = "pixelkiln.backends"


def _load(target: str) -> BackendFactory:
    module_name, _, attr = target.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def backend_types() -> dict[str, str]:
    """Every known backend type → its factory's import path (plugins may override)."""
    types = dict(DEFAULT_BACKENDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        types[ep.name] = ep.value
    return types


def _factory(settings: BackendSettings) -> BackendFactory:
    types = backend_types()
    if settings.type not in types:
        raise ConfigError(
            f"backend '{settings.name}': unknown type '{settings.type}'; "
            f"known types: {', '.join(sorted(types))}"
        )
    return _load(types[settings.type])


def build_backend(settings: BackendSettings, deps: BackendDeps) -> Backend:
    """Build the backend ``settings`` describes; ConfigError for an unknown type."""
    return _factory(settings)(settings, deps)


def _takes_user_keys(factory: BackendFactory) -> bool:
    flag = getattr(factory, "accepts_user_keys", None)
    if flag is None:
        try:
            made = typing.get_type_hints(factory).get("return")
        except (NameError, TypeError):  # an annotation that does not resolve says nothing
            made = None
        flag = getattr(made, "accepts_user_keys", False)
    return bool(flag)


def describe_backends(settings: list[BackendSettings]) -> dict[str, BackendInfo]:
    """What each configured backend is and can do, keyed by name, without building any."""
    return {s.name: BackendInfo(s, _takes_user_keys(_factory(s))) for s in settings}


def build_backends(settings: list[BackendSettings], deps: BackendDeps) -> dict[str, Backend]:
    """Build every configured backend, keyed by name."""
    return {s.name: build_backend(s, deps) for s in settings}


def check_backend_settings(settings: list[BackendSettings]) -> None:
    """Build every configured backend once and drop it: a setting only its backend can
    judge (a WebUI ``api_key`` not ``user:password``) is a :class:`ConfigError` before a
    server starts, as ``kiln run`` and ``kiln worker`` find it, not a traceback from
    the app's start-up."""

    async def build() -> None:
        async with httpx.AsyncClient() as http:
            build_backends(settings, BackendDeps(http=http))

    asyncio.run(build())


__all__ = [
    "Backend",
    "BackendDeps",
    "BackendInfo",
    "backend_types",
    "build_backend",
    "build_backends",
    "check_backend_settings",
    "describe_backends",
]
