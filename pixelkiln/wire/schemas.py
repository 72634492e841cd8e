"""What the HTTP API accepts (``*Create``, ``*Update``, ``*Request``) and returns (``*Public``).

These are separate from the tables and the domain records on purpose: the
wire format is a promise to clients and changes only by adding fields. Only
pydantic is imported here, so :mod:`pixelkiln.client` parses responses with
the very models the server validated them against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    StrictBool,
    field_validator,
    model_validator,
)

from pixelkiln.models import BatchStatus, EventType, TaskStatus
from pixelkiln.problems import json_path
from pixelkiln.wire.text import bad_text, visible

if TYPE_CHECKING:  # named here too; loaded on first use (see __getattr__ at the end)
    from pixelkiln.wire.web import AssetFromImage as AssetFromImage
    from pixelkiln.wire.web import BackendHealthPublic as BackendHealthPublic
    from pixelkiln.wire.web import BackendsHealthPublic as BackendsHealthPublic
    from pixelkiln.wire.web import BatchPlan as BatchPlan
    from pixelkiln.wire.web import ParsedTable as ParsedTable
    from pixelkiln.wire.web import QueuedBatch as QueuedBatch
    from pixelkiln.wire.web import QueueOrder as QueueOrder
    from pixelkiln.wire.web import RecentErrorPublic as RecentErrorPublic
    from pixelkiln.wire.web import ServerHealthPublic as ServerHealthPublic
    from pixelkiln.wire.web import SessionCreate as SessionCreate
    from pixelkiln.wire.web import TableCell as TableCell
    from pixelkiln.wire.web import TableExport as TableExport

T = TypeVar("T")

#: the largest integer SQLite and PostgreSQL (bigint) store: a bigger id names no row, and
#: binding one makes the driver raise OverflowError, so every id, offset and cursor is bounded
#: the most credits one grant (or a new user) may carry; balances have their own cap
#: (pixelkiln.db.credits.MAX_BALANCE), so summing a ledger cannot overflow
MAX_GRANT = 10**12
#: the largest fair-share weight a user may have (db.users.check_share; default 1)
MAX_SHARE = 1000.0
#: preset positions are small ordinals; "last + 1" must stay far from MAX_JSON_INT
MAX_POSITION = 1_000_000

#: the largest whole number every JSON reader holds exactly (a double's 53 bits): ids and
#: offsets stay below it (the database's own limit, MAX_ID, is far above any real id), so
#: that a client in JavaScript reads them right and offset + limit never overflows
MAX_JSON_INT = 2**53 - 1
Id = Annotated[int, Field(ge=1, le=MAX_JSON_INT)]  #: a row id
Offset = Annotated[int, Field(ge=0, le=MAX_JSON_INT)]  #: items to skip, or an id to resume after
_T = TypeVar("_T")
#: the largest id a row can have on every database (PostgreSQL's and MySQL's 32-bit INTEGER)
MAX_STORED_ID = 2**31 - 1


def stored_id(value: int, past: _T) -> int | _T:
    """An id from a query as the database can compare it: a number past every id a row can
    have (PostgreSQL refuses it against a 32-bit column, "integer out of range") becomes
    ``past`` — 0 for "this id" (no row has it), None for "below it" (every row),
    :data:`MAX_STORED_ID` for "after it" (none)."""
    return value if value <= MAX_STORED_ID else past


class _Public(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer server may send more fields


class JsonBody(BaseModel):
    """A request body as JSON types it: what the schema says, no guessing.

    Strict (no ``"5"`` or ``true`` for 5, no ``0`` for false), but a whole number written
    ``5.0`` is 5, as JSON Schema counts it an integer; text holds no control character
    (:mod:`pixelkiln.wire.text`: a NUL reaches no database) and the error names where.
    """

    model_config = ConfigDict(str_strip_whitespace=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _as_json(cls, data: Any) -> Any:
        found = bad_text(data)
        if found is not None:
            raise ValueError(f"{visible(json_path(found[0])) or 'the body'} {found[1]}")
        return whole_numbers(data)


def whole_numbers(data: Any) -> Any:
    """``data`` with every float that is a whole number as an int (a float field takes an
    int as it is; an int field would refuse the float)."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, dict):
        return {key: whole_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [whole_numbers(value) for value in data]
    return data


class _Input(JsonBody):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------


class ProblemPublic(_Public):
    where: str = ""  #: "task 3", "row 4", "files[2]"; "" for the whole request
    field: str = ""
    message: str


class ErrorDetail(_Public):
    code: str  #: stable, machine-readable: not_found, invalid_spec, insufficient_credits…
    message: str
    field: str | None = None  #: the request field at fault, when one is
    problems: list[ProblemPublic] = Field(default_factory=list)


class ErrorBody(_Public):
    """Every 4xx and 5xx answer has this body."""

    error: ErrorDetail


# -- batches, tasks, images -------------------------------------------------------------------


class CountsPublic(_Public):
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    images: int


class ImagePublic(_Public):
    id: int
    task_id: int
    batch_id: int
    index: int  #: 0-based within its task
    width: int
    height: int
    bytes: int
    seed: int | None  #: None when the generator takes no seed (OpenAI-compatible APIs)
    url: str  #: the PNG, relative to the server's root
    thumbnail_url: str
    created_at: float
    backend: str = ""  #: the backend that made it
    server: str = ""  #: its server's URL, without credentials; "" for a local generator
    model: str = ""  #: the model used (the backend's configured one when the task named none)
    run: int = 0  #: its task's run that made it (0 = first; each regenerate adds 1)
    superseded: bool = False  #: a newer run of its task replaced it (shown with ``history``)


class TaskPublic(_Public):
    id: int
    batch_id: int
    position: int
    key: str
    status: TaskStatus
    backend: str
    prompt: str  #: the final prompt as sent to the generator
    negative_prompt: str
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    error: str | None  #: why the last try failed
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration: float | None  #: generation seconds of the successful (or last) try
    item: dict[str, Any] | None = None  #: the item the task was made from (``items``)
    run: int = 0  #: times regenerated; ``images`` are the newest run's
    images: list[ImagePublic] = Field(default_factory=list)


class BatchPublic(_Public):
    id: int
    name: str
    status: BatchStatus
    priority: int
    source: str
    owner_id: int | None
    counts: CountsPublic
    progress: float  #: share of tasks finished, 0–1
    eta_seconds: float | None  #: estimated time to the end; None until it can be told
    elapsed_seconds: float | None  #: from the first start to the end (or now)
    created_at: float
    started_at: float | None
    finished_at: float | None
    scheduled_at: float | None
    max_workers: int | None = None  #: at most this many of its tasks generate at once
    delay: float | None = None  #: seconds between starting two of its tasks
    webhook: str | None = None  #: URL POSTed the summary when it ends


class BatchDetail(BatchPublic):
    """A batch with one page of its tasks (every task when created with ``?wait=true``)."""

    tasks: list[TaskPublic] = Field(default_factory=list)
    task_total: int = 0  #: tasks matching the task filter
    task_offset: int = 0
    finished: bool = False  #: the batch reached a final status


class Page(_Public, Generic[T]):
    items: list[T]
    total: int | None = None  #: matches in all pages (None when not counted)
    limit: int
    offset: int = 0
    next_offset: int | None = None  #: offset of the next page; None on the last one
    next_cursor: int | None = None  #: ``before`` value of the next page (images)


class ActiveCount(_Public):
    active: int  #: queued, running or paused batches


class RetryRequest(_Input):
    task_ids: list[Id] | None = Field(None, max_length=10_000)  #: None = every failed task
    include_cancelled: bool = False


class RetryResult(_Public):
    retried: int
    batch: BatchPublic


TaskKey = Annotated[str, Field(min_length=1, max_length=200)]


class RegenerateRequest(_Input):
    """Finished tasks to run again, succeeded ones included: by ``keys`` or by ``task_ids``."""

    # an item's id may be a number (``{"id": 3}``): its key is the text "3" (lax for that)
    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True, strict=False
    )

    keys: list[TaskKey] | None = Field(None, min_length=1, max_length=10_000)
    task_ids: list[Annotated[Id, Strict()]] | None = Field(None, min_length=1, max_length=10_000)
    #: delete the earlier images once the new ones are recorded (default: keep them as history)
    replace: StrictBool = False

    @model_validator(mode="after")
    def _one_way(self) -> RegenerateRequest:
        if (self.keys is None) == (self.task_ids is None):
            raise ValueError("give either keys or task_ids")
        return self


