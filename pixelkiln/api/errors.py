"""One error shape for every failure: ``{"error": {"code", "message", "field"?, "problems"?}}``.

Our exception tree is translated here, once, into HTTP statuses; so are
FastAPI's validation errors and Starlette's HTTP errors (unknown route, wrong
method). Bad input is always a 4xx with a message a client can show (an
unknown field is answered with the fields valid there, as the CLI does); a 500
means a bug in pixelkiln, and its details stay in the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelkiln.db.credits import BalanceLimitError, InsufficientCreditsError
from pixelkiln.exceptions import (
    DatabaseError,
    IdempotencyKeyReusedError,
    InvalidStateError,
    InvalidValueError,
    KilnError,
    NotFoundError,
    PermissionDeniedError,
    SpecError,
    StorageError,
    UnstorableValueError,
)
from pixelkiln.models import parse_id
from pixelkiln.problems import json_path
from pixelkiln.wire.schemas import MAX_STORED_ID

log = logging.getLogger("pixelkiln.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ApiError(HTTPException):
    """An error answer with a code and (maybe) the field at fault.

    A subclass of Starlette's HTTPException so that FastAPI passes it through
    unchanged even when raised while the request body is being read.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        problems: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.code = code
        self.message = message
        self.field = field
        self.problems = list(problems)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    problems: Sequence[dict[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    if problems:
        error["problems"] = list(problems)
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _field_of(loc: Sequence[Any]) -> str:
    """("body", "tasks", 2, "seed") → "tasks[2].seed"."""
    return json_path(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)


def _where(loc: Sequence[Any]) -> str:
    """("body", "tasks", 2, ...) → "task 3", as batch files name their tasks."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "body" and parts[1] == "tasks" and isinstance(parts[2], int):
        return f"task {parts[2] + 1}"
    return ""


def _message(request: Request, error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "extra_forbidden" and loc:
        known = ", ".join(_known_fields(request, loc)) or "none"
        return f"unknown field '{loc[-1]}'; known fields are: {known}"
    return str(error.get("msg", "")).removeprefix("Value error, ")


def _known_fields(request: Request, loc: Sequence[Any]) -> list[str]:
    """The fields valid beside the unknown one at ``loc``: the body's model, followed along it."""
    body = getattr(request.scope.get("route"), "body_field", None)
    if body is None or loc[0] != "body":
        return []
    model = _model_in(body.field_info.annotation)
    for part in loc[1:-1]:
        if model is None:
            return []
        if not isinstance(part, int):  # an int indexes a list of the model already found
            field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
            model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: itself, or inside Optional/list/Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "where": _where(e.get("loc", ())),
            "field": _field_of(e.get("loc", ())),
            "message": _message(request, e),
        }
        for e in exc.errors()
    ]
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return error_response(422, "invalid_request", message, first["field"] or None, problems)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ApiError):
        return error_response(
            exc.status_code, exc.code, exc.message, exc.field, exc.problems, exc.headers
        )
    code = _CODES.get(exc.status_code, "error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return error_response(405, code, message, headers=headers)
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


#: the methods a 405's ``Allow`` may name, in the order it names them
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette's own 405 names only those of
    the first route whose path matched, and a path often has a route per method)."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _kiln(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, SpecError):
        return _spec_error(exc)
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, InvalidStateError):
        return error_response(409, "invalid_state", str(exc))
    if isinstance(exc, PermissionDeniedError):
        return error_response(403, "forbidden", str(exc))
    if isinstance(exc, InvalidValueError):
        problems = [
            {"where": p.where, "field": p.field, "message": p.message} for p in exc.problems
        ]
        return error_response(422, "invalid_request", str(exc), exc.field, problems)
    if isinstance(exc, IdempotencyKeyReusedError):
        return error_response(422, "idempotency_key_reused", str(exc), "Idempotency-Key")
    if isinstance(exc, InsufficientCreditsError):
        return error_response(402, "insufficient_credits", str(exc))
    if isinstance(exc, BalanceLimitError):
        return error_response(422, "balance_limit", str(exc), "amount")
    if isinstance(exc, UnstorableValueError):
        if any(_beyond_any_id(v, MAX_STORED_ID) for v in request.path_params.values()):
            # an id past a 32-bit column (PostgreSQL's integer) names nothing, as on SQLite
            return error_response(404, "not_found", "no such object: the id is out of range")
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, DatabaseError):
        log.error("database unavailable: %s", exc)
        return error_response(503, "unavailable", "the database is busy or unreachable; retry")
    if isinstance(exc, StorageError):
        log.error("storage unavailable: %s", exc)
        return error_response(503, "unavailable", "the image storage cannot be reached; retry")
    log.error("unexpected %s: %s", type(exc).__name__, exc)
    return error_response(500, "internal", "internal error")


def _spec_error(exc: SpecError) -> JSONResponse:
    """Every problem of a batch at once, in one 422.

    A value that does not fit the schema is named by its path in the body
    (``tasks[0].n``) and answered ``invalid_request``, as FastAPI's own validation was.
    """
    problems = [
        {"where": p.where, "field": p.field if p.path is None else p.path, "message": p.message}
        for p in exc.problems
    ]
    first = exc.problems[0] if exc.problems else None
    if first is not None and first.path is not None:
        return error_response(422, "invalid_request", str(exc), first.path or None, problems)
    field = first.field if first and first.field else None
    return error_response(422, "invalid_spec", str(exc), field, problems)


def _beyond_any_id(value: object, limit: int | None = None) -> bool:
    """A whole number (any sign) too large to be an id (or above ``limit``)."""
    digits = str(value).strip().lstrip("+-")
    if not (digits.isascii() and digits.isdigit()):
        return False
    return parse_id(digits, low=0) is None or (limit is not None and int(digits) > limit)


async def _overflow(request: Request, exc: Exception) -> JSONResponse:
    """Last resort for a number too large for the database's 64-bit integers.

    The bounded types (``IdPath``, ``Id``, ``Offset``…) keep such numbers out; a route
    that misses them must still not answer 500. A path id that large names nothing: 404.
    """
    log.warning("out-of-range number reached the database: %s", exc, exc_info=exc)
    if any(_beyond_any_id(v) for v in request.path_params.values()):
        return error_response(404, "not_found", "no such object: the id is out of range")
    return error_response(422, "invalid_request", "a number in the request is out of range")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(KilnError, _kiln)
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """Refuse request bodies above their limit with 413, declared or streamed (chunked).

    Multipart bodies (images, spooled to disk by the form parser) may be up to
    ``max_bytes``; any other body is parsed in memory, so it gets ``max_other``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_other: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_other = max_other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        limit = self.max_bytes if multipart else min(self.max_bytes, self.max_other)
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "bad_request", "invalid Content-Length")(
                    scope, receive, send
                )
                return
            if int(declared) > limit:
                await _too_large(limit)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "too_large", _too_large_message(limit))
            return message

        await self.app(scope, limited, send)


def _too_large_message(limit: int) -> str:
    return f"request body is larger than {limit:,} bytes"


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "too_large", _too_large_message(limit))
