"""The OpenAPI schema as the server really answers: what FastAPI derives, plus what every
route shares and no route spells out.

FastAPI documents what a route declares. Some answers come from the app around the
routes, the same for each of them, and are added here once:

- the bearer token (``securitySchemes``), on every operation that takes one;
- errors any route may answer: 401, 403 and 429 (a token, its rights, failed tokens
  from one address), 404, 422 (bad values, control characters: pixelkiln.api.plain_text),
  503 (the database or storage unreachable), and 400/413 where a body is sent (not
  parseable, too large), each in the error shape of its API (ours, or a drop-in's);
- the text rule of :mod:`pixelkiln.wire.text` as a ``pattern`` on every string of a
  request, so that a client (or a fuzzer) knows that a control character is refused;
  where a text may not be empty, it may not be blank either (text is stripped first).

>>> app.openapi = lambda: complete_schema(app, [('', health)], tokens=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from pixelkiln.wire.text import NONBLANK, PATTERN

BEARER = "bearer"
#: what each shared status means, as its description
SHARED = {
    400: "The body cannot be parsed (not JSON, a broken form)",
    401: "No token, or a token that is not valid",
    403: "The token may not do this (an admin's route; another origin's cookie)",
    404: "No such object, or not yours",
    409: "Not in a state that allows this (a finished batch cancelled, ...)",
    413: "The body is larger than the server takes",
    422: "A value is not valid (the field is named), or text holds a control character",
    429: "Too many failed tokens from this address: wait Retry-After seconds",
    503: "The database or the image storage cannot be reached now: retry",
}
#: a drop-in API's path prefix → its error body's component (pixelkiln.api.compat)
ENVELOPES = {
    "/api/slide/": "SlideError",
    "/api/batch/": "ServiceError",
    "/api/admin/": "ServiceError",
}
_ENVELOPE_SCHEMAS: dict[str, dict[str, Any]] = {
    "SlideError": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {"type": "string"},
            "code": {"type": ["string", "null"]},
            "problems": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}},
        },
    },
    "ServiceError": {
        "type": "object",
        "required": ["success", "error", "message", "code"],
        "properties": {
            "success": {"type": "boolean", "const": False},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "code": {"type": "string"},
            "field": {"type": "string"},
            "problems": {"type": "array", "items": {"$ref": "#/components/schemas/Problem"}},
        },
    },
}


def _json_value_schemas() -> dict[str, Any]:
    """Any JSON value whose text (keys too) keeps the text rule: for an object's other
    fields (a drop-in's ``extra``, a batch's ``vars``), which the rule reaches too."""
    ref = {"$ref": "#/components/schemas/JsonValue"}
    return {
        "JsonValue": {
            "anyOf": [
                {"type": "string", "pattern": PATTERN},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
                {"type": "array", "items": ref},
                {
                    "type": "object",
                    "propertyNames": {"pattern": PATTERN},
                    "additionalProperties": ref,
                },
            ]
        },
    }


_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def complete_schema(
    app: FastAPI,
    open_routers: Sequence[tuple[str, APIRouter]],
    *,
    tokens: bool,
    max_concurrency: int,
) -> dict[str, Any]:
    """``app``'s schema with the shared answers, the token and the text rule added (once;
    cached in ``app.openapi_schema`` as FastAPI's own). ``open_routers``: the routers
    (with the prefix each is included at) whose routes take no token (/healthz, signing
    in); ``tokens``: whether the others need one (``[auth] enabled``);
    ``max_concurrency``: the highest global concurrency an admin may set (``[server]``)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("Problem", _problem_schema(schemas))
    schemas.update(_ENVELOPE_SCHEMAS)
    schemas.update(_json_value_schemas())
    token_free = _operations_of(open_routers)
    if tokens:
        components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
    for path, method, operation in _operations(schema):
        guarded = (path, method) not in token_free
        _add_shared_answers(path, method, operation, guarded=guarded, tokens=tokens)
        if guarded and tokens:
            operation["security"] = [{BEARER: []}]
    for name in ("PresetCreate", "PresetUpdate"):  # checked as a batch's defaults are
        found = schemas.get(name, {}).get("properties", {})
        if "params" in found and "Params" in schemas:
            params = {"$ref": "#/components/schemas/Params"}
            found["params"] = (
                params if name == "PresetCreate" else {"anyOf": [params, {"type": "null"}]}
            )
    for name in ("ConcurrencyUpdate", "ConcurrencyBody"):  # this server's cap
        found = schemas.get(name, {}).get("properties", {}).get("concurrency")
        if found is not None:
            found["maximum"] = max_concurrency
    _add_text_rule(schema)
    app.openapi_schema = schema
    return schema


