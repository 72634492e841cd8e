"""The records the API browses: images with their prompts, batches by text, uploads.

Every query takes an ``owner_id``: None means "everyone's" (no auth, or an
admin), a number restricts to that user's batches, so someone else's record
is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, exists, func, insert, or_, select, update

from pixelkiln.db import prompt_search as prompt
from pixelkiln.db import returning, transitions
from pixelkiln.db.batches import LIVE, UNFINISHED, _batch
from pixelkiln.db.database import Tx, one_row
from pixelkiln.db.tables import assets, batches, events, idempotency_keys, images, tasks
from pixelkiln.exceptions import InvalidStateError
from pixelkiln.models import GENERATION_PARAMS, Batch, BatchStatus, ImageRecord, TaskStatus


@dataclass(frozen=True)
class ImageInfo:
    """An image with what made it: its task's prompt and parameters, its batch."""

    image: ImageRecord
    key: str  #: the task's key
    position: int  #: the task's position in its batch
    prompt: str
    negative_prompt: str
    backend: str  #: the task's backend now (a rerouted task's differs from the image's)
    params: dict[str, Any]  #: the task's parameters, as asked
    inputs: dict[str, Any]  #: init_image / reference_images as asset paths
    batch_name: str
    batch_status: BatchStatus
    owner_id: int | None

    @property
    def sent_negative_prompt(self) -> str:
        """The negative prompt as sent: "" where the backend takes none."""
        sent = self.image.params
        return self.negative_prompt if sent is None else str(sent.get("negative_prompt", ""))

    @property
    def sent_params(self) -> dict[str, Any]:
        """The task's parameters as the generator took them: those it ignores left out,
        ``model`` the one used. Images recorded before migration 0005: the task's own."""
        sent = self.image.params
        if sent is None:
            return self.params
        kept = {k: v for k, v in self.params.items() if k not in GENERATION_PARAMS}
        taken = {k: v for k, v in sent.items() if k != "negative_prompt"}
        return {**kept, **taken, "model": self.image.model}


@dataclass(frozen=True)
class ImageQuery:
    """Filters of the records search; every one optional."""

    text: str | None = None  #: part of the prompt
    batch_id: int | None = None
    status: BatchStatus | None = None  #: the batch's status
    since: float | None = None  #: created at or after (epoch seconds)
    until: float | None = None  #: created before
    before_id: int | None = None  #: cursor: images with a smaller id (newest first)
    history: bool = False  #: also the superseded images of regenerated tasks' earlier runs
    backend: str | None = None  #: the backend that made the image


@dataclass(frozen=True)
class Asset:
    """An uploaded input image."""

    id: int
    owner_id: int | None
    path: str  #: relative to the data folder
    sha256: str
    mime: str
    width: int
    height: int
    bytes: int
    created_at: float
    name: str | None = None  #: the file's own name, made safe (None: stored before 0006)


def _owned(query: Any, owner_id: int | None) -> Any:
    """``query`` over batches less those being deleted, and others' with ``owner_id``."""
    query = query.where(LIVE)
    return query if owner_id is None else query.where(batches.c.owner_id == owner_id)


def current(query: Any, history: bool = False) -> Any:
    """``query`` over images, less the history of regenerated tasks unless ``history``."""
    return query if history else query.where(images.c.superseded.is_(False))


# -- images -----------------------------------------------------------------------------------

_IMAGE_COLUMNS = (
    images,  # its backend and params are the image's: the task's are labelled
    tasks.c.key,
    tasks.c.position,
    tasks.c.prompt,
    tasks.c.negative_prompt,
    tasks.c.backend.label("task_backend"),
    tasks.c.params.label("task_params"),
    tasks.c.inputs,
    batches.c.name.label("batch_name"),
    batches.c.status.label("batch_status"),
    batches.c.owner_id,
)


def _joined(*columns: Any) -> Any:
    return (
        select(*columns)
        .select_from(images)
        .join(tasks, tasks.c.id == images.c.task_id)
        .join(batches, batches.c.id == images.c.batch_id)
        .where(LIVE)  # a batch being deleted (retention) is gone, its images with it
    )


def image_record(row: Row[Any]) -> ImageRecord:
    """An ``images`` row (or a row holding its columns) as a record."""
    m = row._mapping  # "index" would be the tuple method as an attribute
    return ImageRecord(
        m["id"],
        m["task_id"],
        m["batch_id"],
        m["index"],
        m["path"],
        m["width"],
        m["height"],
        m["bytes"],
        m["sha256"],
        m["seed"],
        m["created_at"],
        m["backend"],
        m["server"],
        m["model"],
        None if m["params"] is None else dict(m["params"]),
        m["run"],
        bool(m["superseded"]),
    )


