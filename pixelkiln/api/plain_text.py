"""Control characters refused on every route, wherever a request carries text: 422.

One dependency of the whole app (``create_app``) applies the rule of
:mod:`pixelkiln.wire.text` to the path's values, the query's names and values, the
headers a route reads, a JSON body (as FastAPI has already parsed it) and a form's
fields and file names (:func:`check_form`, also called by the routes that read their
multipart body themselves), before any route runs. So a new route, field or drop-in API is
covered without a check of its own, and the answer is one clear 422 naming the field
(``tasks[0].prompt``, ``query q``) on SQLite and PostgreSQL alike, never a database error.

A batch file's cells (CSV, XLSX, YAML...) are the batch parser's to check: it names
their row and column.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from pixelkiln.api.errors import ApiError
from pixelkiln.problems import json_path
from pixelkiln.wire.text import bad_text, describe, visible

#: the request headers that routes read as text (the others are only compared or ignored)
TEXT_HEADERS = ("idempotency-key", "last-event-id")


async def refuse_control_text(request: Request) -> None:
    """422 for the first text of the request that holds a control character."""
    for name, value in request.path_params.items():
        _check(name, value, "the path's")
    for name, value in request.query_params.multi_items():
        _check(name, name, "a query parameter's name")
        _check(name, value, "query parameter")
    for name in TEXT_HEADERS:
        if name in request.headers:
            _check(name.title(), request.headers[name], "header")
    json_body = getattr(request, "_json", None)  # parsed by FastAPI for a JSON body only
    if json_body is not None:
        check_json(json_body)
    form = getattr(request, "_form", None)  # parsed by FastAPI for a declared form only
    if form is not None:
        check_form(form)


def check_json(data: Any) -> None:
    """422 for the first text or key of a JSON body with a control character; for the
    routes that read their JSON body themselves (a batch spec, read in a thread)."""
    found = bad_text(data)
    if found is not None:
        field = visible(json_path(found[0])) or "body"
        raise ApiError(422, "invalid_request", f"{field} {found[1]}", field=field)


def check_form(form: FormData) -> None:
    """422 for a form's first field (name, text or file name) with a control character;
    for the routes that parse their multipart body themselves (api.uploads.read_form)."""
    for name, value in form.multi_items():
        _check(name, name, "a form field's name")
        if isinstance(value, UploadFile):
            _check(name, value.filename or "", "the file name of")
        else:
            _check(name, value, "form field")


def _check(field: str, value: Any, what: str) -> None:
    """422 naming ``field`` (``what`` says which part of the request it is) when
    ``value`` breaks the rule."""
    reason = describe(value) if isinstance(value, str) else None
    if reason is not None:
        field = visible(field)
        message = f"{what} {field} {reason}"
        raise ApiError(422, "invalid_request", message, field=field)
