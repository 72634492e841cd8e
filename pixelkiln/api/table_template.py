"""The template an imported table's rows are made items by: the import form's fields.

A table has no top-level keys, so ``POST /api/v1/batches/import`` takes the
template beside the file, as ``kiln run FILE --template ... --var NAME=VALUE``
does: form fields ``template`` (text) and ``vars`` (a JSON object).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import FormData

from pixelkiln.api.errors import ApiError
from pixelkiln.inputs import TableTemplate

__all__ = ["TEMPLATE_FIELDS", "template_of"]

#: the form fields, for the route's OpenAPI description
TEMPLATE_FIELDS: dict[str, Any] = {
    "template": {
        "type": "string",
        "description": "Makes each row an item: its prompt from its columns, e.g. "
        '"{style}. {title}: {visual_desc}"',
    },
    "vars": {
        "type": "string",
        "description": 'A JSON object of fields every row may use: {"style": "ink"}',
    },
}


def template_of(form: FormData) -> TableTemplate | None:
    """The form's ``template`` and ``vars``; 422 naming the field for a malformed one."""
    text, fields = _text(form, "template"), _text(form, "vars")
    if text is None:
        if fields is not None:
            raise _invalid("vars", "'vars' are fields of a 'template': send one too")
        return None
    if fields is None:
        return TableTemplate(text)
    try:
        parsed = json.loads(fields)
    except ValueError as exc:
        raise _invalid("vars", f"'vars' is not valid JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise _invalid("vars", 'send \'vars\' as a JSON object: {"style": "ink"}')
    return TableTemplate(text, parsed or None)


def _text(form: FormData, name: str) -> str | None:
    """A text field's value; None when absent or blank."""
    values = form.getlist(name)
    if len(values) > 1:
        raise _invalid(name, f"send one '{name}'")
    if not values:
        return None
    value = values[0]
    if not isinstance(value, str):
        raise _invalid(name, f"'{name}' must be a text field, not a file")
    return value.strip() or None


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field=field)
