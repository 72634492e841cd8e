"""The records search at scale: a page of images newest first, quick with a million.

Images are listed newest first, by id. Three ways to find a page, chosen per search:

- ``SCOPE``: the owner's batches (or the one batch) lead to their images; every match
  is looked at and sorted, and counted on the way. Right for scopes of a few thousand.
- ``NEWEST``: walk the images from the newest down and stop at the page's last match:
  cheap when matches are common, a scan of everything when they are rare.
- ``INDEX``: the prompt index (:mod:`.prompt_search`) gives every task whose prompt
  holds the text, then their images, counted and sorted: cheap when matches are rare,
  slow when they are common (tens of thousands).

A search by prompt, dates or backend (how many images match: unknown beforehand)
walks the newest images in slices while the matches met so far say the rest of the
page is nearer than what the other ways would cost; then the cheaper of the index and
the scope answers for the ids below the slices. Exact: the same images as a scan, in
the same order. SQLite has no table statistics, so it
is told which way (``x + 0`` keeps x's index from leading); PostgreSQL's planner is
left to its statistics, but for the prompt, whose matches it cannot guess.

A page comes with its count only when that is cheap: the batches' image counters know
it, or every match was looked at anyway. Otherwise ``None`` (the API's ``total: null``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from pixelkiln.db import prompt_search as prompt
from pixelkiln.db.records import (
    _IMAGE_COLUMNS,
    INDEX,
    NEWEST,
    SCOPE,
    ImageInfo,
    ImageQuery,
    _image_info,
    _joined,
    _owned,
    counters_know,
    filtered,
)
from pixelkiln.db.tables import batches, images

#: a search whose owner, batch and status leave at most this many images looks at them all
SMALL_SCOPE = 5_000
#: the first slice of a prompt search (ids): enough to tell a common text from a rare one
FIRST_SLICE = 2_000
#: what looking at a match costs, in images walked newest first (measured at a million
#: images): a scope's image is found by index and sorted; a task the prompt index gives
#: is looked up by id, then its images (PostgreSQL walks slower: ILIKE folds case
#: through the locale, so its ratio is lower)
SCOPE_COST = 3
INDEX_COST = {"sqlite": 20, "postgresql": 8}


@dataclass(frozen=True)
class Scope:
    """What the batches' counters and the image ids say before searching."""

    rows: int  #: current images of the owner, batch and status asked
    low: int  #: the lowest image id
    high: int  #: the highest image id that can be on the page

    @property
    def span(self) -> int:
        """Ids from the lowest to the highest."""
        return max(self.high - self.low + 1, 1)

    @property
    def density(self) -> float:
        """The scope's images per id (deleted images' ids and others' images dilute it)."""
        return min(1.0, max(self.rows, 1) / self.span)


def scope_of(conn: Connection, q: ImageQuery, owner_id: int | None) -> Scope:
    """One statement: the counters' sum, the lowest and the highest id (each its own
    subquery: SQLite reads min() or max() off the index, both at once by a scan)."""
    counted = _owned(select(func.coalesce(func.sum(batches.c.n_images), 0)), owner_id)
    if q.batch_id is not None:
        counted = counted.where(batches.c.id == q.batch_id)
    if q.status is not None:
        counted = counted.where(batches.c.status == str(q.status))
    low = select(func.min(images.c.id)).scalar_subquery()
    high = select(func.max(images.c.id)).scalar_subquery()
    rows, first, last = conn.execute(select(counted.scalar_subquery(), low, high)).one()
    if q.before_id is not None and last is not None:
        last = min(last, q.before_id - 1)
    return Scope(int(rows), first or 0, last or 0)


def find_images(
    conn: Connection,
    q: ImageQuery,
    *,
    owner_id: int | None,
    limit: int,
    offset: int = 0,
    count: bool = False,
) -> tuple[list[ImageInfo], int | None]:
    """A page of images matching ``q``, newest first; with ``count``, how many match in
    all when that is cheap to know, else None. The ways find ids; the page's images are
    read whole once, at the end."""
    scope, need, dialect = scope_of(conn, q, owner_id), offset + limit, conn.dialect.name
    total: int | None
    if counters_know(q):  # the count is known: find the page the cheaper way
        walk = q.batch_id is None and need / scope.density < scope.rows
        ids = _ids(conn, _select(q, owner_id, dialect, NEWEST if walk else SCOPE).limit(need))
        total = scope.rows
    elif scope.rows <= SMALL_SCOPE or q.batch_id is not None:
        ids, total = _every(conn, q, owner_id, SCOPE, need)
    else:  # a text, dates or backend: how many match, only a walk tells
        ids, total = _walk(conn, q, owner_id, need, scope)
    return _images(conn, ids[offset:need]), total if count else None


