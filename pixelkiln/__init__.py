"""pixelkiln: batch image generation server, library and CLI.

``from pixelkiln import Client, AsyncClient`` gives the HTTP API's Python
clients. They import only httpx, pydantic and :mod:`pixelkiln.wire`, never
FastAPI or SQLAlchemy, so ``import pixelkiln`` stays light for client code.

They are imported when first named (PEP 562): ``import pixelkiln.cli`` (every
``kiln`` command starts with it) and the server do not pay for the client's
imports they never use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pixelkiln.client import ApiError, AsyncClient, Client

__all__ = ["ApiError", "AsyncClient", "Client", "__version__"]

#: the names this package gives from :mod:`pixelkiln.client`, imported on first use
_CLIENT = frozenset({"ApiError", "AsyncClient", "Client"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        from pixelkiln import client

        value = getattr(client, name)
        globals()[name] = value  # the next use is a plain attribute
        return value
    raise AttributeError(f"module 'pixelkiln' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT})