class RegenerateResult(_Public):
    regenerated: int  #: tasks put back in the queue as their next run
    batch: BatchPublic


class ImageInputPublic(_Public):
    role: str  #: init_image or reference_image
    url: str


class ImageDetail(ImagePublic):
    """An image and what made it, as sent: what the backend ignores is left out."""

    key: str
    prompt: str
    negative_prompt: str  #: as sent: "" where the backend takes none
    params: dict[str, Any]  #: the task's, less what the backend ignores; the model used
    batch_name: str
    batch_status: BatchStatus
    inputs: list[ImageInputPublic] = Field(default_factory=list)


class EditRequest(_Input):
    """Re-prompt an image: a new img2img batch from it; the original stays as it is."""

    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    denoise: float | None = Field(None, ge=0, le=1)
    backend: str | None = None
    model: str | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=10)
    name: str | None = Field(None, max_length=200)


class AssetPublic(_Public):
    """An uploaded image. The same bytes uploaded again are the same asset: ``name`` stays
    the first name they came with, ``filename`` is the one of this upload."""

    id: int
    ref: str  #: use as init_image / reference_images in a batch: "asset:<id>"
    filename: str  #: the uploaded name, sanitised (never used as a path)
    name: str  #: the name stored with the asset (its first upload's, sanitised)
    mime: str
    width: int
    height: int
    bytes: int
    sha256: str
    url: str
    thumbnail_url: str  #: a WebP thumbnail (``?size=128|256|512``)
    created_at: float