def _select(
    q: ImageQuery, owner_id: int | None, dialect: str, how: str, counted: bool = False
) -> Any:
    """The ids the search led ``how`` finds, newest first. ``counted``: each row says
    how many match, and the order is ``id + 0``, which no index gives: every match is
    looked at anyway, so neither planner may walk the images by id instead."""
    if not counted:
        query = filtered(_joined(images.c.id), q, owner_id, dialect, how)
        return query.order_by(images.c.id.desc())
    query = filtered(
        _joined(images.c.id, func.count().over().label("matches")), q, owner_id, dialect, how
    )
    return query.order_by((images.c.id + 0).desc())


def _ids(conn: Connection, query: Any) -> list[int]:
    return [int(row.id) for row in conn.execute(query)]


#: built once: an ``in_()`` of the values themselves is rebuilt (and re-keyed) every page
_BY_IDS = _joined(*_IMAGE_COLUMNS).where(images.c.id.in_(bindparam("ids", expanding=True)))


def _images(conn: Connection, ids: list[int]) -> list[ImageInfo]:
    """The images of ``ids`` with what made them, in the order of ``ids``."""
    if not ids:
        return []
    rows = conn.execute(_BY_IDS, {"ids": ids})
    found = {row.id: _image_info(row) for row in rows}
    return [found[i] for i in ids if i in found]


def _every(
    conn: Connection, q: ImageQuery, owner_id: int | None, how: str, n: int, below: int = 0
) -> tuple[list[int], int]:
    """The first ``n`` matches (with ``below``: of the ids up to it), every match looked
    at: how many there are comes with them."""
    query = _select(q, owner_id, conn.dialect.name, how, counted=True)
    if below:
        top = images.c.id + 0 if conn.dialect.name == "sqlite" else images.c.id
        query = query.where(top <= below)
    rows = list(conn.execute(query.limit(n)))
    return [int(r.id) for r in rows], int(rows[0].matches) if rows else 0


def _walk(
    conn: Connection, q: ImageQuery, owner_id: int | None, need: int, scope: Scope
) -> tuple[list[int], int | None]:
    """Slices of the newest images while the matches met so far say the rest of the
    page is nearer than the other ways cost; then the cheapest other way, for the ids
    below the slices. A slice's LIMIT stops it at the page's end: a slice too wide costs
    nothing."""
    query = _select(q, owner_id, conn.dialect.name, NEWEST)
    found: list[int] = []
    high, walked, step = scope.high, 0, FIRST_SLICE
    while True:
        low = high - step
        window = query.where(images.c.id > low, images.c.id <= high)
        found += _ids(conn, window.limit(need - len(found)))
        walked += step
        if len(found) >= need:
            return found, None
        if low < scope.low:
            return found, len(found)  # every image walked: every match is here
        high, left = low, need - len(found)
        rate = max(len(found), 0.5) / walked  # matches per id; none yet: half a guess
        how, cost = _other_way(conn, q, scope, rate, left / rate)
        if left / rate > cost:
            rest, matches = _every(conn, q, owner_id, how, left, below=high)
            return found + rest, len(found) + matches
        step = max(FIRST_SLICE, int(2 * left / rate))


def _other_way(
    conn: Connection, q: ImageQuery, scope: Scope, rate: float, walk: float
) -> tuple[str, float]:
    """The cheaper of the scope and the prompt index, and its cost in ids walked; ``walk``:
    the ids the walk still expects to need (beyond it, neither is worth knowing)."""
    dialect = conn.dialect.name
    best: tuple[str, float] = (SCOPE, scope.rows * SCOPE_COST)
    if prompt.indexable(q.text, conn):  # the prompt index: how many tasks it would give
        if dialect == "sqlite":  # counted up to what would make it dearer than the rest
            most = int(min(walk, best[1]) / INDEX_COST[dialect]) + 1
            tasks = float(prompt.count_indexed(conn, q.text or "", most))
        else:  # PostgreSQL's index needs the table to count: a guess from the walk
            tasks = rate / scope.density * scope.span
        best = min(best, (INDEX, tasks * INDEX_COST[dialect]), key=lambda way: way[1])
    return best
