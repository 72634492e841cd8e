"""What the HTTP API accepts and returns for the web UI (issue #10): sign-in, the batch
table (dry run, parse, export), the reference library, the queue, backend health.

A part of :mod:`pixelkiln.wire.schemas`, kept apart for size and built on its base
models; ``schemas`` names these too, so either import works. Like it, only pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from pixelkiln.wire.schemas import BatchPublic, Id, _Input, _Public

__all__ = [
    "AssetFromImage",
    "BackendHealthPublic",
    "BackendPlanPublic",
    "BackendsHealthPublic",
    "BatchPlan",
    "ParsedTable",
    "QueueOrder",
    "QueuedBatch",
    "RecentErrorPublic",
    "ServerHealthPublic",
    "SessionCreate",
    "TableCell",
    "TableExport",
]


# -- sign-in ----------------------------------------------------------------------------------


class SessionCreate(_Input):
    """Sign in: a token, pasted once; the answer sets the session cookie."""

    token: str = Field(min_length=1, max_length=200)


# -- the batch table and the reference library ------------------------------------------------


class AssetFromImage(_Input):
    """Make one of my generated images an upload, to use as a reference (``asset:<id>``)."""

    image_id: Id


class BackendPlanPublic(_Public):
    """One backend's share of a plan (see docs/plans.md)."""

    name: str
    tasks: int
    images: int
    megapixels: float  #: images × their pixels, in millions
    #: mean seconds per image the estimate uses; null: never measured on this backend
    seconds_per_image: float | None
    #: measured (at these sizes and steps), scaled (from another size or steps), unknown
    basis: str
    slots: int  #: tasks it runs at once for this batch
    seconds: float | None  #: its estimated time; null: unknown
    money: float | None  #: price_per_image × images + price_per_megapixel × megapixels


class BatchPlan(_Public):
    """What ``POST /api/v1/batches?dry_run=true`` answers: the batch as it would be queued,
    after every check of a real create; nothing stored, nothing charged."""

    tasks: int
    images: int  #: images asked for, all tasks together
    credits: int  #: what the batch would cost its owner now (0 with credits off)
    #: estimated seconds from start to end; null when a backend it uses has no history
    seconds: float | None = None
    #: the backends with no measured speed (why ``seconds`` is null)
    unknown: list[str] = Field(default_factory=list)
    money: float | None = None  #: the priced backends' money; null: no backend has a price
    backends: list[BackendPlanPublic] = Field(default_factory=list)


class ParsedTable(_Public):
    """A batch table read by ``POST /api/v1/tables/parse``: rows to edit, no batch made."""

    name: str  #: the file's name, without its extension
    defaults: dict[str, Any]  #: a spec file's defaults (a table has none)
    #: one per task, the fields it sets (the spec's names); pictures as ``asset:<id>``
    rows: list[dict[str, Any]]


_CellText = Annotated[str, Field(max_length=20_000)]
#: a table cell: text, a number, a list (reference images, a backend chain), or empty
TableCell = _CellText | int | float | Annotated[list[_CellText], Field(max_length=100)] | None


class TableExport(_Input):
    """The rows of a batch table as the browser holds them, to write as an XLSX."""

    name: str = Field("batch", max_length=200)  #: names the file
    #: the headings' language: ``en`` parameter names, ``zh`` Chinese (提示词, 图片比例…)
    headers: str = Field("en", pattern="^(en|zh)$")
    rows: list[dict[str, TableCell]] = Field(max_length=100_000)


# -- the queue --------------------------------------------------------------------------------


class QueuedBatch(BatchPublic):
    """An unfinished batch and its place in the queue."""

    position: int  #: 1-based, in the order the scheduler claims (across pages)


class QueueOrder(_Input):
    """A new order for some or all of my unfinished batches (``PUT /api/v1/queue``).

    The listed batches take the places they already hold, in the order listed: nobody
    else's batch moves, and nobody's is passed.
    """

    #: my queued, running or paused batches, first-to-claim first; each once
    batch_ids: list[Id] = Field(
        min_length=1, max_length=10_000, json_schema_extra={"uniqueItems": True}
    )
    #: admins only: the ids may be any user's (their places are permuted the same way)
    all_users: bool = False


# -- admin: backend health (the web UI's Admin page) ------------------------------------------


class ServerHealthPublic(_Public):
    url: str  #: without credentials; "" for a backend without servers (placeholder, local)
    state: str  #: up, down, or unknown (nothing here tells: no scheduler runs here, no probe)
    latency_ms: float | None = None  #: the probe's round trip (``probe=true`` only)
    error: str = ""  #: why it is down, or what it answered (``probe=true`` only)


class RecentErrorPublic(_Public):
    at: float
    kind: str  #: warning (a failed try, retried) or error (the task failed for good)
    batch_id: int
    task_id: int | None
    message: str


class BackendHealthPublic(_Public):
    name: str
    type: str
    model: str
    state: str  #: up, degraded (some servers down), down, or unknown
    servers: list[ServerHealthPublic]
    servers_up: int | None  #: None: not known here (no scheduler, or no pool to tell)
    down_since: float | None  #: every server down since then
    per_url: int  #: requests in flight per server now
    configured: int  #: ``concurrency`` in kiln.toml
    effective: int  #: tasks that may run on it now
    running: int  #: tasks generating on it now
    rpm: int | None  #: requests per minute allowed; None: no cap
    recent_errors: list[RecentErrorPublic]  #: newest first


class BackendsHealthPublic(_Public):
    scheduler: str  #: starting, running, retrying, stopped; unknown when none runs here
    probed_at: float | None  #: when the servers were asked (``probe=true``), else None
    backends: list[BackendHealthPublic]
