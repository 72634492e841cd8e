"""SQLAlchemy table definitions: the single source of truth for the schema.

Times are epoch seconds (``Float``): cheap to compare in the claim query and
identical on SQLite, PostgreSQL and MySQL (where a ``Float`` is a ``DOUBLE``: see
:func:`_double_on_mysql`). Migrations in ``migrations/versions`` must produce exactly
these tables (a test compares them).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.ext.compiler import compiles


@compiles(Float, "mysql")
@compiles(Float, "mariadb")
def _double_on_mysql(type_: Float[Any], compiler: Any, **kw: Any) -> str:
    """A ``Float`` without a precision is a ``DOUBLE`` on MySQL, whose ``FLOAT`` has 4
    bytes (about 7 digits): an epoch time would lose its minutes. One rule for every
    table and migration (they all say ``Float``); SQLite's and PostgreSQL's DDL is as
    it was (their ``FLOAT`` already has 8 bytes)."""
    if type_.precision is None:
        return "DOUBLE"
    return str(compiler.visit_FLOAT(type_, **kw))


@compiles(Text, "mysql")
@compiles(Text, "mariadb")
def _longtext_on_mysql(type_: Text, compiler: Any, **kw: Any) -> str:
    """A ``Text`` without a length is a ``LONGTEXT`` on MySQL, whose ``TEXT`` stops at
    64 KiB: a long prompt or a generator's whole error page must fit, as elsewhere."""
    if type_.length is None:
        return "LONGTEXT"
    return str(compiler.visit_TEXT(type_, **kw))


