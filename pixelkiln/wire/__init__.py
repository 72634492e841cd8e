"""Types shared by the server and the Python client: what goes over the wire.

:mod:`pixelkiln.wire.schemas` holds the pydantic models of every request and
answer; :mod:`pixelkiln.wire.calls` describes each request of the clients once.
Only pydantic and httpx are imported here, never FastAPI or SQLAlchemy, so
``import pixelkiln.client`` stays light (``tests/unit/test_import_hygiene.py``).
"""