def _image_info(row: Row[Any]) -> ImageInfo:
    record = image_record(row)
    return ImageInfo(
        record,
        row.key,
        row.position,
        row.prompt,
        row.negative_prompt,
        row.task_backend,
        dict(row.task_params),
        dict(row.inputs),
        row.batch_name,
        BatchStatus(row.batch_status),
        row.owner_id,
    )


#: how a search is led (see :mod:`pixelkiln.db.image_search`)
SCOPE, NEWEST, INDEX = "scope", "newest", "index"


def filtered(
    query: Any, q: ImageQuery, owner_id: int | None, dialect: str, how: str = SCOPE
) -> Any:
    """``query`` with every filter of ``q``. ``how`` says what leads the search (SQLite,
    without table statistics, is told; see :mod:`~pixelkiln.db.image_search`): the prompt
    index only when it is :data:`INDEX`."""
    hinted = dialect == "sqlite" and how in (NEWEST, INDEX)
    owner: Any = batches.c.owner_id
    batch: Any = images.c.batch_id
    if hinted:  # ``x + 0`` cannot use x's index: the images' own order drives instead
        owner, batch = owner + 0, batch + 0
    query = current(query if owner_id is None else query.where(owner == owner_id), q.history)
    if q.text and how == INDEX:
        query = query.where(images.c.task_id.in_(prompt.indexed_tasks(q.text, dialect)))
    if q.text and (how != INDEX or dialect == "sqlite"):  # SQLite's index: a superset
        query = query.where(prompt.matches(tasks.c.prompt, q.text, dialect, indexable=False))
    for column, value in ((batch, q.batch_id), (images.c.backend, q.backend)):
        if value is not None:
            query = query.where(column == value)
    if q.status is not None:
        query = query.where(batches.c.status == str(q.status))
    if q.since is not None:
        query = query.where(images.c.created_at >= q.since)
    if q.until is not None:
        query = query.where(images.c.created_at < q.until)
    if q.before_id is not None:
        query = query.where(images.c.id < q.before_id)
    return query


def search_images(
    conn: Connection, q: ImageQuery, *, owner_id: int | None, limit: int, offset: int = 0
) -> list[ImageInfo]:
    """Images matching ``q``, newest first (:func:`~pixelkiln.db.image_search.find_images`)."""
    from pixelkiln.db.image_search import find_images  # it builds on this module

    return find_images(conn, q, owner_id=owner_id, limit=limit, offset=offset)[0]


def count_images(conn: Connection, q: ImageQuery, *, owner_id: int | None) -> int:
    """How many images match, exactly, however long that takes (``find_images`` counts
    only when it is cheap); from the batches' image counters when they know."""
    if counters_know(q):
        counted = _owned(select(func.coalesce(func.sum(batches.c.n_images), 0)), owner_id)
        if q.batch_id is not None:
            counted = counted.where(batches.c.id == q.batch_id)
        if q.status is not None:
            counted = counted.where(batches.c.status == str(q.status))
        return int(conn.execute(counted).scalar_one())
    how = INDEX if prompt.indexable(q.text, conn) else SCOPE
    query = filtered(_joined(func.count()), q, owner_id, conn.dialect.name, how)
    return int(conn.execute(query).scalar_one())


def counters_know(q: ImageQuery) -> bool:
    """The batches' image counters (current images) answer a count with these filters."""
    scanned = (q.text, q.since, q.until, q.before_id, q.backend)
    return all(f is None for f in scanned) and not q.history


def get_image(conn: Connection, image_id: int, owner_id: int | None = None) -> ImageInfo:
    query = _owned(_joined(*_IMAGE_COLUMNS).where(images.c.id == image_id), owner_id)
    return _image_info(one_row(conn, query, f"no image {image_id}"))


def batch_images(conn: Connection, batch_id: int, history: bool = False) -> list[ImageInfo]:
    """A batch's current images (with ``history``, every run's) with what made them, by task
    position, run, then index."""
    query = current(_joined(*_IMAGE_COLUMNS).where(images.c.batch_id == batch_id), history)
    query = query.order_by(tasks.c.position, images.c.run, images.c.index)
    return [_image_info(row) for row in conn.execute(query)]


def image_sources(conn: Connection, batch_id: int) -> dict[tuple[str, str], int]:
    """How many current images of a batch each (backend, server) made."""
    query = current(
        select(images.c.backend, images.c.server, func.count()).where(images.c.batch_id == batch_id)
    ).group_by(images.c.backend, images.c.server)
    return {(row[0], row[1]): int(row[2]) for row in conn.execute(query)}