#: tables whose ids are handles (URLs, a client's saved id, a folder name): never reused.
#: PostgreSQL's sequences never hand an id out twice; SQLite without AUTOINCREMENT gives
#: max(id) + 1, so deleting the newest batch handed its id (and its image folder) to the
#: next one. Each of these tables says ``sqlite_autoincrement=True`` (migrations 0004, 0005).
#: what migration 0007 made for searching prompts that ``metadata`` does not describe:
#: SQLite's FTS5 table ``tasks_search`` (and the tables FTS5 keeps for it) and its
#: triggers; PostgreSQL's GIN trigram index. Schema comparisons leave them out.
SEARCH_OBJECTS = ("tasks_search", "ix_tasks_prompt_trgm")
NEVER_REUSED = (
    "batches",
    "tasks",
    "images",
    "assets",
    "events",
    "users",
    "presets",
    "runs",
    "schedules",
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", Integer, nullable=True, index=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("source", String(16), nullable=False),
    Column("defaults", JSON, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("n_tasks", Integer, nullable=False, server_default="0"),
    Column("n_pending", Integer, nullable=False, server_default="0"),
    Column("n_running", Integer, nullable=False, server_default="0"),
    Column("n_succeeded", Integer, nullable=False, server_default="0"),
    Column("n_failed", Integer, nullable=False, server_default="0"),
    Column("n_cancelled", Integer, nullable=False, server_default="0"),
    Column("n_images", Integer, nullable=False, server_default="0"),
    Column("scheduled_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    # per-batch limits and hand-offs (migration 0006): at most ``max_workers`` of its tasks
    # generate at once; ``delay`` seconds between starting two of them (``last_start_at``
    # is when the latest one started); ``webhook`` is POSTed the summary when it ends;
    # ``extra`` is what a face keeps about the batch (a compat API's request fields)
    Column("max_workers", Integer, nullable=True),
    Column("delay", Float, nullable=True),
    Column("last_start_at", Float, nullable=True),
    Column("webhook", String(2000), nullable=True),
    Column("extra", JSON, nullable=True),
    # the refund policy the batch was last charged under ([credits] refund_failed): false
    # keeps the charge of a task that fails for good (cancellations are always refunded)
    Column("refund_failed", Boolean, nullable=False, server_default=true()),
    # the place its owner gave it in the queue (migration 0007): claims go by priority,
    # then coalesce(queue_rank, id), then id; None ranks by its id, i.e. by age
    Column("queue_rank", Float, nullable=True),
    # the run it belongs to (migration 0008): a nightly project run holds one batch per
    # project; NULL for a batch on its own
    Column("run_id", Integer, nullable=True, index=True),
    # when retention began deleting it (migration 0008): a batch too big for one step is
    # deleted over several transactions; once marked, it is gone to every reader, no move
    # re-queues it, and the next pass finishes it (db.retention)
    Column("deleting_at", Float, nullable=True),
    Index(None, "status", "priority"),
    sqlite_autoincrement=True,  # see NEVER_REUSED
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("key", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("backend", String(100), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("negative_prompt", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False, server_default="0"),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("duration", Float, nullable=True),
    Column("cost", Integer, nullable=False, server_default="0"),
    # priced 0 because its owner's own provider key goes with the request
    Column("own_key", Boolean, nullable=False, server_default=false()),
    # migration 0006: the item the task was made from (a storyboard item, a slide, a
    # spreadsheet row's cells; NULL for a plain task), and how many times it was
    # regenerated (its images of earlier runs are kept as history, ``images.run``)
    Column("item", JSON, nullable=True),
    Column("run", Integer, nullable=False, server_default="0"),
    # the next run that succeeds deletes the earlier runs' images (a regenerate with
    # ``replace``) instead of keeping them as history
    Column("replace_runs", Boolean, nullable=False, server_default=false()),
    # migration 0008: a sweep task's value on each axis, {"x": {"cfg_scale": 7}, ...};
    # NULL for a task of no sweep
    Column("axes", JSON, nullable=True),
    UniqueConstraint("batch_id", "position"),
    # claim: pending tasks of one batch in position order
    Index(None, "batch_id", "status", "position"),
    # lease recovery and renewal
    Index(None, "status", "lease_expires_at"),
    sqlite_autoincrement=True,
)

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("index", Integer, nullable=False),
    Column("path", String(500), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("seed", BigInteger, nullable=False),  # seeds reach 2**32 - 1
    Column("thumbnail", String(500), nullable=True),
    Column("created_at", Float, nullable=False),
    # who made it (migration 0005): the backend's name, the server's URL without
    # credentials ("" for a local generator), the model the generator used, and the
    # request parameters it took, as sent (NULL: recorded before 0005; the task's stand in)
    Column("backend", String(100), nullable=False, server_default=""),
    Column("server", String(500), nullable=False, server_default=""),
    Column("model", String(200), nullable=False, server_default=""),
    Column("params", JSON, nullable=True),
    # migration 0006: the task's run that made it (0 = first; each regenerate adds 1), and
    # whether a newer run replaced it (kept as history, hidden from records by default)
    Column("run", Integer, nullable=False, server_default="0"),
    Column("superseded", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("task_id", "run", "index"),
    Index(None, "batch_id"),
    sqlite_autoincrement=True,
)

assets = Table(
    "assets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", Integer, nullable=True),
    Column("path", String(500), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("mime", String(50), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("name", String(255), nullable=True),  #: the uploaded file's own name (0006)
    Index(None, "sha256"),
    sqlite_autoincrement=True,
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", Integer, nullable=True),
    Column("type", String(32), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "batch_id", "id"),
    # ids are SSE cursors (Last-Event-ID): never reuse one, even after the newest batch
    # (and its events) is deleted
    sqlite_autoincrement=True,
)

# -- users, credits and runtime settings (migration 0002) --------------------------------------

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    # the secret their webhooks are signed with (HMAC-SHA256), made on first use (0006)
    Column("webhook_secret", String(200), nullable=True),
    # their weight in fair share among runnable tasks of equal priority (0009)
    Column("share", Float, nullable=False, server_default=text("1")),
    sqlite_autoincrement=True,
)

# only the sha256 of a token is stored: a leaked database grants no access
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "user_id"),
)

# append-only: a balance is the sum of a user's rows. batch_id has no foreign key on
# purpose, so deleting a batch never rewrites the money history.
credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("delta", BigInteger, nullable=False),  # 64-bit: balances reach 10**15 (0009)
    Column("reason", String(16), nullable=False),
    Column("batch_id", Integer, nullable=True),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "user_id", "id"),
)

# a user's own key for a backend, encrypted; with one, that backend costs them nothing
provider_keys = Table(
    "provider_keys",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("backend", String(100), primary_key=True),
    Column("ciphertext", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

presets = Table(
    "presets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(200), nullable=False),
    Column("content", Text, nullable=False),
    Column("negative_prompt", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("category", String(100), nullable=False),
    Column("position", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index(None, "category", "position"),
    sqlite_autoincrement=True,
)

# runtime values an admin changes without a restart (global concurrency)
runtime_settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# owner_key is the user id, 0 without auth (NULL would never collide in a primary key)
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("owner_key", Integer, primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("batch_id", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Index(None, "batch_id"),
    Index(None, "created_at"),  # expiry
)

# -- webhooks (migration 0006) -----------------------------------------------------------------

# one row per batch end that a webhook is owed: a batch that ends, is retried and ends
# again owes two; ``event_id`` is the ``done`` event of that end (unique: never owed twice)
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", Integer, nullable=False, unique=True),
    Column("url", String(2000), nullable=False),
    Column("status", String(16), nullable=False),  #: pending, delivered, failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False, server_default="0"),
    Column("response_code", Integer, nullable=True),  #: the receiver's last HTTP status
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Index(None, "batch_id"),
    Index(None, "status", "next_attempt_at"),
)

# -- runs, schedules, speeds (migration 0008) --------------------------------------------------

# several batches started together and reported as one (a nightly project run); the process
# that drives it (starts the next project's batch, writes the report) holds a lease on it
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", Integer, nullable=True, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  #: projects
    Column("source", String(16), nullable=False),  #: cli, schedule, api
    Column("status", String(16), nullable=False),  #: running completed partial failed cancelled
    Column("config", JSON, nullable=False),  #: what it runs, resolved (paths absolute)
    Column("report", JSON, nullable=True),  #: the run report, once it ended
    Column("schedule_id", Integer, nullable=True),  #: the schedule that started it
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index(None, "status", "lease_expires_at"),
    sqlite_autoincrement=True,  # see NEVER_REUSED
)

# a cron expression and what it starts; a process runs a due slot by moving ``next_run_at``
# from the value it read to the next slot after now (compare-and-set): one winner per slot,
# and slots missed while no process ran collapse into one run
schedules = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", Integer, nullable=True),
    Column("cron", String(100), nullable=False),
    Column("kind", String(16), nullable=False),  #: projects, batch
    Column("target", String(1000), nullable=False),  #: the config or batch file, absolute
    Column("options", JSON, nullable=False),  #: overrides given when it was added
    Column("timezone", String(64), nullable=False, server_default=""),  #: "" = local time
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("next_run_at", Float, nullable=True),
    Column("last_run_at", Float, nullable=True),
    Column("last_run_id", Integer, nullable=True),  #: the run (or batch) it last started
    Column("last_error", Text, nullable=True),  #: why its last start failed, if it did
    Column("created_at", Float, nullable=False),
    # a slot claimed and not yet started: cleared with the start (or its failure) recorded;
    # one left longer than a lease (its process died) is taken over and started once
    Column("claimed_slot", Float, nullable=True),
    Column("claimed_by", String(200), nullable=True),  #: the process that claimed it
    Column("claimed_at", Float, nullable=True),
    Index(None, "enabled", "next_run_at"),
    sqlite_autoincrement=True,  # see NEVER_REUSED
)

# measured seconds per image of a backend at a size and step count (a running mean over
# finished tasks): what a plan estimates a batch's time from
speeds = Table(
    "speeds",
    metadata,
    Column("backend", String(100), primary_key=True),
    Column("width", Integer, primary_key=True),
    Column("height", Integer, primary_key=True),
    Column("steps", Integer, primary_key=True),
    Column("samples", Integer, nullable=False),
    Column("seconds_per_image", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# -- limits and health shared by every process on the database (migration 0009) ----------------

# one row per slot of a generator server ("<backend>|<url>"); held by a process while one of
# its requests runs there, under a lease renewed like a task's (engine.shared_limits)
server_slots = Table(
    "server_slots",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("holder", String(200), nullable=True, index=True),
    Column("task_id", Integer, nullable=True),
    Column("expires_at", Float, nullable=True),
)

# a GCRA bucket per backend with an rpm: the theoretical arrival time of the next request
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("tat", Float, nullable=False),
)

# a server's circuit as one process found it, so that the others skip it too
server_health = Table(
    "server_health",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("down_since", Float, nullable=True),
    Column("retry_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(200), nullable=True),
)
