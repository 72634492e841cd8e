"""pixelkiln: batch image generation server, library and CLI.

``from pixelkiln import Client, AsyncClient`` gives the HTTP API's Python
clients; they are imported on first use, so ``import pixelkiln`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelkiln.client import ApiError, AsyncClient, Client

__version__ = "0.1.0"
__all__ = ["ApiError", "AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "ApiError"):
        from pixelkiln import client

        return getattr(client, name)
    raise AttributeError(f"module 'pixelkiln' has no attribute {name!r}")