def images_of_tasks(
    conn: Connection, task_ids: Iterable[int], history: bool = False
) -> dict[int, list[ImageRecord]]:
    """Current images of the given tasks (with ``history``, every run's), grouped by task,
    in run then index order."""
    ids = list(task_ids)
    grouped: dict[int, list[ImageRecord]] = {i: [] for i in ids}
    if not ids:
        return grouped
    query = current(select(images).where(images.c.task_id.in_(ids)), history)
    rows = conn.execute(query.order_by(images.c.task_id, images.c.run, images.c.index))
    for r in rows:
        grouped[r.task_id].append(image_record(r))
    return grouped


def delete_image(tx: Tx, image_id: int, owner_id: int | None = None) -> ImageInfo:
    """Forget one image (the caller removes its file); the batch's image count follows."""
    info = get_image(tx.conn, image_id, owner_id)
    tx.conn.execute(delete(images).where(images.c.id == image_id))
    transitions.image_deleted(tx, info.image.batch_id, info.image.superseded)
    return info


# -- batches ----------------------------------------------------------------------------------


#: SQLite: a batch search by prompt asks the index when it gives at most this many tasks;
#: for more, asking each batch whether one of its prompts holds the text (it stops at
#: the first that does) is quicker
BATCH_INDEX_MOST = 20_000


def _batch_filter(
    query: Any,
    owner_id: int | None,
    statuses: Iterable[BatchStatus] | None,
    text: str | None,
    source: str | None = None,
    dialect: str = "sqlite",
    indexed: bool = False,
) -> Any:
    """``indexed``: the prompt index finds the batches' tasks (else each batch's prompts
    are scanned; on SQLite, the prompts of tasks that never made an image still are: the
    index holds a prompt from its task's first image on). A name matches as a prompt does."""
    query = _owned(query, owner_id)
    if source is not None:
        query = query.where(batches.c.source == source)
    if statuses is not None:
        query = query.where(batches.c.status.in_([str(s) for s in statuses]))
    if text:
        held = prompt.matches(tasks.c.prompt, text, dialect, indexable=False)
        scanned = [tasks.c.batch_id == batches.c.id, held]
        in_prompt: list[Any] = []
        if indexed:
            found = select(tasks.c.batch_id).where(
                tasks.c.id.in_(prompt.indexed_tasks(text, dialect))
            )
            if dialect == "sqlite":  # its index finds a superset
                found = found.where(prompt.matches(tasks.c.prompt, text, dialect))
            in_prompt.append(batches.c.id.in_(found))
            if dialect == "sqlite":  # it holds the prompts of tasks that have had an image
                scanned.append(tasks.c.status != str(TaskStatus.SUCCEEDED))
        if not indexed or dialect == "sqlite":
            in_prompt.append(exists().where(*scanned))
        query = query.where(or_(prompt.matches(batches.c.name, text, dialect), *in_prompt))
    return query


def search_batches(
    conn: Connection,
    *,
    owner_id: int | None,
    statuses: Iterable[BatchStatus] | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
    source: str | None = None,
) -> tuple[list[Batch], int]:
    """Batches whose name or any prompt contains ``text``, newest first; and how many match.

    ``source``: only batches that came that way (``img2img``: through that drop-in API).
    """
    dialect, indexed = conn.dialect.name, prompt.indexable(text, conn)
    if indexed and dialect == "sqlite":
        indexed = prompt.count_indexed(conn, text or "", BATCH_INDEX_MOST + 1) <= BATCH_INDEX_MOST
    how = (source, dialect, indexed)
    page = _batch_filter(select(batches), owner_id, statuses, text, *how)
    page = page.order_by(batches.c.id.desc()).limit(limit).offset(offset)
    total = _batch_filter(select(func.count()).select_from(batches), owner_id, statuses, text, *how)
    return [_batch(row) for row in conn.execute(page)], int(conn.execute(total).scalar_one())


def count_active(conn: Connection, owner_id: int | None = None, source: str | None = None) -> int:
    """Batches not finished yet (queued, running or paused); ``source``: only those that
    came that way."""
    query = select(func.count()).select_from(batches)
    query = query.where(batches.c.status.in_([str(s) for s in UNFINISHED]))
    if source is not None:
        query = query.where(batches.c.source == source)
    return int(conn.execute(_owned(query, owner_id)).scalar_one())


