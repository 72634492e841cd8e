"""The HTTP API: ``create_app(settings)`` builds the FastAPI app that ``kiln serve`` runs.

Routes are thin: they parse a request, call :mod:`pixelkiln.service`, and render
the answer with the models of :mod:`pixelkiln.wire`.
"""

from __future__ import annotations

from pixelkiln.api.app import create_app

__all__ = ["create_app"]
