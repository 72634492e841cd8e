"""Errors in another tool's envelope, translated by the app's own handlers first.

Each drop-in API answers its errors in its tool's shape (the img2img service:
``{"success": false, "error": …}``; the slide API: ``{"detail": …}``). The
*rule* of what an error means (404, 409, 422 with the field at fault, 402…) is
``pixelkiln.api.errors``'s and stays there: a compat route lets the app's
registered handler answer the exception, then re-wraps that answer. Since
FastAPI resolves dependencies inside the route handler, a bad token (401), a
non-admin (403) and a body that fails validation (422) are re-wrapped too.

>>> router = envelope_router(lambda status, error: JSONResponse({"detail": error["message"]}))
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from pixelkiln.api.errors import error_response

#: renders our error (``{"code", "message", "field"?, "problems"?}``) and its status
Render = Callable[[int, dict[str, Any]], JSONResponse]
_Handler = Callable[[Request, Exception], Awaitable[Response]]


def _handler_for(request: Request, exc: Exception) -> _Handler | None:
    """The app's exception handler for ``exc`` (the nearest class in its MRO)."""
    handlers: dict[Any, _Handler] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


async def _our_error(request: Request, exc: Exception) -> tuple[int, dict[str, Any], Response]:
    """The status and ``error`` object the app answers ``exc`` with (and that answer)."""
    handler = _handler_for(request, exc)
    response = (
        await handler(request, exc)
        if handler is not None
        else error_response(500, "internal", "internal error")
    )
    try:
        error = json.loads(bytes(response.body))["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": "error", "message": "internal error"}
    return response.status_code, error, response


class EnvelopeRoute(APIRoute):
    """A route whose errors ``render`` wraps; subclassed per tool by :func:`envelope_router`."""

    render: ClassVar[Render]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        render = type(self).render

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except Exception as exc:
                status, error, ours = await _our_error(request, exc)
                wrapped = render(status, error)
                for name in ("www-authenticate", "retry-after"):
                    if name in ours.headers:
                        wrapped.headers[name] = ours.headers[name]
                return wrapped

        return handler


def envelope_router(render: Render, **kwargs: Any) -> APIRouter:
    """An APIRouter whose routes answer their errors with ``render``."""
    route_class = type("Route", (EnvelopeRoute,), {"render": staticmethod(render)})
    return APIRouter(route_class=route_class, **kwargs)