def delete_batch(tx: Tx, batch_id: int, owner_id: int | None = None) -> None:
    """Forget a finished batch, its tasks, images and events (the caller removes files)."""
    query = _owned(select(batches.c.status).where(batches.c.id == batch_id), owner_id)
    row = one_row(tx.conn, query, f"no batch {batch_id}")
    if not BatchStatus(row.status).finished:
        raise InvalidStateError(f"batch {batch_id} is {row.status}; cancel it before deleting")
    forget_batch(tx, batch_id)


def forget_batch(tx: Tx, batch_id: int) -> None:
    """Delete the batch row and what hangs on it, whatever its status (the checks are the
    caller's: :func:`delete_batch`, or retention's last step of a batch it marked)."""
    tx.conn.execute(delete(idempotency_keys).where(idempotency_keys.c.batch_id == batch_id))
    tx.conn.execute(delete(batches).where(batches.c.id == batch_id))  # cascades


# -- uploads ----------------------------------------------------------------------------------


def record_asset(tx: Tx, owner_id: int | None, record: dict[str, Any]) -> Asset:
    """Remember an uploaded image once per owner and content; returns its row."""
    same_owner = assets.c.owner_id.is_(None) if owner_id is None else assets.c.owner_id == owner_id
    row = tx.conn.execute(
        select(assets).where(assets.c.sha256 == record["sha256"], same_owner)
    ).first()
    if row is None:
        asset_id = returning.execute(
            tx.conn,
            insert(assets).returning(assets.c.id),
            {**record, "owner_id": owner_id, "created_at": tx.now},
        ).scalar_one()
        return get_asset(tx.conn, asset_id)
    if row.name is None and record.get("name"):  # the first name it came with is kept
        tx.conn.execute(update(assets).where(assets.c.id == row.id).values(name=record["name"]))
        return get_asset(tx.conn, row.id)
    return _asset(row)


def list_assets(
    conn: Connection, owner_id: int | None, *, limit: int = 50, offset: int = 0
) -> tuple[list[Asset], int]:
    """Uploads, newest first (one owner's, or with ``None`` everyone's); and how many."""
    mine = select(assets)
    if owner_id is not None:
        mine = mine.where(assets.c.owner_id == owner_id)
    page = mine.order_by(assets.c.id.desc()).limit(limit).offset(offset)
    total = select(func.count()).select_from(mine.subquery())
    return [_asset(row) for row in conn.execute(page)], int(conn.execute(total).scalar_one())


def get_asset(conn: Connection, asset_id: int, owner_id: int | None = None) -> Asset:
    query = select(assets).where(assets.c.id == asset_id)
    if owner_id is not None:
        query = query.where(assets.c.owner_id == owner_id)
    return _asset(one_row(conn, query, f"no uploaded image {asset_id}"))


def asset_ids_at(conn: Connection, paths: Iterable[str], owner_id: int | None) -> dict[str, int]:
    """The owner's uploads stored at these paths (path → asset id), for ``asset:ID`` cells."""
    owner = assets.c.owner_id.is_(None) if owner_id is None else assets.c.owner_id == owner_id
    wanted, found = list(paths), dict[str, int]()
    for start in range(0, len(wanted), 500):  # bound the statement's parameters
        chunk = wanted[start : start + 500]
        query = select(assets.c.path, func.min(assets.c.id)).where(assets.c.path.in_(chunk), owner)
        found.update(
            (path, asset_id) for path, asset_id in conn.execute(query.group_by(assets.c.path))
        )
    return found


def _asset(row: Row[Any]) -> Asset:
    return Asset(
        row.id,
        row.owner_id,
        row.path,
        row.sha256,
        row.mime,
        row.width,
        row.height,
        row.bytes,
        row.created_at,
        row.name,
    )


def latest_event_id(conn: Connection) -> int:
    """The newest event's id (0 when none): where a "from now on" stream starts."""
    return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


# -- idempotency ------------------------------------------------------------------------------


def find_idempotent(
    conn: Connection, owner_key: int, key: str, since: float
) -> tuple[int, str] | None:
    """(batch id, request hash) a key created at or after ``since``, or None."""
    row = conn.execute(
        select(idempotency_keys.c.batch_id, idempotency_keys.c.request_hash).where(
            idempotency_keys.c.owner_key == owner_key,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at >= since,
        )
    ).first()
    return (row.batch_id, row.request_hash) if row is not None else None


def remember_idempotent(
    tx: Tx, owner_key: int, key: str, request_hash: str, batch_id: int, since: float
) -> None:
    """Remember a key's batch, first forgetting every key older than ``since`` (expired)."""
    tx.conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < since))
    tx.conn.execute(
        insert(idempotency_keys),
        {
            "owner_key": owner_key,
            "key": key,
            "request_hash": request_hash,
            "batch_id": batch_id,
            "created_at": tx.now,
        },
    )
