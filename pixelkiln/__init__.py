"""pixelkiln: batch image generation server, library and CLI.

``from pixelkiln import Client, AsyncClient`` gives the HTTP API's Python
clients. They import only httpx, pydantic and :mod:`pixelkiln.wire`, never
FastAPI or SQLAlchemy, so ``import pixelkiln`` stays light for client code.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pixelkiln.client import ApiError, AsyncClient, Client

__all__ = ["ApiError", "AsyncClient", "Client", "__version__"]
