"""Generator adapters, looked up by type name.

Built-in backends are registered exactly as a third-party one would be: a tuple
of defaults, plus whatever the ``pixelkiln.backends`` entry-point group adds.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pixelkiln.backends.base import Backend, BackendDeps, BackendFactory
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


def build_backend(settings: BackendSettings, deps: BackendDeps) -> Backend:
    """Build the backend ``settings`` describes; ConfigError for an unknown type."""
    types = backend_types()
    if settings.type not in types:
        raise ConfigError(
            f"backend '{settings.name}': unknown type '{settings.type}'; "
            f"known types: {', '.join(sorted(types))}"
        )
    return _load(types[settings.type])(settings, deps)


def build_backends(settings: list[BackendSettings], deps: BackendDeps) -> dict[str, Backend]:
    """Build every configured backend, keyed by name."""
    return {s.name: build_backend(s, deps) for s in settings}


__all__ = ["Backend", "BackendDeps", "backend_types", "build_backend", "build_backends"]