def _problem_schema(schemas: dict[str, Any]) -> dict[str, Any]:
    found = schemas.get("ProblemPublic")
    if found is not None:
        return {"$ref": "#/components/schemas/ProblemPublic"}
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in ("where", "field", "message")},
    }


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def _operations_of(routers: Sequence[tuple[str, APIRouter]]) -> set[tuple[str, str]]:
    """The (path, method) of each route of ``routers`` (each included at its prefix)."""
    return {
        (prefix + route.path_format, method.lower())
        for prefix, router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


def _error_body(path: str) -> dict[str, Any]:
    """Our error shape; a drop-in API's, or ours where no route of it matched (an id
    that is not a number: the app answers before the drop-in's route is reached)."""
    ours = {"$ref": "#/components/schemas/ErrorBody"}
    name = next((c for prefix, c in ENVELOPES.items() if path.startswith(prefix)), None)
    shape = ours if name is None else {"anyOf": [{"$ref": f"#/components/schemas/{name}"}, ours]}
    return {"application/json": {"schema": shape}}


def _add_shared_answers(
    path: str, method: str, operation: dict[str, Any], *, guarded: bool, tokens: bool
) -> None:
    answers = operation.setdefault("responses", {})
    statuses = [404, 422, 503]
    if guarded:
        statuses += [401, 403, 429] if tokens else [403]
    if "requestBody" in operation:
        statuses += [400, 413]
    if method != "get":
        statuses.append(409)
    for status in sorted(statuses):
        answer = answers.setdefault(str(status), {"description": SHARED[status]})
        answer["content"] = _error_body(path)  # a drop-in's shape replaces FastAPI's guess
        if status == 429:
            answer.setdefault("headers", {}).setdefault(
                "Retry-After",
                {
                    "description": "Seconds to wait before trying a token again",
                    "schema": {"type": "integer", "minimum": 0},
                },
            )


def _add_text_rule(schema: dict[str, Any]) -> None:
    """The text rule on what requests carry: their parameters and bodies, and the
    components these use (answers are checked at the input, so they keep no such text)."""
    components = schema.get("components", {}).get("schemas", {})
    for name in _numbers_as_text():
        for component in (name, f"{name}-Input"):
            if component in components:
                _widen(components[component].get("properties", {}))
    done: set[str] = set()
    for _, _, operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            _patch(parameter.get("schema"), components, done)
        for media in operation.get("requestBody", {}).get("content", {}).values():
            _patch(media.get("schema"), components, done)


def _numbers_as_text() -> set[str]:
    """The models that take a number where they ask for text (``key: 17`` in a batch
    file is the key "17"): their components say so (``type: [string, number]``)."""
    found: set[str] = set()
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for model in stack.pop().__subclasses__():
            stack.append(model)
            if model.model_config.get("coerce_numbers_to_str"):
                found.add(model.__name__)
    return found


def _widen(node: Any) -> None:
    """Every free-text string under ``node`` (not through a $ref) may be a number too."""
    if isinstance(node, list):
        for item in node:
            _widen(item)
    elif isinstance(node, dict):
        if node.get("type") == "string" and "format" not in node and "enum" not in node:
            node["type"] = ["string", "number"]
        for value in node.values():
            _widen(value)


#: string formats whose values are free text (the others have their own grammar)
_TEXT_FORMATS = (None, "password")


def _patch(node: Any, components: dict[str, Any], done: set[str]) -> None:
    """``pattern`` on every free-text string, ``propertyNames`` on every open object."""
    if isinstance(node, list):
        for item in node:
            _patch(item, components, done)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name not in done and name in components:
            done.add(name)
            _patch(components[name], components, done)
    if (
        node.get("type") in ("string", ["string", "number"])
        and node.get("format") in _TEXT_FORMATS
        and not any(key in node for key in ("pattern", "enum", "const", "contentMediaType"))
    ):
        node["pattern"] = NONBLANK if node.get("minLength", 0) >= 1 else PATTERN
    if node.get("type") == "object" and node.get("additionalProperties", True) is not False:
        node.setdefault("propertyNames", {"pattern": PATTERN})
        if node.get("additionalProperties", True) in (True, {}):  # any JSON: its text too
            node["additionalProperties"] = {"$ref": "#/components/schemas/JsonValue"}
    for key, value in node.items():
        if key not in ("example", "examples", "default", "const", "enum"):
            _patch(value, components, done)
