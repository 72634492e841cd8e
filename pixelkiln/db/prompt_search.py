"""Finding a text in prompts: the condition, and the candidates the trigram index gives.

A search is a substring of the prompt, case-insensitive, with ``%`` and ``_`` taken
literally: SQLite's ``LIKE`` (ASCII letters fold), PostgreSQL's ``ILIKE`` (the letters
its locale knows fold). Migration 0007 made an index for it:

- SQLite: ``tasks_search``, FTS5 with the trigram tokenizer, the prompts of the tasks
  that have had an image (rowid = task id; an image search needs no others). A phrase
  of the text's trigrams finds a superset of the LIKE matches (FTS5 folds case for
  every letter, LIKE only for ASCII ones), so ``LIKE`` is still checked on them: the
  results are the same as a scan's.
- PostgreSQL: ``pg_trgm``'s GIN index, which answers ``ILIKE`` itself. Without the
  extension (a managed database that refused it), ``ILIKE`` scans: slower, same rows.
- MySQL/MariaDB: no index; ``lower(prompt) LIKE lower(text)`` scans (its columns compare
  byte for byte, ``utf8mb4_bin``; ``lower`` folds every letter, as ILIKE does). Neither
  FULLTEXT parser finds any substring: InnoDB's default one matches whole words (CJK has
  no spaces), MySQL's ``ngram`` only its n-grams, and MariaDB has no ``ngram``.

A text shorter than three characters has no trigram: it is always found by a scan.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    column,
    func,
    literal_column,
    select,
    table,
)

from pixelkiln.db.database import MYSQL
from pixelkiln.db.tables import tasks

#: trigrams: a shorter text cannot use the index
INDEXED_LENGTH = 3
ESCAPE = "/"

_FTS = table("tasks_search", column("rowid"))


def like_pattern(text: str) -> str:
    """``%text%`` where ``%``, ``_`` and the escape character itself are literal."""
    for char in (ESCAPE, "%", "_"):
        text = text.replace(char, ESCAPE + char)
    return f"%{text}%"


def matches(prompt: Any, text: str, dialect: str, indexable: bool = True) -> ColumnElement[bool]:
    """``prompt`` contains ``text``, case-insensitively.

    ``indexable=False`` (PostgreSQL) writes it so that the trigram index cannot answer
    it: the planner's guess of how many prompts match is poor (it cannot know), and
    where the search walks the newest images one by one, a bitmap of every match in the
    table would cost far more than checking each image it meets."""
    pattern = like_pattern(text)
    if dialect in MYSQL:
        folded: ColumnElement[bool] = func.lower(prompt).like(func.lower(pattern), escape=ESCAPE)
        return folded
    if dialect == "postgresql":
        checked = prompt if indexable else prompt.concat("")
        result: ColumnElement[bool] = checked.ilike(pattern, escape=ESCAPE)
        return result
    return prompt.like(pattern, escape=ESCAPE)  # type: ignore[no-any-return]


def fts_phrase(text: str) -> str:
    """``text`` as an FTS5 phrase: every character literal (a quote doubled)."""
    return '"' + text.replace('"', '""') + '"'


def indexed_tasks(text: str, dialect: str) -> Select[Any]:
    """Ids of the tasks whose prompt holds ``text`` by the index (with candidates that a
    ``matches`` check drops, on SQLite). PostgreSQL: a materialized CTE, so that the
    index finds them first and the images are looked up by task."""
    if dialect == "sqlite":
        match = literal_column("tasks_search").op("MATCH")(fts_phrase(text))
        return select(_FTS.c.rowid).where(match)
    if dialect in MYSQL:  # no index: the matching tasks, scanned
        return select(tasks.c.id).where(matches(tasks.c.prompt, text, dialect))
    hits = select(tasks.c.id).where(matches(tasks.c.prompt, text, dialect)).cte("prompt_hits")
    return select(hits.prefix_with("MATERIALIZED").c.id)


def indexable(text: str | None, conn: Connection) -> bool:
    """Whether the index can find ``text``: three characters or more, and (SQLite) the
    FTS5 table exists (PostgreSQL's ILIKE works without its index, only slower); never on
    MySQL (it has none)."""
    if text is None or len(text) < INDEXED_LENGTH or conn.dialect.name in MYSQL:
        return False
    if conn.dialect.name != "sqlite":
        return True
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks_search'"
    )
    return found.first() is not None


def count_indexed(conn: Connection, text: str, most: int) -> int:
    """How many tasks SQLite's index gives for ``text``, counted up to ``most``: cheap,
    the index alone (PostgreSQL's needs the table to tell)."""
    found = indexed_tasks(text, "sqlite").limit(most).subquery()
    return int(conn.execute(select(func.count()).select_from(found)).scalar_one())
