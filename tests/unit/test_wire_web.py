"""The web UI's wire models live in ``pixelkiln.wire.web`` and keep their old address in
``pixelkiln.wire.schemas``: the very same objects, whichever module is imported first,
and the pair stays as light as the wire must be (pydantic only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pixelkiln.wire import schemas, web


def test_every_web_model_is_the_same_object_by_either_name() -> None:
    assert len(web.__all__) >= 12
    for name in web.__all__:
        assert getattr(schemas, name) is getattr(web, name), name
    from pixelkiln.wire.schemas import QueuedBatch, SessionCreate

    assert SessionCreate is web.SessionCreate and issubclass(QueuedBatch, schemas.BatchPublic)


def test_a_name_neither_module_has_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nonesuch'"):
        _ = schemas.Nonesuch
    assert not hasattr(schemas, "SessionCreated")


@pytest.mark.parametrize(
    "first", ["pixelkiln.wire.web", "pixelkiln.wire.schemas", "pixelkiln.client"]
)
def test_either_import_order_works_and_loads_no_server_code(first: str) -> None:
    code = f"""
import importlib, json, sys
importlib.import_module({first!r})
from pixelkiln.wire.schemas import BatchPlan, TableExport
from pixelkiln.wire.web import BatchPlan as Plan
assert BatchPlan is Plan
TableExport.model_validate({{"rows": [{{"prompt": "a fox"}}]}})
print(json.dumps(sorted(m for m in ("fastapi", "starlette", "sqlalchemy") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
