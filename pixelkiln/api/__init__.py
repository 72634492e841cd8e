"""The HTTP API: ``create_app(settings)`` builds the FastAPI app that ``kiln serve`` runs.

Imported lazily, so ``pixelkiln.api.schemas`` (used by the Python client) does
not pull in FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelkiln.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from pixelkiln.api.app import create_app

        return create_app
    raise AttributeError(name)