# -- events -----------------------------------------------------------------------------------


class EventPublic(_Public):
    """One event as sent over SSE (the ``data:`` line) and in batch logs."""

    id: int
    type: EventType
    batch_id: int
    task_id: int | None
    created_at: float
    data: dict[str, Any]


# -- presets ----------------------------------------------------------------------------------


class PresetCreate(_Input):
    title: str = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=20_000)  #: prompt, or template with {prompt}
    negative_prompt: str = Field("", max_length=20_000)
    params: dict[str, Any] = Field(default_factory=dict)  #: default generation parameters
    category: str = Field("", max_length=100)
    position: int | None = Field(None, ge=0, le=MAX_POSITION)  #: default: last in its category
    active: bool = True


class PresetUpdate(_Input):
    title: str | None = Field(None, min_length=1, max_length=200)
    content: str | None = Field(None, min_length=1, max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    params: dict[str, Any] | None = None
    category: str | None = Field(None, max_length=100)
    position: int | None = Field(None, ge=0, le=MAX_POSITION)
    active: bool | None = None


class PresetPublic(_Public):
    id: int
    title: str
    content: str
    negative_prompt: str
    params: dict[str, Any]
    category: str
    position: int
    active: bool
    created_at: float
    updated_at: float


class ReorderRequest(_Input):
    #: preset ids in their new order
    ids: list[Id] = Field(min_length=1, max_length=10_000, json_schema_extra={"uniqueItems": True})

    @field_validator("ids")
    @classmethod
    def _distinct(cls, ids: list[int]) -> list[int]:
        seen: set[int] = set()
        for preset_id in ids:
            if preset_id in seen:
                raise ValueError(f"preset {preset_id} is listed twice")
            seen.add(preset_id)
        return ids


# -- users and credits ------------------------------------------------------------------------


class UserPublic(_Public):
    id: int
    name: str
    is_admin: bool
    active: bool
    created_at: float
    balance: int
    share: float = 1.0  #: weight in fair share among tasks of equal priority


class UserCreate(_Input):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")
    is_admin: bool = False
    credits: int = Field(0, ge=0, le=MAX_GRANT)
    share: float = Field(
        1.0, gt=0, le=MAX_SHARE, description="Weight in fair share (2 gets twice 1's tasks)."
    )


class UserCreated(UserPublic):
    token: str  #: shown this once; only its hash is stored


class UserUpdate(_Input):
    """What an admin changes about a user; fields left out stay as they are."""

    active: bool | None = None
    share: float | None = Field(
        None, gt=0, le=MAX_SHARE, description="Weight in fair share (2 gets twice 1's tasks)."
    )


class GrantRequest(_Input):
    amount: int = Field(
        ge=-MAX_GRANT, le=MAX_GRANT, description="Credits to add (negative to take back)."
    )
    note: str = Field("", max_length=500)


class LedgerEntryPublic(_Public):
    id: int
    delta: int
    reason: str  #: grant, charge or refund
    batch_id: int | None
    note: str
    created_at: float


class CreditsPublic(_Public):
    user_id: int | None  #: None without auth: nothing is charged
    balance: int
    entries: list[LedgerEntryPublic] = Field(default_factory=list)


class ProviderKeyRequest(_Input):
    api_key: SecretStr = Field(min_length=1, max_length=4096)


class ProviderKeyPublic(_Public):
    backend: str
    created_at: float  #: the key itself is never returned


class BackendPublic(_Public):
    name: str
    type: str
    model: str
    credits_per_image: int  #: 0 when credits are off or you stored your own key for it
    own_key: bool  #: your tasks on it run on the key you stored
    takes_own_key: bool  #: you may store your own key for it (hosted APIs)


# -- admin and system -------------------------------------------------------------------------


class BackendConcurrency(_Public):
    """How many tasks one backend may run at once, and why not more."""

    name: str
    per_url: int  #: requests in flight per server now (an admin's value, else configured)
    configured: int  #: ``concurrency`` in kiln.toml
    overridden: bool  #: an admin set ``per_url`` at run time
    servers: int  #: servers (URLs) of the backend
    servers_up: int | None  #: servers not known to be down (None: no scheduler runs here)
    cap: int  #: per_url × servers
    effective: int  #: tasks that may run on it now: min(global, per_url × servers up)
    limited_by: str  #: global, backend or servers_down
    running: int  #: tasks generating on it now


class ConcurrencyPublic(_Public):
    concurrency: int  #: the global limit: tasks running at once over every backend
    max: int  #: the highest global limit an admin may set
    #: the most tasks that can run at once now: min(global, sum of the backends' effective)
    effective: int | None = None
    backends: list[BackendConcurrency] = Field(default_factory=list)


class ConcurrencyUpdate(_Input):
    concurrency: int = Field(ge=1)


class BackendConcurrencyUpdate(_Input):
    concurrency: int = Field(ge=1, le=256, description="Requests in flight per server (URL).")


class DayCount(_Public):
    date: str  #: YYYY-MM-DD (UTC)
    images: int


class BackendStats(_Public):
    name: str
    succeeded: int
    failed: int
    retries: int
    mean_seconds: float | None


class StatsPublic(_Public):
    images_per_day: list[DayCount]
    tasks: dict[str, int]  #: by state
    success_rate: float | None  #: succeeded / (succeeded + failed)
    backends: list[BackendStats]
    queue_depth: int  #: tasks waiting in unfinished batches
    active_batches: int


class SchedulerHealth(_Public):
    """The scheduler of this process (see ``/healthz``)."""

    state: str  #: starting, running, retrying (its steps fail and are retried) or stopped
    stalled_seconds: float  #: how long it has made no progress
    last_error: str  #: the newest failure of one of its steps
    failing: list[str]  #: the parts whose steps fail now
    restarts: int  #: times it was started again after stopping by accident
    work_waiting: bool  #: tasks wait to run (checked only when it looks stalled)


class Health(_Public):
    status: str  #: ok, or unhealthy (HTTP 503) when the scheduler cannot go on
    version: str
    scheduler: SchedulerHealth | None = None  #: None when no scheduler runs in this process


# -- webhooks ---------------------------------------------------------------------------------


class WebhookDeliveryPublic(_Public):
    """One batch end's delivery to the batch's webhook (``GET /batches/{id}/webhooks``)."""

    id: int
    batch_id: int
    event_id: int  #: the ``done`` event of the batch end it reports
    url: str
    status: str  #: pending (waiting for a try), delivered, failed (given up)
    attempts: int  #: tries started so far
    next_attempt_at: float | None = None  #: when the next try may start (pending only)
    response_code: int | None = None  #: the receiver's last HTTP status
    last_error: str | None = None  #: why the last try failed
    created_at: float
    delivered_at: float | None = None


class WebhookSecretPublic(_Public):
    """The secret your webhooks are signed with (HMAC-SHA256; see docs/webhooks.md)."""

    secret: str
    signature_header: str = "X-Pixelkiln-Signature"
    timestamp_header: str = "X-Pixelkiln-Timestamp"


class WebhookSummary(_Public):
    """The ``done`` event's summary of the batch end a delivery reports."""

    status: BatchStatus  #: completed, partial, failed or cancelled
    total: int
    succeeded: int
    failed: int
    cancelled: int
    images: int
    started_at: float | None = None
    finished_at: float | None = None


class WebhookBatch(_Public):
    id: int
    name: str
    status: BatchStatus  #: the status this end left the batch in
    counts: CountsPublic


class WebhookLinks(_Public):
    """Where to read more (absolute with ``[webhooks] public_url``, else paths)."""

    batch: str
    events: str
    images_zip: str
    webhooks: str


class WebhookPayload(_Public):
    """The JSON body POSTed to a batch's webhook when the batch ends.

    >>> payload = WebhookPayload.model_validate_json(request_body)   # doctest: +SKIP
    """

    type: str = "batch.finished"
    delivery_id: int  #: the same on every try of this delivery: deduplicate on it
    event_id: int  #: the batch's ``done`` event (a batch that ends again sends a new one)
    batch: WebhookBatch
    summary: WebhookSummary
    links: WebhookLinks


def __getattr__(name: str) -> Any:
    """The web UI's models (:mod:`pixelkiln.wire.web`) by their old address, imported on
    first use: that module builds on this one, so importing it here at load time would
    be circular whichever of the two is imported first."""
    from pixelkiln.wire import web

    if name in getattr(web, "__all__", ()):
        return getattr(web, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
